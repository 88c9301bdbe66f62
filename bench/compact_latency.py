"""CPU latency of soft-pruned (dense) vs compacted networks: does the FLOPs cut buy real speed?

    python -m bench.compact_latency [--quick]

ResNet-56 at the paper's 50% (CS 10% + GM 40%: ⌊0.1F⌋ + ⌊0.4F⌋ filters pruned per conv, 7 of
16) on 32×32, and ResNet-50 at 40% (⌊0.4F⌋) on 224×224; every prunable conv is pruned, BN
statistics are random so that the pruned channels' constants (and the corrections that carry
them) are present as in a trained network. Dense and compact runs are interleaved and the
median is reported, because CPU timings here drift by ±20-30% over a minute.
``speedup_vs_flops`` = measured speedup ÷ (dense FLOPs / compact FLOPs).
"""
import argparse
import statistics
import time

import torch
from torch import nn

from models import build_model
from utils.compact import compact_model, count_flops_params
from utils.graph import find_prunable_convs


def soft_pruned(arch: str, num_classes: int, pruned_count, seed: int = 0) -> tuple[nn.Module, dict]:
    """A randomly initialised network with ``pruned_count(F)`` random filters per conv zeroed."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch, num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.5
            m.running_mean = torch.randn(n, generator=gen) * 0.5
            m.running_var = torch.rand(n, generator=gen) + 0.5
    pruned = {}
    with torch.no_grad():
        for c in find_prunable_convs(model):
            idx = torch.randperm(c.filters, generator=gen)[:pruned_count(c.filters)]
            c.conv.weight[idx] = 0
            pruned[c.name] = idx
    return model.eval(), pruned


@torch.inference_mode()
def interleaved_medians(dense, compact, x, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds per forward of each model; the order alternates every repeat so that a
    drift in CPU speed hits both equally."""
    for _ in range(warmup):
        dense(x), compact(x)
    times = {0: [], 1: []}
    models = (dense, compact)
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            models[i](x)
            times[i].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


# name, arch, classes, input size, pruned filters for a conv of F filters, repeats per batch
CASES = [
    ("resnet56 50%", "resnet56", 10, 32, lambda f: f // 10 + 4 * f // 10, {1: 200, 64: 20}),
    ("resnet50 40%", "imagenet_resnet50", 1000, 224, lambda f: 4 * f // 10, {1: 20, 64: 3}),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available, "
          "FLOPs = multiply-accumulates")
    header = (f"{'model':<13} {'batch':>5} {'thr':>3} {'reps':>4} {'dense ms':>9} "
              f"{'compact ms':>10} {'speedup':>7} {'flops ratio':>11} {'speedup_vs_flops':>16}")
    for name, arch, classes, size, count, repeats in CASES:
        dense, pruned = soft_pruned(arch, classes, count)
        compact = compact_model(dense, pruned)
        flops_d, params_d = count_flops_params(dense, (1, 3, size, size))
        flops_c, params_c = count_flops_params(compact, (1, 3, size, size))
        ratio = flops_c / flops_d
        print(f"\n{name}: FLOPs {flops_d / 1e6:.1f}M -> {flops_c / 1e6:.1f}M "
              f"(-{1 - ratio:.1%}), params {params_d / 1e6:.3f}M -> {params_c / 1e6:.3f}M "
              f"(-{1 - params_c / params_d:.1%}); FLOPs-predicted speedup {1 / ratio:.2f}x")
        print(header)
        for batch, reps in repeats.items():
            reps = min(reps, 3) if args.quick else reps
            x = torch.randn(batch, 3, size, size)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t_d, t_c = interleaved_medians(dense, compact, x, reps)
                speedup = t_d / t_c
                print(f"{name:<13} {batch:>5} {threads:>3} {reps:>4} {t_d * 1e3:>9.2f} "
                      f"{t_c * 1e3:>10.2f} {speedup:>6.2f}x {ratio:>11.3f} "
                      f"{'speedup_vs_flops: ' + format(speedup * ratio, '.2f'):>16}")


if __name__ == "__main__":
    main()
