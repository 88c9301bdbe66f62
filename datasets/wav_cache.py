"""Wav clips decoded once into an int16, memory-mapped cache that later runs reuse.

Decoding ~65 000 small wav files on every epoch (the reference decoded each clip each time it
was drawn) costs more than the features themselves; here ``soundfile`` decodes every clip once
into one flat int16 file, ``clips.int16``, plus ``offsets.npy`` (clip i is
``clips[offsets[i]:offsets[i+1]]``) and ``manifest.json``. The cache lives in its own folder,
never in the user's data folder, and is keyed by every file's path, size and modification
time: when the data change, the next run rebuilds it.

Clips are stored at 16 kHz mono: stereo is averaged, other sample rates are resampled (band-
limited, by the FFT) with a one-line warning. 16-bit PCM clips round-trip exactly.
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from utils.errors import DataError

RATE = 16000
FORMAT = "wav-cache/1"


class ClipStore:
    """The cached clips: ``store[i]`` is clip i as an int16 array (a view into the memory map).

    The map is opened lazily in each process, so DataLoader workers share the file through the
    page cache instead of each receiving a pickled copy of the data."""

    def __init__(self, folder: str, offsets: np.ndarray, resampled: int = 0, stereo: int = 0):
        self.folder, self.offsets = folder, offsets
        self.resampled, self.stereo = resampled, stereo
        self._map = None

    def __len__(self):
        return len(self.offsets) - 1

    def _clips(self) -> np.ndarray:
        if self._map is None:
            total = int(self.offsets[-1])
            path = os.path.join(self.folder, "clips.int16")
            # np.memmap refuses empty files; an empty store has nothing to read anyway
            self._map = (np.memmap(path, dtype=np.int16, mode="r", shape=(total,)) if total
                         else np.zeros(0, np.int16))
        return self._map

    def __getitem__(self, i: int) -> np.ndarray:
        return self._clips()[int(self.offsets[i]):int(self.offsets[i + 1])]

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def __getstate__(self):
        return {**self.__dict__, "_map": None}


def open_cache(root: str, relpaths: list[str], cache_root: str, log=print) -> ClipStore:
    """The clips ``root/relpath`` in the given order, decoded into (or read from) the cache
    folder for ``root`` under ``cache_root``."""
    key = _fingerprint(root, relpaths)
    name = "clips-" + hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    folder = os.path.join(cache_root, name)
    if os.path.exists(cache_root) and not os.path.isdir(cache_root):
        raise DataError(f"the audio cache folder {cache_root} is a file; pass --cache_dir with "
                        "a folder")
    try:
        os.makedirs(cache_root, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the audio cache folder {cache_root} ({e.strerror}); "
                        "pass --cache_dir with a writable folder") from None
    # one process decodes while the others (DDP ranks, a second run) wait and then reuse it
    with _locked(os.path.join(cache_root, f".{name}.lock"), cache_root):
        manifest = _read_manifest(folder)
        if manifest is None or manifest.get("key") != key:
            _build(root, relpaths, folder, key, cache_root, log)
            manifest = _read_manifest(folder)
        store = _load(folder, manifest, len(relpaths))
    if store.resampled or store.stereo:
        log(f"warning: under {root}, {store.resampled} clips are not at 16 kHz and were "
            f"resampled to it, {store.stereo} stereo clips were averaged to mono")
    return store


def _fingerprint(root: str, relpaths: list[str]) -> str:
    h = hashlib.sha256(f"{FORMAT} {RATE}\n".encode())
    for rel in relpaths:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError as e:
            raise DataError(f"cannot read {os.path.join(root, rel)} ({e.strerror}); re-extract "
                            "the archive into --data_path") from None
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: str, cache_root: str):
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): runs must not share a cache at once
        yield
        return
    try:
        f = open(path, "a")
    except OSError as e:
        raise DataError(f"cannot write to the audio cache folder {cache_root} ({e.strerror}); "
                        "pass --cache_dir with a writable folder") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _damaged(folder: str, why: str) -> DataError:
    return DataError(f"the audio cache {folder} is unreadable or damaged ({why}); delete that "
                     "folder and run again to rebuild it")


def _read_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, "manifest.json")
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise _damaged(folder, f"manifest.json: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _damaged(folder, "manifest.json is not a manifest of this cache format")
    return manifest


def _load(folder: str, manifest: dict, n: int) -> ClipStore:
    try:
        offsets = np.load(os.path.join(folder, "offsets.npy"), allow_pickle=False)
        size = os.path.getsize(os.path.join(folder, "clips.int16"))
    except (OSError, ValueError) as e:
        raise _damaged(folder, getattr(e, "strerror", None) or str(e).splitlines()[0]) from None
    if offsets.dtype != np.int64 or offsets.shape != (n + 1,) or offsets[0] != 0 \
            or np.any(np.diff(offsets) < 0):
        raise _damaged(folder, f"offsets.npy holds {offsets.dtype} {offsets.shape}, expected "
                               f"{n + 1} ascending int64 offsets")
    if size != 2 * int(offsets[-1]) or manifest.get("samples") != int(offsets[-1]):
        raise _damaged(folder, f"clips.int16 has {size} bytes, expected {2 * int(offsets[-1])}")
    counts = [manifest.get(k, 0) for k in ("resampled", "stereo")]
    if not all(type(c) is int and 0 <= c <= n for c in counts):
        raise _damaged(folder, "manifest.json's clip counts are not counts of its clips")
    return ClipStore(folder, offsets, *counts)


def _build(root: str, relpaths: list[str], folder: str, key: str, cache_root: str, log) -> None:
    """Decode into a temporary folder, then swap it in: a crash leaves no half-built cache."""
    from tqdm import tqdm

    log(f"decoding {len(relpaths)} wav files under {root} into the audio cache {folder} "
        "(once; later runs reuse it)")
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=cache_root)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would keep other users' runs out
        offsets = np.zeros(len(relpaths) + 1, np.int64)
        counts = {"resampled": 0, "stereo": 0}
        paths = [os.path.join(root, rel) for rel in relpaths]
        bar = tqdm(total=len(paths), disable=None, leave=False, desc="decoding")
        with open(os.path.join(tmp, "clips.int16"), "wb") as out, \
                ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # libsndfile frees the GIL
            for start in range(0, len(paths), 256):  # in chunks: a bad file stops the build soon
                for i, (clip, rate, channels) in enumerate(
                        pool.map(decode, paths[start:start + 256]), start):
                    out.write(clip.tobytes())
                    offsets[i + 1] = offsets[i] + len(clip)
                    counts["resampled"] += rate != RATE
                    counts["stereo"] += channels > 1
                    bar.update()
        bar.close()
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "key": key, "root": os.path.abspath(root),
                       "clips": len(relpaths), "samples": int(offsets[-1]),
                       "rate": RATE, **counts}, f)
        if os.path.lexists(folder):  # a stale cache of earlier data: replaced as a whole
            stale = folder + ".stale"
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, folder)
    except OSError as e:
        raise DataError(f"cannot write the audio cache under {cache_root} ({e.strerror}); free "
                        "space or pass --cache_dir with a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def decode(path: str) -> tuple[np.ndarray, int, int]:
    """One wav file → (int16 16 kHz mono samples, its sample rate, its channel count)."""
    import soundfile  # lazily: only a cache build needs it

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors all mean "not a readable wav"
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path} is not a readable wav file ({reason[:200]}); re-extract the "
                        "archive, or delete that file and its line in the lists") from None
    if len(data) == 0:
        raise DataError(f"{path} holds no samples; re-extract the archive, or delete that file "
                        "and its line in the lists")
    if not np.isfinite(data).all():  # a float wav may hold them; int16 would turn them into noise
        raise DataError(f"{path} holds NaN or infinite samples; re-extract the archive, or "
                        "delete that file and its line in the lists")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != RATE:
        mono = resample(mono, rate, RATE)
    clip = np.clip(np.round(mono.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    return clip, rate, data.shape[1]


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by the FFT (keep or zero-pad the spectrum up to the new Nyquist
    frequency): exact for periodic signals, and ample for 1-s clips from the odd recorder."""
    n_out = max(1, int(round(len(x) * rate_out / rate_in)))
    spectrum = np.fft.rfft(x.astype(np.float64))
    kept = np.zeros(n_out // 2 + 1, np.complex128)
    k = min(len(spectrum), len(kept))
    kept[:k] = spectrum[:k]
    return np.fft.irfft(kept, n_out) * (n_out / len(x))
