"""ImageNet32 (Chrabaszcz et al. 2017, the paper's second experiment) from the official npz files.

docs/datasets.md. The ten ``train_data_batch_k.npz`` (keys ``data`` uint8 N×3072 planar R|G|B,
``labels`` 1..1000, ``mean`` 3072 floats) and ``val_data.npz`` (``data``, ``labels``).

Memory: the images stay uint8, streamed from each archive straight into one preallocated
tensor (3.9 GB for the full train set; the reference held ~7 GB of float32 and decoded every
file again each epoch). Normalising and mirroring happen per batch on the training device
(``Normalise``), so a dataset item is a view of one row. As in the reference, each training
file is normalised with its own ``mean`` (the same in every official file) and the validation
images with that of the first file of the run's order.

Order (the reference's): the ten files in a random order fixed for the run; every epoch walks
them in that order, each file together with its mirrored copy, shuffled within the file.
Train item ``i`` is image ``i`` for ``i < N`` and the mirror of image ``i − N`` otherwise.
"""
import bisect
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from utils.run.data import Data
from utils.errors import DataError
from utils.run.sampling import mix

from .layouts import other_dataset

TRAIN_FILES = tuple(f"train_data_batch_{k}.npz" for k in range(1, 11))
VAL_FILE = "val_data.npz"
PIXELS = 3 * 32 * 32
NUM_CLASSES = 1000
# where the files may sit under --data_path: the files themselves, the reference's
# train/ + val/, or the folders the official zip archives extract to
TRAIN_DIRS = ("", "train", "Imagenet32_train_npz")
VAL_DIRS = ("", "val", "Imagenet32_val_npz")
GET = "download Imagenet32_train_npz.zip and Imagenet32_val_npz.zip (image-net.org, "\
      "'Downsampled ImageNet 32x32') and extract them there"
_FILE_ORDER, _WITHIN_FILE = 10, 11  # seed streams (0–2 are the driver's)
_CHUNK = 1 << 22  # bytes per read: the only transient copy while loading


@dataclass
class ImageNet32:
    train_x: torch.Tensor   # uint8 N×3×32×32, the files in name order 1..10
    train_y: torch.Tensor   # int64 N, 0..999
    sizes: tuple[int, ...]  # images per training file
    means: torch.Tensor     # float64 10×3×32×32: each file's mean image / 255
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes).tolist()]


def load_imagenet32(root: str) -> ImageNet32:
    """Read and validate every file (headers, labels and means first, then the pixels)."""
    train_dir, val_dir = _find(root)
    paths = [os.path.join(train_dir, f) for f in TRAIN_FILES]
    val_path = os.path.join(val_dir, VAL_FILE)
    heads = [_Head(p, ("data", "labels", "mean")) for p in paths]
    val_head = _Head(val_path, ("data", "labels"))
    total = sum(h.n for h in heads)
    if total == 0 or val_head.n == 0:
        raise DataError(f"the ImageNet32 {'train' if total == 0 else 'val'} files under {root} "
                        f"hold no images; {GET}")
    train_x = torch.empty(total, 3, 32, 32, dtype=torch.uint8)
    flat = train_x.numpy().reshape(total, PIXELS)
    start = 0
    for h in heads:
        h.read_into(flat[start:start + h.n])
        start += h.n
    val_x = torch.empty(val_head.n, 3, 32, 32, dtype=torch.uint8)
    val_head.read_into(val_x.numpy().reshape(val_head.n, PIXELS))
    return ImageNet32(train_x, torch.from_numpy(np.concatenate([h.labels for h in heads])),
                      tuple(h.n for h in heads), torch.stack([h.mean for h in heads]),
                      val_x, torch.from_numpy(val_head.labels))


