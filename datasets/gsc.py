"""Google Speech Commands (docs/datasets.md) read from the archive as extracted, never modified.

The archive extracts into word folders of 1-s 16 kHz wav clips, ``_background_noise_/``,
``validation_list.txt`` and ``testing_list.txt``. The reference moved the files into
train/valid/test folders with a separate script; here the lists decide: a clip named in
``validation_list.txt`` is validation, in ``testing_list.txt`` test, any other clip of a word
folder is training. The 12 classes are ``unknown, silence`` and ten keywords; every other word
is ``unknown``. Train and validation get ⌊0.1·n⌋ all-zero "silence" clips appended, test none.
"""
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from utils.errors import DataError

from .wav_cache import RATE, ClipStore, open_cache

CLASSES = ["unknown", "silence", "yes", "no", "up", "down", "left", "right", "on", "off",
           "stop", "go"]
CLIP = RATE              # 1 s: the length every clip is fixed to
MAX_SPEED_READ = 20000   # the speed change reads positions < 16000 / 0.8: longer clips are cut
NOISE_FOLDER = "_background_noise_"
LISTS = ("validation_list.txt", "testing_list.txt")
SILENCE_SHARE = 0.1
V2_ONLY = ("backward", "follow", "forward", "learn", "visual")  # the 5 words v0.02 added


@dataclass(frozen=True)
class _Version:
    title: str
    url: str
    md5: str


VERSIONS = {
    "gsc": _Version("Speech Commands v0.01",
                    "https://storage.googleapis.com/download.tensorflow.org/data/"
                    "speech_commands_v0.01.tar.gz", "3cd23799cb2bbdec517f1cc028f8d43c"),
    "gsc_v2": _Version("Speech Commands v0.02",
                       "https://storage.googleapis.com/download.tensorflow.org/data/"
                       "speech_commands_v0.02.tar.gz", "6b74f3901214cb2c2934e98196829835"),
}


class GscClips(torch.utils.data.Dataset):
    """Item i: ``({"wave": int16 [width] zero-padded, "length": true length}, label)``; the
    features are computed on the device from whole batches (datasets/gsc_transform.py), which
    needs the true length for the speed change. ``clip`` −1 = a silence clip."""

    def __init__(self, store: ClipStore, clips: np.ndarray, labels: np.ndarray, width: int):
        self.store, self.clips, self.width = store, clips, width
        self.labels = labels.astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        wave = torch.zeros(self.width, dtype=torch.int16)
        c = int(self.clips[i])
        if c < 0:
            n = CLIP
        else:
            samples = self.store[c][:self.width]
            wave[:len(samples)] = torch.from_numpy(np.array(samples))
            n = self.store.length(c)
        return {"wave": wave, "length": n}, int(self.labels[i])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(CLASSES))


@dataclass
class GscData:
    train: GscClips
    valid: GscClips
    test: GscClips
    noise: torch.Tensor  # int16 rows × 16000: the background noise cut into 1-s rows
    version: str


def load_gsc(root: str, dataset: str, cache_root: str, download: bool = True,
             log=print) -> GscData:
    """The three splits of the archive under ``root`` (downloaded there if the folder holds
    none), their clips decoded into the cache under ``cache_root``."""
    version = VERSIONS[dataset]
    words = _word_folders(root)
    if not any(os.path.isfile(os.path.join(root, f)) for f in LISTS):
        _reject_other_datasets(root, version)
        if not words:  # no archive here: fetch it
            if not download:
                raise DataError(f"{root} holds no {version.title}; extract the archive into it")
            _download(root, version, log)
            words = _word_folders(root)
    _check_version(root, words, dataset)
    lists = [_read_list(root, name, words) for name in LISTS]
    if not words:
        raise DataError(f"{root} has {LISTS[0]} but no word folders; extract the whole "
                        f"{version.title} archive into it")

    labels_of = {w: CLASSES.index(w) if w in CLASSES else 0 for w in words}
    missing = [c for c in CLASSES[2:] if c not in words]
    if missing:
        log(f"warning: {root} has no folder for the keywords {missing}; those classes get no "
            "clips")
    valid_set, test_set = set(lists[0]), set(lists[1])
    train = [f for w in words for f in _wavs(root, w) if f not in valid_set and f not in test_set]
    noise_files = _noise_files(root, version)
    relpaths = train + lists[0] + lists[1] + noise_files
    store = open_cache(root, relpaths, cache_root, log)
    first_noise = len(train) + len(lists[0]) + len(lists[1])
    longest = np.diff(store.offsets)[:first_noise].max(initial=0)
    width = int(min(max(CLIP, longest), MAX_SPEED_READ))

    def split(files, first, silence):
        clips = np.arange(first, first + len(files))
        labels = np.array([labels_of[f.split("/", 1)[0]] for f in files], np.int64)
        n_silence = int(SILENCE_SHARE * len(files)) if silence else 0
        clips = np.concatenate([clips, np.full(n_silence, -1)])
        labels = np.concatenate([labels, np.full(n_silence, CLASSES.index("silence"))])
        return GscClips(store, clips, labels, width)

    noise = np.concatenate([store[i] for i in range(first_noise, len(relpaths))])
    rows = len(noise) // CLIP
    if rows == 0:
        raise DataError(f"{os.path.join(root, NOISE_FOLDER)} holds less than 1 s of noise; "
                        f"re-extract the {version.title} archive")
    return GscData(split(train, 0, True), split(lists[0], len(train), True),
                   split(lists[1], len(train) + len(lists[0]), False),
                   torch.from_numpy(noise[:rows * CLIP].reshape(rows, CLIP).copy()),
                   version.title)


