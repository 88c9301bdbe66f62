"""FSDP training-step cost: the gradient scaling of the selected filters
(docs/soft-pruning-and-batchnorm.md), and a network late in an FSDP run, whose selected
filters have been attenuated towards zero.

    python -m bench.train_step [--steps 10] [--device cpu] [--late_checkpoint PATH]

``step_overhead: R`` (target ≤ 1.03): forward, backward, gradient scaling and the SGD step ÷
the same step without the mask. ResNet-56, 32×32, batch 128, mask mid-schedule (epoch 20 of
200: θ ≈ 0.38, 0 < ζ < 1, so every layer has gradients to scale).

The late rows take the checkpoint of a real run after 26 of its 30 epochs, made with
``--keep_subnormals`` (IEEE floats, the authors' arithmetic: ``python -m
bench.soft_pruning_study --budgets 30`` keeps it as ``checkpoint-e26.pt`` of its IEEE twin), and
time its FSDP step (its own mask, momenta and learning rate; a batch of the run's input shape)
in three ways, interleaved, one thread: with IEEE arithmetic (before the fix), with subnormals
flushed to zero (the default since: ``utils.subnormals``), and a plain SGD step of the same
network with every subnormal value of its state set to 0. It prints the processor and
``late_subnormal_share: S`` (subnormal values among the parameters, gradients, optimizer state
and BN buffers after the timed steps; target 0) and ``late_step_overhead: R`` (÷ the plain
step; target ≤ 1.05), each before and after the fix. Where a CPU computes subnormals at full
speed, R is ≈ 1 both ways and only S shows the fix.
"""
import argparse
import copy
import os
import platform

import torch
import torch.nn.functional as F

from bench.common import interleaved
from models import build_model
from utils import subnormals
from utils.files import safe_load
from utils.compaction import find_prunable_convs
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule
from utils.report import config
from utils.run.cli import pruning_from_args
from utils.run.engine import lr_at

LATE_CHECKPOINT = "snapshots/bn_study/e30/resnet20-fsdp-ieee-s1/checkpoint-e26.pt"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--late_checkpoint", default=LATE_CHECKPOINT,
                    help="a run's checkpoint late in FSDP's schedule, made with --keep_subnormals")
    return ap


def main():
    args = parser().parse_args()
    device = torch.device(args.device)
    mid_schedule(device, args.steps)
    if not os.path.isfile(args.late_checkpoint):
        print(f"no late checkpoint at {args.late_checkpoint}: make it with `python -m "
              "bench.soft_pruning_study --budgets 30`, or pass --late_checkpoint")
        return
    late_in_the_run(args.late_checkpoint, device, args.steps)


def mid_schedule(device, steps: int) -> None:
    torch.manual_seed(0)
    model = build_model("resnet56", 10).to(device).train()
    convs = find_prunable_convs(model)
    gen = torch.Generator().manual_seed(0)
    mask = Mask(convs, METHODS["fsdp"], asymptotic_schedule(0.1, 0.4, 200),
                lambda m, e, i: {c.name: torch.rand(c.filters, generator=gen) for c in convs})
    mask.update(model, 20)
    assert 0 < mask.zeta < 1 and mask.total_selected() > 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.arange(128, device=device) % 10

    def step(scale):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if scale:
            mask.scale_gradients()
        opt.step()

    t = interleaved({"plain": lambda: step(False), "fsdp": lambda: step(True)}, steps, device)
    print(f"device {device}, threads {torch.get_num_threads()}, ResNet-56 batch 128, "
          f"{mask.total_selected()}/{mask.total_filters()} filters selected, ζ = {mask.zeta:.4f}")
    print(f"plain step {1000 * t['plain']:.1f} ms  fsdp step {1000 * t['fsdp']:.1f} ms")
    print(f"step_overhead: {t['fsdp'] / t['plain']:.3f}")


class LateRun:
    """A run's model, optimizer and mask as its checkpoint left them; ``step`` is one
    training step of the run (its mask scales the selected filters' gradients)."""

    def __init__(self, ckpt: dict, device, flush_state: bool = False, mask: bool = True):
        run = argparse.Namespace(**{**config.added_defaults(), **ckpt["args"]})  # flags added since the run
        self.model = build_model(run.arch, ckpt["num_classes"], ckpt["in_channels"]).to(device)
        self.model.load_state_dict(ckpt["model"])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=run.learning_rate,
                                   momentum=run.momentum, weight_decay=run.decay,
                                   nesterov=bool(run.nesterov))
        self.opt.load_state_dict(ckpt["optimizer"])
        for group in self.opt.param_groups:
            group["lr"] = lr_at(int(ckpt["epoch"]), run.learning_rate, run.schedule, run.gammas)
        self.mask = None
        if mask:
            pruning = pruning_from_args(run)
            self.mask = Mask(find_prunable_convs(self.model), pruning.method,
                             pruning.schedule(), data_pass=lambda *a: {})
            self.mask.load_state_dict(ckpt["mask"])
        if flush_state:
            with torch.no_grad():
                for t in subnormals.training_state(self.model, self.opt):
                    if t is not None and t.is_floating_point():
                        t.masked_fill_(t.abs() < subnormals.TINY[t.dtype], 0)
        self.model.train()

    def step(self, x, y) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        if self.mask is not None:
            self.mask.scale_gradients()
        self.opt.step()

    def subnormal_share(self) -> float:
        found, total = subnormals.count(subnormals.training_state(self.model, self.opt))
        return found / total


def late_in_the_run(path: str, device, steps: int) -> None:
    torch.set_num_threads(1)  # the CPU's flush mode is per thread: one thread carries it all
    ckpt = safe_load(path)
    if not ckpt["args"].get("keep_subnormals", True):
        raise SystemExit(f"{path} was made with subnormals flushed: give the checkpoint of a "
                         "run made with --keep_subnormals (IEEE floats)")
    ieee, fixed = LateRun(ckpt, device), LateRun(ckpt, device)
    plain = LateRun(ckpt, device, flush_state=True, mask=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((128, *ckpt["input_shape"]), generator=gen).to(device)
    y = (torch.arange(128) % ckpt["num_classes"]).to(device)

    def flushed_step():
        with subnormals.flushed():
            fixed.step(x, y)

    before = ieee.subnormal_share()
    t = interleaved({"plain": lambda: plain.step(x, y), "ieee": lambda: ieee.step(x, y),
                     "flushed": flushed_step}, steps, device)
    cpu = _processor()
    print(f"\nprocessor: {cpu}; torch {torch.__version__}, 1 thread, device {device}")
    print(f"late FSDP state: {ckpt['args']['arch']} after {ckpt['epoch']} of "
          f"{ckpt['args']['epochs']} epochs, ζ = {ckpt['mask']['zeta']:.3g} ({path}); subnormal "
          f"share of its state as saved: {before:.4f}")
    print(f"plain step {1000 * t['plain']:.1f} ms  IEEE step {1000 * t['ieee']:.1f} ms  "
          f"flushed step {1000 * t['flushed']:.1f} ms")
    print(f"late_subnormal_share (before the fix, --keep_subnormals): {ieee.subnormal_share():.4f}")
    print(f"late_subnormal_share: {fixed.subnormal_share():.4f}")
    print(f"late_step_overhead (before the fix, --keep_subnormals): "
          f"{t['ieee'] / t['plain']:.3f}")
    print(f"late_step_overhead: {t['flushed'] / t['plain']:.3f}")


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
