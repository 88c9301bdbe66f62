"""Full-size ImageNet (ILSVRC-2012), ImageFolder layout: ``train/<class>/…``, ``val/<class>/…``.

As docs/datasets.md gives it. Train: RandomResizedCrop + horizontal flip; eval: Resize +
CenterCrop (224 and 256 by default); per-channel mean/std. JPEGs are decoded and cropped in the loader workers, whose
output stays uint8 (a quarter of the bytes to pin and copy); the float conversion and the
normalisation run per batch on the training device (``Normalise``). Every random draw comes
from torch's global CPU generator, which the driver seeds per sample (exact resume, any
``--workers``). The CS data is a fixed random subset of the training images with the eval
transform.

File names are held in one numpy bytes array, not a list of Python strings: forked loader
workers then share it instead of copying it page by page as reference counts change.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.run.data import Data
from utils.errors import DataError
from utils.run.sampling import mix

from .layouts import other_dataset

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GET = "arrange ILSVRC-2012 (image-net.org) as train/<class>/*.JPEG and val/<class>/*.JPEG"
_CS_SUBSET = 12  # seed stream of the CS subset


@dataclass
class Split:
    root: str
    files: np.ndarray    # bytes, "<class>/<name>" relative to root
    labels: torch.Tensor  # int64


def scan_imagenet(root: str) -> tuple[list[str], Split, Split]:
    """The class list (the train folder names, sorted) and both splits."""
    if not os.path.isdir(root):
        raise DataError(f"ImageNet folder {root} does not exist; {GET}")
    other = other_dataset(root)
    if other and not other.endswith("use --dataset imagenet"):
        raise DataError(f"{root} looks like {other}")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for d in (train_dir, val_dir):
        if not os.path.isdir(d):
            raise DataError(f"ImageNet folder {root} lacks {os.path.basename(d)}/; {GET}")
    classes = _class_folders(train_dir)
    if not classes:
        raise DataError(f"ImageNet folder {train_dir} holds no class folders; {GET}")
    train = _scan(train_dir, classes, {c: i for i, c in enumerate(classes)})
    val_classes = _class_folders(val_dir)
    if not val_classes:
        loose = any(_is_image(n) for n in os.listdir(val_dir))
        raise DataError(f"ImageNet folder {val_dir} holds "
                        + ("images but no class folders (the devkit's flat layout); move each "
                           "image into the folder of its class (valprep.sh of the devkit)"
                           if loose else f"no class folders; {GET}"))
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(f"ImageNet folder {val_dir} has class folders that train/ lacks "
                        f"({', '.join(unknown[:3])}{', …' if len(unknown) > 3 else ''}); "
                        "train/ and val/ must hold the same classes")
    val = _scan(val_dir, val_classes, {c: classes.index(c) for c in val_classes})
    return classes, train, val


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _class_folders(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _scan(split_dir: str, classes: list[str], label_of: dict[str, int]) -> Split:
    files, labels = [], []
    for c in classes:
        found = []
        for folder, dirs, names in os.walk(os.path.join(split_dir, c), followlinks=True):
            dirs.sort()
            rel = os.path.relpath(folder, split_dir)
            found += [os.path.join(rel, n) for n in sorted(names) if _is_image(n)]
        if not found:
            raise DataError(f"class folder {os.path.join(split_dir, c)} holds no images "
                            f"({', '.join(EXTENSIONS)}); add its images or remove the folder "
                            "(train/ and val/ must hold the same classes)")
        files += found
        labels += [label_of[c]] * len(found)
    return Split(split_dir, np.array([f.encode() for f in files]),
                 torch.tensor(labels, dtype=torch.int64))


class JpegFolder(Dataset):
    """Item ``i``: ``(uint8 3×H×W tensor, label)``, decoded and transformed (PIL in, PIL out)."""

    def __init__(self, split: Split, transform, index: torch.Tensor | None = None):
        self.root, self.transform = split.root, transform
        self.files = split.files if index is None else split.files[index.numpy()]
        self.labels = split.labels if index is None else split.labels[index]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.files[i].decode())
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")  # also decodes: a truncated file fails here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path} ({_one_line(e)}); replace or delete "
                            "the file, then continue with --resume auto") from None
        img = self.transform(img)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), \
            int(self.labels[i])


def transforms(crop: int, resize: int):
    """(train, eval), as docs/datasets.md gives them. torchvision's PIL transforms draw from
    torch's global RNG."""
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip()])
    evaluation = T.Compose([T.Resize(resize), T.CenterCrop(crop)])
    return train, evaluation


class Normalise:
    """uint8 → (x/255 − mean)/std per channel, per batch on the device."""

    def __init__(self, mean=MEAN, std=STD):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self._on: dict[torch.device, tuple] = {}  # copied once per device, not every batch

    def __call__(self, x: torch.Tensor, seeds, split: str) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = self.mean.to(x.device), self.std.to(x.device)
        mean, std = self._on[x.device]
        return (x.float() / 255 - mean) / std


def cs_subset(n: int, samples: int, seed: int) -> torch.Tensor:
    """A fixed random subset of ``samples`` training items (sorted: nearby files together)."""
    g = torch.Generator().manual_seed(mix(seed, _CS_SUBSET))
    return torch.randperm(n, generator=g)[:samples].sort().values


def imagenet_data(root: str, seed: int, cs_samples: int, crop: int = 224,
                  resize: int = 256) -> Data:
    classes, train, val = scan_imagenet(root)
    train_tf, eval_tf = transforms(crop, resize)
    return Data(train=JpegFolder(train, train_tf), test=JpegFolder(val, eval_tf),
                cs=JpegFolder(train, eval_tf, cs_subset(len(train.files), cs_samples, seed)),
                num_classes=len(classes), in_channels=3, input_shape=(3, crop, crop),
                classes=classes, batch_transform=Normalise())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
