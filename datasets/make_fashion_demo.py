"""Make datasets/fashion_demo/: a class-balanced Fashion-MNIST subset (3000 train, 1000 test).

Run once from the repository root (the output is committed):

    cd /tmp && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist*.deb /tmp/fm
    python -m datasets.make_fashion_demo --src /tmp/fm/usr/share/datasets/fashion-mnist

Deterministic: it keeps the first N images of each class in file order (the files are already
shuffled) and writes gzip with a zero timestamp, so rerunning gives identical bytes.
"""
import argparse
import gzip
import os

import numpy as np

from .fashion import DEMO_DIR, FILES, IDX_MAGIC, read_idx

PER_CLASS = {"train": 300, "test": 100}


def balanced_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """First ``per_class`` indices of every class, kept in their original (shuffled) order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return np.sort(keep)


def write_idx(path: str, array: np.ndarray) -> None:
    header = np.array([IDX_MAGIC[array.ndim], *array.shape], dtype=">u4").tobytes()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="/tmp/fm/usr/share/datasets/fashion-mnist",
                        help="folder with the full Fashion-MNIST IDX gz files")
    parser.add_argument("--out", default=str(DEMO_DIR))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for split, (images_file, labels_file) in FILES.items():
        x = read_idx(os.path.join(args.src, images_file), ndim=3)
        y = read_idx(os.path.join(args.src, labels_file), ndim=1)
        keep = balanced_indices(y, PER_CLASS[split])
        write_idx(os.path.join(args.out, images_file), x[keep])
        write_idx(os.path.join(args.out, labels_file), y[keep])
        print(f"{split}: kept {len(keep)} of {len(y)} images")


if __name__ == "__main__":
    main()
