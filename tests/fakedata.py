"""Tiny datasets in the real on-disk formats, for tests, plus ways to break them.

The CIFAR images are learnable on purpose: each class has its own colour and stripe direction
under per-image noise, so a small ResNet beats chance within a few epochs and training tests
can assert that accuracy rises, not just that the code runs. Measured: resnet20, 200 training
images, SGD lr 0.01 batch 32 -> ~50% test accuracy after 3 epochs (chance 10%). lr 0.1 diverges
on so few steps; it needs ~500 images (~60% after 3 epochs).
"""
import os
import pickle
import struct

import numpy as np

_LAYOUT = {  # name -> (folder, train files, test file, meta file, names key, labels key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"label_names", b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_label_names",
                 b"fine_labels", 100),
}


def write_cifar(root, name="cifar10", n_train=200, n_test=100, seed=0, num_classes=None) -> str:
    """Write a CIFAR-10/100 folder under ``root``; return its path.

    ``num_classes`` limits the labels to the first k classes (default: all of them), which
    makes small sets easier to learn; the meta file still lists all 10/100 names.
    """
    folder, train_files, test_file, meta_file, names_key, labels_key, total = _LAYOUT[name]
    k = num_classes or total
    rng = np.random.default_rng(seed)
    prototypes = _prototypes(rng, k)
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)

    train_x, train_y = _images(rng, prototypes, n_train)
    parts = np.array_split(np.arange(n_train), len(train_files))
    for file, idx in zip(train_files, parts):
        _dump(os.path.join(path, file), _batch(file, train_x[idx], train_y[idx], labels_key))
    test_x, test_y = _images(rng, prototypes, n_test)
    _dump(os.path.join(path, test_file), _batch(test_file, test_x, test_y, labels_key))
    names = [f"class{i}".encode() for i in range(total)]
    _dump(os.path.join(path, meta_file), {names_key: names, b"num_cases_per_batch": len(parts[0])})
    return path


def _prototypes(rng, k):
    """One 3×32×32 float image per class: a colour plus stripes at a class-specific angle."""
    colours = rng.uniform(40, 215, size=(k, 3, 1, 1))
    yy, xx = np.mgrid[0:32, 0:32]
    angles = np.pi * np.arange(k) / k
    stripes = np.stack([np.sin((np.cos(a) * xx + np.sin(a) * yy) * 0.8) for a in angles])
    return colours + 35 * stripes[:, None]


def _images(rng, prototypes, n):
    labels = rng.permutation(np.arange(n) % len(prototypes))  # balanced, shuffled
    noisy = prototypes[labels] + rng.normal(0, 15, size=(n, 3, 32, 32))
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(n, 3072), labels


def _batch(file, x, y, labels_key):
    # Same keys and types as the originals: bytes keys, uint8 array, labels as a list of ints.
    return {b"batch_label": f"fake {file}".encode(), labels_key: [int(v) for v in y],
            b"data": x, b"filenames": [f"{i}.png".encode() for i in range(len(y))]}


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# --- breaking things -----------------------------------------------------------------------------

def read_batch(path) -> dict:
    """Load a batch we wrote ourselves (trusted, so the plain unpickler is fine)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def corrupt_cifar_batch(path, kind: str) -> None:
    """Damage one batch file in place. ``kind``: truncate, garbage, labels_range, labels_length,
    shape (N×1024 grayscale rows), dtype (float32 data), missing_key, not_dict."""
    if kind == "truncate":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        return
    if kind == "garbage":
        with open(path, "wb") as f:
            f.write(b"<html>404 Not Found</html>")
        return
    batch = read_batch(path)
    labels_key = b"fine_labels" if b"fine_labels" in batch else b"labels"
    if kind == "labels_range":
        batch[labels_key][0] = 1000
    elif kind == "labels_length":
        batch[labels_key] = batch[labels_key][:-1]
    elif kind == "shape":
        batch[b"data"] = batch[b"data"][:, :1024].copy()
    elif kind == "dtype":
        batch[b"data"] = batch[b"data"].astype(np.float32)
    elif kind == "missing_key":
        del batch[b"data"]
    elif kind == "not_dict":
        batch = [batch[b"data"]]
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    _dump(path, batch)


class _CreatesFile:
    """Unpickling this runs ``open(target, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


def plant_malicious_batch(path, target) -> None:
    """Overwrite a batch with a pickle that would create ``target`` if it were trusted."""
    batch = read_batch(path)
    batch[b"data"] = _CreatesFile(str(target))
    _dump(path, batch)


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled exactly as Python 2 + numpy 1.x wrote the official files: str keys and
    dtype strings as BINSTRING, globals under ``numpy.core.multiarray``."""
    def s(text):  # SHORT_BINSTRING (a Python 2 str)
        raw = text if isinstance(text, bytes) else text.encode()
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<I", len(raw)) + raw

    def i(v):  # BININT
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + s("u1") + i(0) + i(1) + b"\x87R"  # dtype('u1', 0, 1)
             + b"(" + i(3) + s("|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")  # its __setstate__
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
             + s("b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89"
             + s(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s("data") + array + s("labels") + label_list + b"u."
