"""CPU latency of soft-pruned (dense) vs compacted networks: does the FLOPs cut buy real speed?

    python -m bench.compact_latency [--quick]

ResNet-56 at the paper's 50% (CS 10% + GM 40%: ⌊0.1F⌋ + ⌊0.4F⌋ filters pruned per conv, 7 of
16) on 32×32, and ResNet-50 at 40% (⌊0.4F⌋) on 224×224, every prunable conv pruned. BN
statistics are random, so the pruned channels' constants, and the corrections that carry them,
are present as in a trained network. Dense and compact runs are interleaved and the median is
reported (CPU timings here drift by ±20-30%). ResNet-50 at batch 64 takes ~13 s per dense
forward on one core, so it gets 3 repeats after 1 warm-up; the whole bench takes ~3 minutes
on 2 cores.

Columns: ``speedup`` = dense ÷ compact latency; ``flops`` = compact ÷ dense FLOPs (MACs);
``speedup_vs_flops`` = speedup ÷ (1 / flops ratio), target ≥ 0.8 at batch 64. ``lanes`` is a
diagnostic: the speedup predicted when every conv's input and output widths are rounded up to
the SIMD width (8 floats with AVX2, 16 with AVX-512), which is how oneDNN's blocked kernels
spend time; a width of 9 costs what 16 does. ``layout`` nhwc: both networks in
channels_last, which suits oneDNN better at ResNet-56's small widths (it skips reordering
activations around each conv); not run for ResNet-50, where scattering channels in that layout
is slower than what it saves.
"""
import argparse
import copy
import math

import torch
from torch import nn

from bench.common import interleaved, randomize_bn
from models import build_model
from utils.compact import compact_model, count_flops_params
from utils.graph import find_prunable_convs


def soft_pruned(arch: str, num_classes: int, pruned_count, seed: int = 0) -> tuple[nn.Module, dict]:
    """A randomly initialised network with ``pruned_count(F)`` random filters per conv zeroed."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch, num_classes)
    randomize_bn(model, gen)
    pruned = {}
    with torch.no_grad():
        for c in find_prunable_convs(model):
            idx = torch.randperm(c.filters, generator=gen)[:pruned_count(c.filters)]
            c.conv.weight[idx] = 0
            pruned[c.name] = idx
    return model.eval(), pruned


@torch.no_grad()
def lane_macs(model: nn.Module, input_shape, lanes: int) -> int:
    """Conv MACs with input and output channels rounded up to a multiple of ``lanes``."""
    total, handles = [0], []

    def hook(conv, inp, out):
        up = lambda c: math.ceil(c / lanes) * lanes  # noqa: E731
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total[0] += out.shape[2] * out.shape[3] * up(conv.out_channels) * up(conv.in_channels) * k

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(hook))
    try:
        model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0]


# name, arch, classes, input size, pruned filters of a conv with F, {batch: (repeats, warm-up)},
# memory layouts (both networks run in the same one; channels_last only where it is cheap)
CASES = [
    ("resnet56 50%", "resnet56", 10, 32, lambda f: f // 10 + 4 * f // 10,
     {1: (100, 10), 64: (10, 2)}, ("nchw", "nhwc")),
    ("resnet50 40%", "imagenet_resnet50", 1000, 224, lambda f: 4 * f // 10,
     {1: (20, 2), 64: (3, 1)}, ("nchw",)),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats each: a smoke test")
    args = parser.parse_args(argv)
    lanes = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    print(f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()} "
          f"({lanes} float lanes), {torch.get_num_threads()} threads available; "
          "FLOPs = multiply-accumulates; latencies are medians")
    cpu = torch.device("cpu")
    for name, arch, classes, size, count, plan, layouts in CASES:
        dense, pruned = soft_pruned(arch, classes, count)
        compact = compact_model(dense, pruned)
        nets = {"nchw": (dense, compact)}
        if "nhwc" in layouts:
            cl = torch.channels_last
            nets["nhwc"] = (copy.deepcopy(dense).to(memory_format=cl),
                            copy.deepcopy(compact).to(memory_format=cl))
        shape = (1, 3, size, size)
        flops_d, params_d = count_flops_params(dense, shape)
        flops_c, params_c = count_flops_params(compact, shape)
        ratio = flops_c / flops_d
        lane_speedup = lane_macs(dense, shape, lanes) / lane_macs(compact, shape, lanes)
        print(f"\n{name}: FLOPs {flops_d / 1e6:.1f}M -> {flops_c / 1e6:.1f}M "
              f"(-{1 - ratio:.1%}), params {params_d / 1e6:.3f}M -> {params_c / 1e6:.3f}M "
              f"(-{1 - params_c / params_d:.1%}); predicted speedup: FLOPs {1 / ratio:.2f}x, "
              f"lanes {lane_speedup:.2f}x")
        print(f"{'model':<13} {'layout':<6} {'batch':>5} {'thr':>3} {'reps':>4} {'dense ms':>9} "
              f"{'compact ms':>10} {'speedup':>7} {'flops':>6}  speedup_vs_flops  vs_lanes")
        for layout, (d, c) in nets.items():
            for batch, (reps, warmup) in plan.items():
                reps, warmup = (2, 1) if args.quick else (reps, warmup)
                x = torch.randn(batch, 3, size, size)
                if layout == "nhwc":
                    x = x.contiguous(memory_format=torch.channels_last)
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    with torch.inference_mode():
                        t = interleaved({"dense": lambda: d(x), "compact": lambda: c(x)},
                                        reps, cpu, warmup)
                    speedup = t["dense"] / t["compact"]
                    print(f"{name:<13} {layout:<6} {batch:>5} {threads:>3} {reps:>4} "
                          f"{t['dense'] * 1e3:>9.2f} {t['compact'] * 1e3:>10.2f} "
                          f"{speedup:>6.2f}x {ratio:>6.3f}  speedup_vs_flops: "
                          f"{speedup * ratio:.2f}  {speedup / lane_speedup:>8.2f}")


if __name__ == "__main__":
    main()