def _find(root: str) -> tuple[str, str]:
    if not os.path.isdir(root):
        raise DataError(f"ImageNet32 folder {root} does not exist; {GET}")
    train = next((os.path.join(root, d) if d else root for d in TRAIN_DIRS
                  if any(os.path.isfile(os.path.join(root, d, f)) for f in TRAIN_FILES)), None)
    if train is None:
        other = other_dataset(root)
        if other and "imagenet32" not in other:
            raise DataError(f"{root} looks like {other}")
        if any(os.path.isfile(os.path.join(root, d, "train_data_batch_1")) for d in TRAIN_DIRS):
            raise DataError(f"{root} holds the pickled ImageNet32 files; this script reads the "
                            "npz version: download Imagenet32_train_npz.zip and "
                            "Imagenet32_val_npz.zip instead")
        raise DataError(f"no ImageNet32 files under {root} (train_data_batch_1..10.npz and "
                        f"{VAL_FILE}); {GET}")
    missing = [f for f in TRAIN_FILES if not os.path.isfile(os.path.join(train, f))]
    if missing:
        raise DataError(f"ImageNet32 folder {train} lacks {', '.join(missing)}; all ten "
                        "training files are needed: extract Imagenet32_train_npz.zip again")
    val = next((os.path.join(root, d) if d else root for d in VAL_DIRS
                if os.path.isfile(os.path.join(root, d, VAL_FILE))), None)
    if val is None:
        raise DataError(f"no {VAL_FILE} under {root} (looked in {', '.join(VAL_DIRS[1:])} and "
                        "the folder itself); extract Imagenet32_val_npz.zip there")
    return train, val


class _Head:
    """One npz: its small arrays read and checked, its ``data`` header parsed; the pixels are
    streamed later into the caller's buffer, so no second copy of them ever exists."""

    def __init__(self, path: str, keys: tuple[str, ...]):
        self.path = path
        self.fix = "re-download it" if "mean" in keys else "re-download the val archive"
        try:
            with zipfile.ZipFile(path) as zf:
                found = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
                if found != sorted(keys):
                    raise DataError(f"ImageNet32 file {path} has keys {found}, expected "
                                    f"{list(keys)} (the official npz files); {self.fix}")
                self.n = self._data_header(zf)
                self.labels = self._labels(self._small(zf, "labels"))
                if "mean" in keys:
                    self.mean = self._mean(self._small(zf, "mean"))
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
            raise DataError(f"ImageNet32 file {path} is not a readable npz archive "
                            f"({_one_line(e)}); {self.fix}") from None

    def _data_header(self, zf) -> int:
        with zf.open("data.npy") as f:
            shape, fortran, dtype = _read_header(f)
        if dtype != np.uint8 or len(shape) != 2 or shape[1] != PIXELS:
            raise DataError(f"ImageNet32 file {self.path} data is {dtype} {shape}, expected "
                            f"uint8 N×{PIXELS} (32×32 RGB images; the 64×64 or 16×16 version "
                            f"is another dataset); {self.fix}")
        if fortran and shape[0] > 1:
            raise DataError(f"ImageNet32 file {self.path} stores data in Fortran order; "
                            f"write it with numpy's default (C) order")
        return shape[0]

    def _small(self, zf, key: str) -> np.ndarray:
        with zf.open(key + ".npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def _labels(self, y: np.ndarray) -> np.ndarray:
        if y.ndim != 1 or len(y) != self.n or not (y.dtype.kind in "iu" or y.size == 0):
            raise DataError(f"ImageNet32 file {self.path} has {y.shape} labels of type "
                            f"{y.dtype} for {self.n} images, expected one integer per image; "
                            f"{self.fix}")
        if y.size and (y.min() < 1 or y.max() > NUM_CLASSES):
            hint = " (they count from 0: the official files number classes from 1)" \
                if y.min() == 0 else ""
            raise DataError(f"ImageNet32 file {self.path} has labels in [{y.min()}, {y.max()}], "
                            f"expected 1..{NUM_CLASSES}{hint}; {self.fix}")
        return y.astype(np.int64) - 1  # the reference shifts them to 0..999

    def _mean(self, m: np.ndarray) -> torch.Tensor:
        if m.size != PIXELS or m.dtype.kind not in "fiu" or not np.isfinite(m).all():
            raise DataError(f"ImageNet32 file {self.path} has a mean image of {m.size} values "
                            f"({m.dtype}), expected {PIXELS} finite numbers (the 32×32 RGB "
                            f"mean image in 0–255); {self.fix}")
        # as the reference: mean / float32(255) in the mean's own precision, used in float64
        m = m.reshape(3, 32, 32)
        m = m / np.float32(255) if m.dtype == np.float32 else m.astype(np.float64) / 255
        return torch.from_numpy(m.astype(np.float64))

    def read_into(self, out: np.ndarray) -> None:
        """Stream the pixels into ``out`` (a C-contiguous uint8 n×3072 view)."""
        view = memoryview(out.reshape(-1))
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open("data.npy") as f:
                _read_header(f)
                done = 0
                while done < len(view):
                    got = f.readinto(view[done:done + _CHUNK])
                    if not got:
                        raise EOFError(f"{len(view) - done} bytes missing")
                    done += got
                f.read(1)  # reach the end, so zipfile checks the CRC
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
            raise DataError(f"ImageNet32 file {self.path} is truncated or corrupt "
                            f"({_one_line(e)}); {self.fix}") from None


def _read_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version} is not supported")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- order, items and the per-batch transform -----------------------------------------------