def _word_folders(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(("_", ".")) and
                  os.path.isdir(os.path.join(root, n)))


def _wavs(root: str, word: str) -> list[str]:
    return sorted(f"{word}/{n}" for n in os.listdir(os.path.join(root, word))
                  if n.lower().endswith(".wav"))


def _noise_files(root: str, version: _Version) -> list[str]:
    folder = os.path.join(root, NOISE_FOLDER)
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".wav")) \
        if os.path.isdir(folder) else []
    if not names:
        raise DataError(f"{folder} is missing or holds no wav files; the noise augmentation "
                        f"needs it — re-extract the {version.title} archive")
    return [f"{NOISE_FOLDER}/{n}" for n in names]


def _read_list(root: str, name: str, words: list[str]) -> list[str]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        present = [f for f in LISTS if os.path.isfile(os.path.join(root, f))]
        raise DataError(f"{root} has no {name}" + (f" (only {present[0]})" if present else "")
                        + "; the lists decide the validation and test splits — extract the "
                        "whole archive into --data_path")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); "
                        "re-extract the archive") from None
    entries, words = [], set(words)
    for number, line in enumerate(lines, 1):
        rel = line.strip().replace("\\", "/")
        if not rel:
            continue
        word = rel.split("/", 1)[0]
        if word not in words or not os.path.isfile(os.path.join(root, rel)):
            raise DataError(f"{name} line {number} names {rel}, which is not a clip under "
                            f"{root}; re-extract the archive, or delete that line")
        entries.append(rel)
    return sorted(set(entries))


def _check_version(root: str, words: list[str], dataset: str) -> None:
    v2 = [w for w in V2_ONLY if w in words]
    if v2 and dataset == "gsc":
        raise DataError(f"{root} holds Speech Commands v0.02 (it has {v2[0]}/); pass "
                        "--dataset gsc_v2, or give the v0.01 folder")
    if words and not v2 and dataset == "gsc_v2":
        raise DataError(f"{root} holds Speech Commands v0.01 (no {V2_ONLY[0]}/ folder); pass "
                        "--dataset gsc, or give the v0.02 folder")


def _reject_other_datasets(root: str, version: _Version) -> None:
    """Name the dataset that *is* there rather than download Speech Commands over it."""
    try:
        names = set(os.listdir(root))
    except OSError:
        return
    if names & {"cifar-10-batches-py", "cifar-100-python", "data_batch_1", "test_batch"}:
        raise DataError(f"{root} looks like a CIFAR folder, not {version.title}; use "
                        "notebook_cifar.py")
    if any(n.startswith("train_data_batch_") for n in names) or \
            names & {"val_data", "val_data.npz"}:
        raise DataError(f"{root} looks like an ImageNet32 folder, not {version.title}; use "
                        "notebook_imagenet.py")


def _download(root: str, version: _Version, log) -> None:
    """Download (or take the ``.tar.gz`` already placed in ``root``, md5-checked) and extract
    via a hidden folder; the lists move in last, so an interrupted move is reported as a
    folder without lists rather than mistaken for a whole archive."""
    import torchvision.datasets.utils as tv_utils  # lazily: slow import, needed only here

    archive = os.path.basename(version.url)
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=root)
        log(f"downloading {version.title} into {root}")
        tv_utils.download_and_extract_archive(version.url, root, extract_root=tmp,
                                              md5=version.md5)
        names = sorted(os.listdir(tmp), key=lambda n: n in LISTS)
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(root, name))
    except Exception as e:  # noqa: BLE001 - network, disk and archive errors all mean the same
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"could not download {version.title} from {version.url} "
                        f"({reason[:200]}); download {archive} yourself and extract it into "
                        f"{root} (word folders, {NOISE_FOLDER}/ and the two lists go straight "
                        "into it), or put the .tar.gz there") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
