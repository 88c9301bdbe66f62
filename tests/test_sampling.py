"""Loader order and augmentation are functions of (seed, stream, epoch, position); a transform
that draws from an unseeded generator is refused."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from utils.run.data import sample_generators, weighted_order
from utils.errors import UserError
from utils.run.sampling import EpochSampler, SeededDataset, check_seeded


class Noisy(Dataset):
    def __init__(self, source):
        self.source = source

    def __len__(self):
        return 8

    def __getitem__(self, i):
        draw = {"torch": lambda: torch.rand(()).item(), "python": random.random,
                "numpy": np.random.rand}[self.source]
        return torch.full((2,), float(i) + draw()), i % 2


def test_torch_draws_are_seeded_per_sample_and_accepted():
    check_seeded(Noisy("torch"))
    ds = SeededDataset(Noisy("torch"))
    assert torch.equal(ds[(3, 77)][0], ds[(3, 77)][0]) and ds[(3, 77)][2] == 77
    assert not torch.equal(ds[(3, 77)][0], ds[(3, 78)][0])


@pytest.mark.parametrize("source", ["python", "numpy"])
def test_a_dataset_drawing_from_python_or_numpy_is_refused(source):
    with pytest.raises(UserError, match="Python's random or numpy"):
        check_seeded(Noisy(source))


@pytest.mark.parametrize("source", ["torch-seeded", "python", "numpy"])
def test_a_batch_transform_drawing_from_python_or_numpy_is_refused(source):
    def transform(x, seeds, split):
        if source == "python":
            return x + random.random()
        if source == "numpy":
            return x + float(np.random.rand())
        return x + torch.stack([torch.rand((), generator=g) for g in sample_generators(seeds)])[:, None]

    ds = Noisy("torch")
    if source == "torch-seeded":
        check_seeded(ds, transform)
    else:
        with pytest.raises(UserError, match="draw from torch's generator"):
            check_seeded(ds, transform)


def test_the_callers_generators_are_left_as_they_were():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expect = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    check_seeded(Noisy("torch"))
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expect


def test_script_order_is_padded_split_and_resumable():
    order = lambda seed, epoch: torch.arange(10).flip(0) + 0 * epoch  # noqa: E731
    ranks = [EpochSampler(10, 1, 0, r, 4, order=order) for r in range(4)]
    seen = [i for s in ranks for i, _ in s]
    assert sorted(seen) == sorted(list(range(10)) + [9, 8])  # padded to 12 = 3 per rank
    assert [i for i, _ in ranks[1]] == [8, 4, 0]
    full = list(ranks[1])
    ranks[1].set_epoch(0, 1)
    assert list(ranks[1]) == full[1:] and len(ranks[1]) == 2  # resumes inside the epoch


def test_weighted_order_balances_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = 1.0 / torch.bincount(labels)[labels]
    drawn = labels[weighted_order(weights)(seed=3, epoch=0)]
    assert len(drawn) == 100 and 35 <= int(drawn.sum()) <= 65
    assert torch.equal(weighted_order(weights)(3, 0), weighted_order(weights)(3, 0))
    assert not torch.equal(weighted_order(weights)(3, 0), weighted_order(weights)(3, 1))
