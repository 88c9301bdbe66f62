"""CIFAR-10/100 from the official *python* pickles, read safely and validated.

Any files in that format are accepted (no checksum on reading), so tests and users can supply
their own small batches; the md5 is checked only on the downloaded archive. Pickles come from
the internet, so they are read with an unpickler that can build numpy arrays and nothing else.
"""
import codecs
import functools
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from utils.errors import DataError, UserError

from .images import ImageSplits


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str  # what the archive extracts to, under root
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# mean/std are the reference code's constants (pixel units / 255), not recomputed.
SPECS = {
    "cifar10": _Spec(
        "CIFAR-10", "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "label_names", "labels", 10,
        tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7))),
    "cifar100": _Spec(
        "CIFAR-100", "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",), ("test",),
        "meta", "fine_label_names", "fine_labels", 100,
        tuple(x / 255 for x in (129.3, 124.1, 112.4)), tuple(x / 255 for x in (68.2, 65.4, 70.4))),
}


def load_cifar(root: str, name: str = "cifar10", download: bool = True) -> ImageSplits:
    """Load ``root/cifar-10-batches-py`` (or ``root/cifar-100-python``); download it if missing."""
    if name not in SPECS:
        raise UserError(f"unknown CIFAR dataset {name!r}; use one of: {', '.join(SPECS)}")
    spec = SPECS[name]
    folder = _find_folder(root, spec)
    if folder is None:
        _reject_other_layouts(root, spec)
        if not download:
            raise DataError(f"{spec.title} folder {os.path.join(root, spec.folder)} not found; "
                            f"pass the folder that contains {spec.folder}/ or allow the download")
        folder = _download(root, spec)

    paths = [os.path.join(folder, f) for f in spec.train_files + spec.test_files]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{spec.title} folder {folder} lacks {', '.join(missing)}; "
                        f"re-download it or delete the folder to download again")

    classes = _read_classes(folder, spec)
    train = [_read_batch(p, spec) for p in paths[:len(spec.train_files)]]
    test = [_read_batch(p, spec) for p in paths[len(spec.train_files):]]
    splits = {}
    for split, batches in (("train", train), ("test", test)):
        x = np.concatenate([b[0] for b in batches])
        if len(x) == 0:
            raise DataError(f"{spec.title} {split} split in {folder} holds no images; "
                            f"re-download it or delete the folder to download again")
        splits[split] = (torch.from_numpy(x.reshape(-1, 3, 32, 32)),
                         torch.from_numpy(np.concatenate([b[1] for b in batches])))
    return ImageSplits(*splits["train"], *splits["test"], classes, spec.mean, spec.std)


def _find_folder(root: str, spec: _Spec) -> str | None:
    """``root/<folder>``, or ``root`` itself when the user pointed straight at the batches."""
    folder = os.path.join(root, spec.folder)
    # An existing but incomplete folder is reported by the caller, never downloaded over.
    if os.path.isdir(folder):
        return folder
    if all(os.path.isfile(os.path.join(root, f)) for f in spec.train_files + spec.test_files):
        return root
    return None


def _reject_other_layouts(root: str, spec: _Spec) -> None:
    """Name the dataset that *is* there, instead of downloading CIFAR into someone else's folder."""
    try:
        names = set(os.listdir(root))
    except OSError:
        return
    imagenet32 = {"val_data", "val_data.npz"}  # plus train_data_batch_1..10(.npz)
    if any(n.startswith("train_data_batch_") for n in names) or names & imagenet32:
        raise DataError(f"{root} looks like an ImageNet32 folder, not {spec.title}; "
                        f"use notebook_imagenet.py")
    if names & {"_background_noise_", "validation_list.txt", "testing_list.txt"}:
        raise DataError(f"{root} looks like a Google Speech Commands folder, not {spec.title}; "
                        f"use notebook_gsc.py")
    for other_name, other in SPECS.items():
        if other is not spec and other.folder in names:
            raise DataError(f"{root} holds {other.folder}/ ({other.title}), not {spec.folder}/; "
                            f"use dataset {other_name!r} or another root")


