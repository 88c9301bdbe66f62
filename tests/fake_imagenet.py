"""Tiny ImageNet32 npz files and ImageNet JPEG folders in the official layouts, and ways to
break them. The images are learnable (a colour and a stripe angle per class under noise), so
a wrong label or a shuffled pixel order would show in accuracy, not only in shapes."""
import os

import numpy as np

from datasets.imagenet32 import TRAIN_FILES, VAL_FILE

PIXELS = 3 * 32 * 32


def _prototypes(rng, k, h=32, w=32):
    colours = rng.uniform(40, 215, size=(k, 3, 1, 1))
    yy, xx = np.mgrid[0:h, 0:w] * (32 / max(h, w))
    angles = np.pi * np.arange(k) / k
    stripes = np.stack([np.sin((np.cos(a) * xx + np.sin(a) * yy) * 0.8) for a in angles])
    return colours + 35 * stripes[:, None]


def imagenet32_labels(k: int) -> np.ndarray:
    """k official (1-based) labels spread over 1..1000, both ends included."""
    return np.linspace(1, 1000, k).round().astype(np.int64)


def write_imagenet32(root, per_file=20, n_val=40, num_classes=4, seed=0, sizes=None) -> str:
    """The ten ``train_data_batch_k.npz`` and ``val_data.npz`` in ``root`` (created); ``sizes``
    overrides the images per training file. Every file carries the same ``mean`` (float64, 0–255
    units), the mean over all training images, as the official files do."""
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, num_classes)
    names = imagenet32_labels(num_classes)
    sizes = sizes or [per_file] * len(TRAIN_FILES)

    def images(n):
        cls = rng.permutation(np.arange(n) % num_classes)
        x = protos[cls] + rng.normal(0, 20, size=(n, 3, 32, 32))
        return np.clip(x, 0, 255).astype(np.uint8).reshape(n, PIXELS), names[cls]

    train = [images(n) for n in sizes]
    mean = np.concatenate([x for x, _ in train]).mean(0)
    os.makedirs(root, exist_ok=True)
    for name, (x, y) in zip(TRAIN_FILES, train):
        np.savez(os.path.join(root, name), data=x, labels=y, mean=mean)
    x, y = images(n_val)
    np.savez(os.path.join(root, VAL_FILE), data=x, labels=y)
    return str(root)


def rewrite_npz(path, rename=None, **changes) -> None:
    """Rewrite one npz with some arrays renamed ({old: new}) or replaced (a value, or a function
    of the old array; ``None`` drops the key)."""
    with np.load(path) as f:
        arrays = {(rename or {}).get(k, k): f[k] for k in f.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v(arrays[k]) if callable(v) else v
    os.remove(path)
    np.savez(path, **arrays)


def write_imagenet_folder(root, classes=("n01440764", "n01443537", "n01484850"), n_train=8,
                          n_val=4, size=(48, 40), seed=0) -> str:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``, images of ``size`` (w, h)
    give or take a few pixels so crops and resizes see varied shapes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    protos = _prototypes(rng, len(classes), h + 8, w + 8)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(classes):
            folder = os.path.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                hh, ww = h + int(rng.integers(0, 9)), w + int(rng.integers(0, 9))
                x = protos[c][:, :hh, :ww] + rng.normal(0, 20, size=(3, hh, ww))
                img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8).transpose(1, 2, 0))
                img.save(os.path.join(folder, f"{wnid}_{split}_{i}.JPEG"), quality=90)
    return str(root)


def truncate_file(path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))
