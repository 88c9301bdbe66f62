"""The run's loaders: one seeded stream each, split over DDP ranks, built from the script's Data.

Each stream draws its order and per-sample seeds from (seed, stream, epoch), so the batches are
the same whatever ``--workers`` is, and a resumed run continues them exactly.
"""
from torch.utils.data import DataLoader

from .. import distributed as dist
from ..batches import prepare
from .data import Data
from .sampling import EpochSampler, SeededDataset, fixed_batch

TRAIN, CS, TEST, BN_REFRESH, PROBE = range(5)
PROBE_SIZE = 64  # samples of the attenuation probe's batch (utils/method/attenuation.py)


def per_rank(batch_size: int) -> int:
    """``--batch_size`` is the global batch: each of the W processes takes ⌊batch_size/W⌋."""
    return max(1, batch_size // dist.world_size())


def _loader(ds, batch_size, args, device, sampler, every_epoch: bool = False) -> DataLoader:
    """``every_epoch``: keep the worker processes between epochs (train and test loaders;
    the CS and BN-refresh ones run now and then and would only hold processes)."""
    return DataLoader(SeededDataset(ds), batch_size=batch_size, sampler=sampler,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      persistent_workers=every_epoch and args.workers > 0)


def _sampler(n: int, args, stream: int, **kw) -> EpochSampler:
    return EpochSampler(n, args.manualSeed, stream, dist.rank(), dist.world_size(), **kw)


def train_loader(args, data: Data, device) -> DataLoader:
    """The training order: ``data.train_order`` (class-balanced, file by file, …) or a fresh
    permutation per epoch; ``loader.sampler.set_epoch(epoch, start)`` resumes inside it."""
    sampler = _sampler(len(data.train), args, TRAIN, order=data.train_order)
    return _loader(data.train, per_rank(args.batch_size), args, device, sampler, every_epoch=True)


def test_loader(args, data: Data, device) -> DataLoader:
    sampler = _sampler(len(data.test), args, TEST, shuffle=False)
    return _loader(data.test, args.batch_size, args, device, sampler, every_epoch=True)


def cs_loader(args, data: Data, device) -> DataLoader:
    """The CS pass's data in fixed order; each pass sets its own epoch, so any per-sample
    augmentation is a function of the pass (exact resume, any ``--workers``)."""
    sampler = _sampler(len(data.cs), args, CS, shuffle=False)
    return _loader(data.cs, per_rank(args.batch_prune_size), args, device, sampler)


def refresh_loader(args, data: Data, device) -> DataLoader:
    """``--eval_bn_refresh``: training batches of their own stream."""
    sampler = _sampler(len(data.train), args, BN_REFRESH, order=data.train_order)
    return _loader(data.train, per_rank(args.batch_size), args, device, sampler)


def probe_batch(args, data: Data, device):
    """The attenuation probe's fixed batch of training samples with their training
    augmentation, on the device: the same every epoch, on every rank, after a resume."""
    size = min(PROBE_SIZE, per_rank(args.batch_size), len(data.train))
    x, _ = prepare(fixed_batch(data.train, args.manualSeed, PROBE, size), device,
                   data.batch_transform, "train")
    return x