def _download(root: str, spec: _Spec) -> str:
    """Download and extract via a hidden temp dir, then rename: an interrupted or failed run
    never leaves a partial ``root/<folder>`` that would later pass for a dataset."""
    import torchvision.datasets.utils as tv_utils  # lazily: slow import, needed only here

    folder = os.path.join(root, spec.folder)
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=root)
        # The archive itself stays in root: md5-checked, so a hand-placed copy is used as is.
        tv_utils.download_and_extract_archive(spec.url, root, extract_root=tmp, md5=spec.md5)
        os.replace(os.path.join(tmp, spec.folder), folder)
    except Exception as e:  # noqa: BLE001 - network, disk and archive errors all mean the same here
        raise DataError(f"could not download {spec.title} from {spec.url} ({_one_line(e)}); "
                        f"download it yourself and extract it into {root} "
                        f"(giving {folder}/)") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_classes(folder: str, spec: _Spec) -> list[str]:
    path = os.path.join(folder, spec.meta_file)
    if not os.path.isfile(path):  # the meta file is optional: fall back to numbers
        return [str(i) for i in range(spec.num_classes)]
    meta = _unpickle(path)
    names = meta.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        count = len(names) if isinstance(names, list) else "no"
        raise DataError(f"{path} lists {count} '{spec.names_key}' but {spec.title} has "
                        f"{spec.num_classes} classes; re-download it or delete the file")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_batch(path: str, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (uint8 N×3072, int64 N), validated."""
    fix = "re-download it or delete the folder to download again"
    batch = _unpickle(path)
    for key in ("data", spec.labels_key):
        if key not in batch:
            raise DataError(f"CIFAR batch {path} has no '{key}' entry; {fix}")
    data, labels = batch["data"], batch[spec.labels_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR batch {path} data is {desc}, expected uint8 N×3072 "
                        f"(32×32 RGB images); {fix}")
    try:
        labels = np.asarray(labels)
    except ValueError:  # ragged nested lists
        labels = np.asarray(None)
    integers = labels.dtype.kind in "iu" or labels.size == 0  # [] comes back as float64
    if labels.ndim != 1 or len(labels) != len(data) or not integers:
        raise DataError(f"CIFAR batch {path} has {labels.shape} labels of type {labels.dtype} for "
                        f"{len(data)} images, expected one integer per image; {fix}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"CIFAR batch {path} has labels in [{labels.min()}, {labels.max()}], "
                        f"outside [0, {spec.num_classes}) for {spec.title}; {fix}")
    return data, labels


def _unpickle(path: str) -> dict:
    """Read a CIFAR pickle (Python 2 or 3) into a dict with str keys."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the originals are Python 2 pickles whose str keys arrive as bytes.
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"CIFAR file {path} wants to load {e}, which a plain CIFAR batch never "
                        f"needs (corrupt or malicious); re-download it from the official "
                        f"site") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse means a truncated/corrupt file
        raise DataError(f"CIFAR file {path} is truncated or corrupt ({_one_line(e)}); "
                        f"re-download it or delete the folder to download again") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} holds a {type(obj).__name__}, not a dict of arrays; "
                        f"re-download it or delete the folder to download again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _Refused(Exception):
    """A pickle asked for a global outside the allow-list."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy needs to rebuild arrays, dtypes and scalars; any other
    global (os.system, builtins.open, ...) is how a pickle runs code, so it is refused."""

    def find_class(self, module, name):
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise _Refused(f"{module}.{name}")
        return allowed[(module, name)]


@functools.cache
def _allowed_globals() -> dict:
    from numpy._core import multiarray, numeric  # numpy>=2; old pickles name numpy.core

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # protocol<=2 stores bytes via encode()
    for builtins in ("builtins", "__builtin__"):  # empty buffers come as bytes(), bytearray()
        allowed[(builtins, "bytes")], allowed[(builtins, "bytearray")] = bytes, bytearray
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
