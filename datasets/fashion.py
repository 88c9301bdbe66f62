"""Fashion-MNIST in its IDX gz format; ``DEMO_DIR`` is the small subset committed with the repo
so the main job runs offline (see fashion_demo/README.md)."""
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from utils.errors import DataError

from .images import ImageSplits

DEMO_DIR = Path(__file__).parent / "fashion_demo"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IDX_MAGIC = {3: 0x0803, 1: 0x0801}  # unsigned-byte data; low byte is the number of dimensions


def load_fashion_demo(root: str) -> ImageSplits:
    """Read the four Fashion-MNIST IDX gz files in ``root`` (the demo subset or the full set)."""
    splits = []
    for split, (images_file, labels_file) in FILES.items():
        x = read_idx(os.path.join(root, images_file), ndim=3)
        y = read_idx(os.path.join(root, labels_file), ndim=1)
        if len(x) == 0 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split} split in {root} has {len(x)} images and "
                            f"{len(y)} labels; regenerate it with "
                            f"python -m datasets.make_fashion_demo")
        if y.max() >= len(CLASSES):
            raise DataError(f"Fashion-MNIST {os.path.join(root, labels_file)} has label {y.max()}, "
                            f"outside [0, {len(CLASSES)}); regenerate it with "
                            f"python -m datasets.make_fashion_demo")
        splits += [torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
    # Normalisation statistics of this data (no published constants for a subset).
    pixels = splits[0].float() / 255
    return ImageSplits(*splits, list(CLASSES), (pixels.mean().item(),), (pixels.std().item(),))


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file (gzip-compressed) as a uint8 array with ``ndim`` dimensions."""
    fix = "re-download it or regenerate the demo with python -m datasets.make_fashion_demo"
    if not os.path.isfile(path):
        raise DataError(f"Fashion-MNIST file {path} not found; {fix}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"Fashion-MNIST file {path} is not a valid gzip file ({e}); {fix}") from e
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"Fashion-MNIST file {path} is too short for an IDX header; {fix}")
    magic, *shape = np.frombuffer(raw[:header], dtype=">u4").tolist()
    if magic != IDX_MAGIC[ndim]:
        raise DataError(f"Fashion-MNIST file {path} has magic number {magic:#010x}, expected "
                        f"{IDX_MAGIC[ndim]:#010x} (unsigned bytes, {ndim} dims); {fix}")
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"Fashion-MNIST file {path} holds {len(raw) - header} bytes of data but "
                        f"its header says {'×'.join(map(str, shape))}; {fix}")
    if ndim == 3 and tuple(shape[1:]) != (28, 28):
        raise DataError(f"Fashion-MNIST file {path} has {shape[1]}×{shape[2]} images, expected "
                        f"28×28; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()
