"""What a dataset script hands the driver: ``make_data(args) -> Data``.

The driver owns loaders, samplers, seeds and devices; a script only describes its data:
- ``train``/``cs``/``test`` datasets whose item ``i`` is ``(x, y)``, ``x`` a tensor or a dict of
  tensors (collated by the default collate). Any randomness in ``__getitem__`` must come from
  torch's global CPU generator, which the driver seeds per sample (``utils.run.sampling``).
- ``train_order(seed, epoch)``: the epoch's global sequence of training indices (a class-balanced
  draw, file-by-file order, …); default a fresh permutation per epoch. The driver pads it for
  DDP, splits it over ranks and resumes inside it.
- ``batch_transform(x, seeds, split)``: runs on the training device after the batch is moved
  there (``split`` is "train", "cs" or "test"; ``seeds`` the int64 per-sample seeds, on the
  CPU). Random draws come from ``sample_generators(seeds)``. For "test" it may return
  N×V×C×H×W: V views whose softmax the evaluation averages (multi-crop).
"""
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch.utils.data import Dataset

from .sampling import mix


class BatchTransform(Protocol):
    def __call__(self, x, seeds: torch.Tensor, split: str) -> torch.Tensor: ...


@dataclass
class Data:
    train: Dataset
    cs: Dataset          # the CS pass's data (docs/method.md), read in fixed order
    test: Dataset
    num_classes: int
    in_channels: int
    input_shape: tuple   # C, H, W of one model input (after batch_transform)
    classes: list[str] | None = None
    train_order: Callable[[int, int], torch.Tensor] | None = None
    batch_transform: BatchTransform | None = None


def sample_generators(seeds: torch.Tensor, salt: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by its seed (and ``salt`` for a second stream)."""
    return [torch.Generator().manual_seed(mix(int(s), salt)) for s in seeds.tolist()]


def weighted_order(weights: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Draws with replacement, ``len(weights)`` per epoch (e.g. a class-balanced sampler)."""
    w = weights.double()

    def order(seed: int, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix(seed, 0, epoch))
        return torch.multinomial(w, len(w), replacement=True, generator=g)

    return order
