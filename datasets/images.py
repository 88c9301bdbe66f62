"""In-memory image datasets: the container every loader returns, and the augmenting Dataset.

Images stay uint8 N×C×H×W until ``__getitem__`` so CIFAR fits in ~150 MB; augmentation is plain
tensor slicing (no PIL), which keeps per-item work cheap and makes it depend only on the global
torch RNG, so ``torch.manual_seed`` (and DataLoader's per-worker seeding) reproduces a run.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ImageSplits:
    train_x: torch.Tensor  # uint8, N×C×H×W
    train_y: torch.Tensor  # int64, N
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0,1] units, for normalisation
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]


class ImageDataset(torch.utils.data.Dataset):
    """Yields ``(float32 C×size×size normalised image, int label)``.

    train=True: zero-pad by ``pad``, random ``size`` crop, random horizontal flip (p=0.5) — the
    reference's RandomCrop(32, padding=4) + RandomHorizontalFlip. train=False: centre crop only.
    Images smaller than ``size`` (Fashion-MNIST's 28×28) are first zero-padded, centred.
    """

    def __init__(self, images_uint8_nchw: torch.Tensor, labels: torch.Tensor, mean, std,
                 train: bool, pad: int = 4, size: int = 32):
        if images_uint8_nchw.dtype != torch.uint8 or images_uint8_nchw.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images_uint8_nchw.dtype} "
                             f"{tuple(images_uint8_nchw.shape)}")
        if len(labels) != len(images_uint8_nchw):
            raise ValueError(f"{len(images_uint8_nchw)} images but {len(labels)} labels")
        channels = images_uint8_nchw.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel)")
        # Pad small images once here rather than on every item.
        self.images = _pad_to(images_uint8_nchw, size)
        self.labels = [int(y) for y in labels]  # plain ints: cheap to index, collate to int64
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.train, self.pad, self.size = train, pad, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        h, w = img.shape[1:]
        if self.train:
            if self.pad:
                img = F.pad(img, (self.pad,) * 4)
                h, w = h + 2 * self.pad, w + 2 * self.pad
            top = int(torch.randint(0, h - self.size + 1, ()))
            left = int(torch.randint(0, w - self.size + 1, ()))
            img = img[:, top:top + self.size, left:left + self.size]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
            img = img[:, top:top + self.size, left:left + self.size]
        return (img.float() / 255 - self.mean) / self.std, self.labels[i]


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad H and W up to ``size`` (centred); larger images are left for the crop."""
    h, w = images.shape[2:]
    dh, dw = max(size - h, 0), max(size - w, 0)
    if dh == 0 and dw == 0:
        return images
    return F.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
