"""What a run asks of its device, checked on the CPU: the dtype ``--amp`` picks, the kernel
flags of ``--deterministic``, no CUDA at all under ``--device cpu``, the current GPU set for
``--device cuda:N``, and no wait for the device in every training batch (docs/runs.md).
The GPU itself: ``python -m bench.gpu_check`` (docs/benchmarks.md)."""
import argparse

import pytest
import torch
import torch.nn.functional as F

import notebook_cifar
from models import build_model
from tests.cli import run_in_process
from tests.fakedata import write_cifar
from utils import distributed
from utils.run import engine
from utils.run.precision import amp_dtype, amp_warning, choose_kernels

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("asked,bf16_gpu,cpu,gpu", [
    (None, True, None, None),
    ("auto", True, torch.bfloat16, torch.bfloat16),
    ("auto", False, torch.bfloat16, torch.float16),
    ("bf16", False, torch.bfloat16, torch.bfloat16),
    ("fp16", True, torch.float16, torch.float16)])
def test_amp_picks_bf16_where_the_device_computes_it(monkeypatch, asked, bf16_gpu, cpu, gpu):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: bf16_gpu)
    args = argparse.Namespace(amp=asked)
    assert amp_dtype(args, CPU) == cpu and amp_dtype(args, GPU) == gpu
    assert amp_warning(args, CPU) is None
    warned = amp_warning(args, GPU)
    assert (warned is not None) == (asked == "auto" and not bf16_gpu)
    if warned:
        assert warned.startswith("warning: --amp: cuda:0 has no bfloat16") and "\n" not in warned


def test_deterministic_turns_off_benchmarking_and_tf32():
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        choose_kernels(True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        # an op without a deterministic kernel is named in a warning, not a traceback
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        choose_kernels(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = flags[:4]
        torch.use_deterministic_algorithms(flags[4], warn_only=flags[5])


def test_device_cpu_never_starts_cuda_even_where_a_gpu_is_present(tmp_path, monkeypatch):
    """A run, its checkpoint (the RNG states), the attenuation probe and a resume, on a
    machine that says it has a GPU: CUDA is never initialised."""
    started = []

    def start_cuda(*_, **__):
        started.append(True)
        raise AssertionError("CUDA initialised under --device cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda.random, "device_count", lambda: 1)  # bound there by name
    monkeypatch.setattr(torch.cuda, "_lazy_init", start_cuda)
    monkeypatch.setattr(torch._C, "_cuda_init", start_cuda)  # what every path to CUDA calls
    data, save = write_cifar(str(tmp_path / "data"), n_train=64, n_test=32), str(tmp_path / "r")
    args = ["--data_path", data, "--save_path", save, "--epochs", "2", "--batch_size", "32",
            "--workers", "0", "--device", "cpu", "--manualSeed", "1", "--schedule", "1",
            "--gammas", "1", "--epoch_apply_cs", "1"]
    run_in_process(notebook_cifar, *args, "--stop_after", "1")
    run_in_process(notebook_cifar, *args, "--resume", "auto")
    assert not started and not torch.cuda.is_initialized()


def test_device_cuda_n_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert distributed.init_from_env("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    assert distributed.init_from_env("cpu") == CPU and len(current) == 1


class _Reads:
    """Counts the reads of a tensor's value to the host (each one waits for a GPU)."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, read):
        def counted(t, *args):
            self.count += 1
            return read(t, *args)
        return counted


@pytest.mark.parametrize("policy,per_batch", [("stop", 0), ("skip", 1)])
def test_an_epoch_reads_the_device_every_print_freq_batches_not_every_batch(monkeypatch,
                                                                             policy, per_batch):
    """Reads per epoch of 4 and of 12 batches: the same under ``stop`` (the loss is checked
    and the stop polled with the progress line), one more per batch under ``skip`` (its
    decision precedes the step)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    reads = _Reads(monkeypatch)

    def epoch_reads(batches: int) -> int:
        before = reads.count
        out = engine.train_one_epoch(model, [batch] * batches, optimizer, CPU, 0,
                                     print_freq=100, nan_policy=policy,
                                     should_stop=lambda: False)
        assert out["batches"] == batches and out["skipped"] == 0
        return reads.count - before
    assert epoch_reads(12) - epoch_reads(4) == 8 * per_batch


def test_a_nan_is_noted_on_the_device_and_raised_at_the_next_poll():
    """The first non-finite batch is named, though the run only learns of it at the poll."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    good = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    bad = (torch.full((2, 3, 8, 8), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(engine.NonFiniteLoss, match="at epoch 4, batch 2$"):
        engine.train_one_epoch(model, [good, good, bad, good, good], optimizer, CPU, 4,
                               print_freq=3, should_stop=lambda: False)
    assert F.cross_entropy(model(good[0]), good[1]).isnan()  # it trained on until the poll
