"""Loader order and augmentation as pure functions of (seed, stream, epoch, position).

Every sample's random augmentation is drawn under its own seed, so a run gives the same batches
whatever ``--workers`` is, however the data is split over ranks, and when it is resumed in the
middle of an epoch: the sampler just starts at the first batch not yet trained.
"""
import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..batches import to_device
from ..errors import UserError

_MASK63 = (1 << 63) - 1


def mix(*parts: int) -> int:
    """A 63-bit seed from small integers (splitmix64-style finaliser: nearby inputs → far seeds)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK63


class SeededDataset(Dataset):
    """``ds[(i, seed)]`` = ``(*ds[i], seed)``, ``ds[i]`` computed with the global torch RNG
    seeded by ``seed`` (the caller's RNG state is restored afterwards); the seed travels on
    with the batch for transforms that run on the device."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator (~100 µs)
            torch.default_generator.manual_seed(seed)
            return (*self.dataset[i], seed)


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)``. shuffle: the epoch's order — ``order(seed, epoch)`` if
    given (a class-balanced draw, file-by-file order, …), else a fresh permutation — padded so
    all ranks get equally many samples, as DDP needs; no shuffle: every sample once, in order,
    rank r taking r, r+W, …. ``set_epoch(epoch, start)`` skips the first ``start`` samples of
    this rank."""

    def __init__(self, n: int, seed: int, stream: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, order: Callable[[int, int], torch.Tensor] | None = None):
        self.n, self.seed, self.stream = n, seed, stream
        self.rank, self.world, self.shuffle, self.order = rank, world, shuffle, order
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[int]] | None = None  # (epoch, this rank's order)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        if self._cache is None or self._cache[0] != self.epoch:
            if self.order is not None:
                order = torch.as_tensor(self.order(self.seed, self.epoch), dtype=torch.long)
            else:
                g = torch.Generator().manual_seed(mix(self.seed, self.stream, self.epoch))
                order = torch.randperm(self.n, generator=g)
            total = -(-len(order) // self.world) * self.world
            order = torch.cat([order, order[:total - len(order)]]) if total > len(order) else order
            self._cache = (self.epoch, order[self.rank::self.world].tolist())
        return self._cache[1]

    def __iter__(self):
        for pos, i in enumerate(self._order()):
            if pos >= self.start:
                # seeded by the global position, so the split over ranks does not matter
                yield i, mix(self.seed, self.stream, self.epoch, pos * self.world + self.rank)

    def __len__(self):
        return max(len(self._order()) - self.start, 0)


def check_seeded(dataset: Dataset, batch_transform=None, device=None, probes: int = 2) -> None:
    """Refuse a training transform that draws from Python's ``random`` or numpy's global RNG:
    those are not seeded per sample, so a resumed run or another ``--workers`` would see other
    augmentations. Probes the first items (and the batch transform on them): their results
    must not depend on, nor advance, those generators."""
    seeded = SeededDataset(dataset)
    keys = [(i, mix(12345, i)) for i in range(min(probes, len(dataset)))]

    def fetch(state: int):
        random.seed(state)
        np.random.seed(state)
        before = (random.getstate(), np.random.get_state()[1].copy())
        items = [seeded[k] for k in keys]
        if batch_transform is not None:
            batch = torch.utils.data.default_collate(items)
            x = batch_transform(to_device(batch[0], device or torch.device("cpu")), batch[2],
                                "train")
            items = [x.detach().cpu()]
        moved = random.getstate() != before[0] or not np.array_equal(np.random.get_state()[1],
                                                                     before[1])
        return items, moved

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        (a, moved_a), (b, moved_b) = fetch(1), fetch(2)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
    same = all(_equal(u, v) for u, v in zip(a, b))
    if moved_a or moved_b or not same:
        raise UserError("the training transform draws from Python's random or numpy's global "
                        "generator, which are not seeded per sample (resume and --workers would "
                        "change the augmentation); draw from torch's generator instead")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


def fixed_batch(dataset: Dataset, seed: int, stream: int, size: int):
    """The first ``size`` samples of stream ``stream``'s epoch-0 order, collated with their
    seeds: the same batch every epoch, after a resume and whatever ``--workers`` is."""
    seeded = SeededDataset(dataset)
    order = EpochSampler(len(dataset), seed, stream)
    return torch.utils.data.default_collate([seeded[key] for key, _ in zip(order, range(size))])
