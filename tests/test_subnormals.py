"""Subnormal floats: flushed to zero in training runs by default, kept with --keep_subnormals."""
import os

import pytest
import torch

from tests.cli import run_forked
from tests.fakedata import write_cifar
from utils import subnormals

TINY = torch.finfo(torch.float32).tiny


def test_flushed_zeroes_subnormal_results_and_operands_then_restores():
    x = torch.full((8,), 1e-30)
    w = torch.full((2, 2, 3, 3), 1e-40)  # subnormal weights
    assert (x * 1e-10 != 0).all()  # IEEE: 1e-40 is a subnormal float32
    assert (torch.nn.functional.conv2d(torch.ones(1, 2, 4, 4), w) != 0).all()
    with subnormals.flushed() as supported:
        assert supported  # every x86-64 CPU has FTZ/DAZ
        assert (x * 1e-10 == 0).all() and (x * 1e-5 != 0).all()  # FTZ: a subnormal result is 0
        assert (torch.nn.functional.conv2d(torch.ones(1, 2, 4, 4), w) == 0).all()  # DAZ
    assert (x * 1e-10 != 0).all()  # the mode is restored
    with subnormals.flushed(False) as supported:
        assert not supported and (x * 1e-10 != 0).all()


def test_count_finds_the_subnormal_values_of_every_float_dtype():
    t32 = torch.tensor([0.0, 1.0, TINY, TINY / 2, -TINY / 4])
    t64 = torch.tensor([1e-310, 1e-300], dtype=torch.float64)
    assert subnormals.count([t32, t64, torch.arange(3), None]) == (3, 7)


@pytest.fixture(scope="module")
def underflowing_runs(tmp_path_factory):
    """A short FSDP run whose ζ underflows (s = 1e-40: every ζ(e) > 0 is subnormal in float32),
    stopped before its last epoch (ζ = 0 there), with and without --keep_subnormals; two
    intra-op threads, so the pool's threads must inherit the mode too."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=64, n_test=32, seed=0)
    out = {}
    for keep in (False, True):
        save = str(root / ("keep" if keep else "flush"))
        cmd = ["--dataset", "cifar10",
               "--arch", "resnet20", "--data_path", str(root), "--save_path", save,
               "--epochs", "3", "--stop_after", "2", "--attenuation", "1e-40",
               "--batch_size", "32", "--batch_prune_size", "64", "--schedule", "1",
               "--gammas", "1", "--workers", "0", "--manualSeed", "1"]
        proc = run_forked("notebook_cifar.py", *cmd, *(["--keep_subnormals"] if keep else []),
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[keep] = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    return out


def _state(ckpt) -> list:
    """What a step reads and writes that the checkpoint holds: parameters, BN buffers and the
    optimizer's momenta."""
    return list(ckpt["model"].values()) + [v for s in ckpt["optimizer"]["state"].values()
                                           for v in s.values() if isinstance(v, torch.Tensor)]


def test_a_run_whose_zeta_underflows_keeps_no_subnormal_state(underflowing_runs):
    subnormal, total = subnormals.count(_state(underflowing_runs[False]))
    assert total > 500_000 and subnormal == 0


def test_keep_subnormals_keeps_ieee_arithmetic(underflowing_runs):
    ckpt = underflowing_runs[True]
    assert ckpt["args"]["keep_subnormals"] is True
    subnormal, _ = subnormals.count(_state(ckpt))
    assert subnormal > 1000  # the selected filters' weights and momenta: the same run, IEEE