def file_order(seed: int) -> list[int]:
    """The run's order of the ten training files (0-based), fixed by the seed."""
    g = torch.Generator().manual_seed(mix(seed, _FILE_ORDER))
    return torch.randperm(len(TRAIN_FILES), generator=g).tolist()


def file_items(sizes, k: int) -> torch.Tensor:
    """Train items of file ``k``: its images, then their mirrors (the reference's torch.cat)."""
    offsets, total = [0, *np.cumsum(sizes).tolist()], int(sum(sizes))
    images = torch.arange(offsets[k], offsets[k + 1])
    return torch.cat([images, images + total])


def make_train_order(sizes):
    """``train_order(seed, epoch)``: file by file in the run's order, each file with its mirror,
    shuffled within the file (a function of seed, epoch and file, hence exact resume)."""
    sizes = tuple(int(n) for n in sizes)

    def train_order(seed: int, epoch: int) -> torch.Tensor:
        parts = []
        for k in file_order(seed):
            items = file_items(sizes, k)
            g = torch.Generator().manual_seed(mix(seed, _WITHIN_FILE, epoch, k))
            parts.append(items[torch.randperm(len(items), generator=g)])
        return torch.cat(parts)

    return train_order


class MirroredImages(Dataset):
    """Item ``i``: ``({"image": uint8 3×32×32, "flip": 0|1, "file": k}, label)``; with
    ``mirrored`` the items ``N..2N−1`` are the images again, to be flipped per batch; ``file``
    picks the mean image the batch transform subtracts."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, offsets: list[int] | None,
                 mirrored: bool, mean_file: int = 0):
        self.images, self.labels, self.mirrored = images, labels, mirrored
        self.offsets, self.mean_file = offsets, mean_file

    def __len__(self) -> int:
        return len(self.images) * (2 if self.mirrored else 1)

    def __getitem__(self, i: int):
        n = len(self.images)
        j = i - n if i >= n else i
        k = bisect.bisect_right(self.offsets, j) - 1 if self.offsets else self.mean_file
        return {"image": self.images[j], "flip": int(i >= n), "file": k}, int(self.labels[j])


class Normalise:
    """image/255 − mean image/255, then the mirror: on the device, per batch.

    Bit-exact with the reference's numpy (uint8 / float32(255) in float32, the float64 mean
    subtracted in float64, the result float32, mirrored after normalising); float32 only on
    devices without float64.
    """

    def __init__(self, means: torch.Tensor):
        self.means = means
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, x: dict, seeds, split: str) -> torch.Tensor:
        image = x["image"]
        exact = image.device.type != "mps"
        means = self._on.get(image.device)
        if means is None:
            means = self.means.to(image.device, torch.float64 if exact else torch.float32)
            self._on[image.device] = means
        scaled = image.float() / 255
        out = ((scaled.double() if exact else scaled) - means[x["file"]]).float()
        flip = x["flip"].bool().view(-1, 1, 1, 1)
        return torch.where(flip, out.flip(-1), out)


def imagenet32_data(root: str, seed: int) -> Data:
    """The driver's ``Data``: CS data = the first file of the run's order plus its mirror
    (docs/method.md); the validation images use that file's mean image, as in the reference."""
    d = load_imagenet32(root)
    first = file_order(seed)[0]
    train = MirroredImages(d.train_x, d.train_y, d.offsets, mirrored=True)
    test = MirroredImages(d.val_x, d.val_y, None, mirrored=False, mean_file=first)
    cs = Subset(train, file_items(d.sizes, first).tolist())
    return Data(train=train, cs=cs, test=test, num_classes=NUM_CLASSES, in_channels=3,
                input_shape=(3, 32, 32), train_order=make_train_order(d.sizes),
                batch_transform=Normalise(d.means))
