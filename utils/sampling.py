"""Loader order and augmentation as pure functions of (seed, stream, epoch, position).

Every sample's random augmentation is drawn under its own seed, so a run gives the same batches
whatever ``--workers`` is, however the data is split over ranks, and when it is resumed in the
middle of an epoch: the sampler just starts at the first batch not yet trained.
"""
import torch
from torch.utils.data import Dataset, Sampler

_MASK63 = (1 << 63) - 1


def _mix(*parts: int) -> int:
    """A 63-bit seed from small integers (splitmix64-style finaliser: nearby inputs → far seeds)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK63


class SeededDataset(Dataset):
    """``ds[(i, seed)]`` = ``ds[i]`` computed with the global torch RNG seeded by ``seed``
    (the caller's RNG state is restored afterwards)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator (~100 µs)
            torch.default_generator.manual_seed(seed)
            return self.dataset[i]


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)``. shuffle: a fresh permutation per epoch (or, with
    ``weights``, draws with replacement, e.g. a class-balanced sampler), padded so all ranks get
    equally many samples, as DDP needs; no shuffle: every sample once, in order, rank r taking
    r, r+W, …. ``set_epoch(epoch, start)`` skips the first ``start`` samples of this rank."""

    def __init__(self, n: int, seed: int, stream: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, weights: torch.Tensor | None = None):
        self.n, self.seed, self.stream = n, seed, stream
        self.rank, self.world, self.shuffle, self.weights = rank, world, shuffle, weights
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(_mix(self.seed, self.stream, self.epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        total = -(-self.n // self.world) * self.world
        order = torch.cat([order, order[:total - self.n]]) if total > self.n else order
        return order[self.rank::self.world].tolist()

    def __iter__(self):
        for pos, i in enumerate(self._order()):
            if pos >= self.start:
                # seeded by the global position, so the split over ranks does not matter
                yield i, _mix(self.seed, self.stream, self.epoch, pos * self.world + self.rank)

    def __len__(self):
        per_rank = (len(range(self.rank, self.n, self.world)) if not self.shuffle
                    else -(-self.n // self.world))
        return max(per_rank - self.start, 0)
