"""CPU latency of soft-pruned (dense) vs compacted networks: does the FLOPs cut buy real speed?

    python -m bench.compact_latency [--quick]

ResNet-56 at the paper's 50% (CS 10% + GM 40%: ⌊0.1F⌋ + ⌊0.4F⌋ filters pruned per conv, 7 of
16) on 32×32, and ResNet-50 at 40% (⌊0.4F⌋) on 224×224, every prunable conv pruned. BN
statistics are random, so the pruned channels' constants, and the corrections that carry them,
are present as in a trained network. Three networks per case, timed interleaved, medians:

* ``dense``: the soft-pruned network;
* ``exact``: the compact network (``compact_model``), same outputs;
* ``widths``: the same kept filters with no constant carried (``compact_model(exact=False)``):
  what a pruner that drops the constants builds — inexact, and the latency floor for these
  widths. ``exact/widths`` is what carrying the constants costs.

in three runtimes, one thread each: eager PyTorch in NCHW and in channels_last (``nhwc``: model
and input), and ONNX Runtime (the ``export_onnx`` file; 1 intra-op thread, no spinning).
Times are CPU time of this process (``time.process_time``): with one thread that is the
latency on an idle core, and neighbours on a shared machine do not inflate it.

Columns: ``speedup`` = dense ÷ exact; ``flops`` = compact ÷ dense FLOPs (MACs);
``speedup_vs_flops`` = speedup ÷ (1 / flops ratio). ``lanes`` (header): the speedup predicted
when every conv's input and output widths are rounded up to the SIMD width (8 floats with AVX2,
16 with AVX-512), which is how oneDNN's and ONNX Runtime's blocked kernels spend time: a width
of 9 costs what 16 does.

Summary lines: ``corrections_overhead`` = the worst exact ÷ widths over eager NCHW and nhwc at
batch 1 and 64 and ONNX Runtime at batch 64, both networks (target ≤ 1.10);
``slowest_compact_resnet56`` = the smallest dense ÷ exact of ResNet-56 over all rows (target
≥ 1); ``rounded_speedup_vs_flops``: ResNet-56 with the kept filters of every pruned layer
rounded up to a multiple of N (``utils.method.schedule.round_selected``, ``--round_to N``),
N = 8 and 16, at batch 64: the better row (target ≥ 0.8).

``--attenuate bn``: the pruned channels' BN γ and β are 0 as well, as the ``--attenuate bn``
variant leaves them; the exact network is then the widths-only one (the bench checks it), so
exact ÷ widths measures the noise between identical networks.
"""
import argparse
import contextlib
import copy
import io
import math
import os
import tempfile
import time
import warnings

import torch
from torch import nn

from bench.common import interleaved, randomize_bn
from models import build_model
from utils.compaction import (compact_cost, compact_model, export_onnx, find_prunable_convs,
                              network_cost)
from utils.compaction.layers import FoldedConv
from utils.method.schedule import round_selected


def soft_pruned(arch: str, num_classes: int, pruned_count, seed: int = 0,
                attenuate: str = "weights") -> tuple[nn.Module, dict]:
    """A randomly initialised network with ``pruned_count(F)`` random filters per conv zeroed
    (with ``attenuate="bn"`` their BN γ and β too, as ``--attenuate bn`` leaves them)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch, num_classes)
    randomize_bn(model, gen)
    pruned = {}
    with torch.no_grad():
        for c in find_prunable_convs(model):
            idx = torch.randperm(c.filters, generator=gen)[:pruned_count(c.filters)]
            c.conv.weight[idx] = 0
            if attenuate == "bn":
                c.bn.weight[idx] = 0
                c.bn.bias[idx] = 0
            pruned[c.name] = idx
    return model.eval(), pruned


@torch.no_grad()
def lane_macs(model: nn.Module, input_shape, lanes: int) -> int:
    """Conv MACs with input and output channels rounded up to a multiple of ``lanes``."""
    total, handles = [0], []

    def hook(module, inp, out):
        conv = module.conv if isinstance(module, FoldedConv) else module
        up = lambda c: math.ceil(c / lanes) * lanes  # noqa: E731
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total[0] += out.shape[2] * out.shape[3] * up(conv.out_channels) * up(conv.in_channels) * k

    for m in model.modules():  # a FoldedConv runs its conv's weights, not the module
        if isinstance(m, (nn.Conv2d, FoldedConv)):
            handles.append(m.register_forward_hook(hook))
    try:
        model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def paper_count(f: int) -> int:
    return f // 10 + 4 * f // 10


# name, arch, classes, input size, pruned filters of a conv with F, {batch: (repeats, warm-up)}
CASES = [
    ("resnet56 50%", "resnet56", 10, 32, paper_count, {1: (100, 10), 64: (10, 2)}),
    ("resnet50 40%", "imagenet_resnet50", 1000, 224, lambda f: 4 * f // 10,
     {1: (15, 2), 64: (3, 1)}),
]
RUNTIMES = ("nchw", "nhwc", "onnxruntime")


def export_quietly(model: nn.Module, shape, path: str) -> str:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecations
        export_onnx(model, path, shape)
    return path


def ort_session(path: str, threads: int = 1):
    """The ONNX file at ``path`` loaded in ONNX Runtime with ``threads`` intra-op threads (0:
    its default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _onnx_runner(model: nn.Module, shape, folder: str, name: str):
    session = ort_session(export_quietly(model, shape, os.path.join(folder, f"{name}.onnx")))
    return lambda x: session.run(None, {"input": x})


def runners(nets: dict, runtime: str, shape, folder: str) -> tuple[dict, callable]:
    """{name: fn(x)} for ``runtime`` and the function that makes its input from a tensor."""
    if runtime == "onnxruntime":
        fns = {k: _onnx_runner(m, shape, folder, f"{k}_{id(m)}") for k, m in nets.items()}
        return fns, lambda x: x.numpy()
    if runtime == "nhwc":
        cl = torch.channels_last
        nets = {k: copy.deepcopy(m).to(memory_format=cl) for k, m in nets.items()}
        return nets, lambda x: x.contiguous(memory_format=cl)
    return dict(nets), lambda x: x


def time_row(fns: dict, make_input, batch: int, size: int, reps: int, warmup: int,
             clock=time.process_time) -> dict:
    x = make_input(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        return interleaved({k: (lambda f=f: f(x)) for k, f in fns.items()}, reps,
                           torch.device("cpu"), warmup, clock=clock)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats each: a smoke test")
    p.add_argument("--attenuate", choices=("weights", "bn"), default="weights",
                   help="bn: the pruned channels' BN γ and β are 0 too (--attenuate bn), "
                        "so they emit exactly 0 and the exact network needs no constants")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    cap = torch.backends.cpu.get_cpu_capability()
    lanes = 16 if cap.startswith("AVX512") else 8
    import onnxruntime
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU {cap} "
          f"({lanes} float lanes), 1 thread; FLOPs = multiply-accumulates; times are medians "
          "of CPU time (ms)")
    overhead, slowest, rounded = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, arch, classes, size, count, plan in CASES:
            dense, pruned = soft_pruned(arch, classes, count, attenuate=args.attenuate)
            shape = (1, 3, size, size)
            nets = {"dense": dense, "exact": compact_model(dense, pruned, input_shape=shape),
                    "widths": compact_model(dense, pruned, exact=False, input_shape=shape)}
            flops_d, params_d = network_cost(dense, shape)
            flops_c, params_c = compact_cost(nets["exact"], shape)
            ratio = flops_c / flops_d
            lane_speedup = lane_macs(dense, shape, lanes) / lane_macs(nets["exact"], shape, lanes)
            print(f"\n{name}: FLOPs {flops_d / 1e6:.1f}M -> {flops_c / 1e6:.1f}M "
                  f"(-{1 - ratio:.1%}), params {params_d / 1e6:.3f}M -> {params_c / 1e6:.3f}M "
                  f"(-{1 - params_c / params_d:.1%}); predicted speedup: FLOPs {1 / ratio:.2f}x, "
                  f"lanes {lane_speedup:.2f}x")
            if args.attenuate == "bn":
                same = buffers(nets["exact"]) == buffers(nets["widths"])
                print(f"--attenuate bn: the exact network holds the widths network's tensors "
                      f"and no constant of its own: {same}")
            print(f"{'model':<13} {'runtime':<11} {'batch':>5} {'reps':>4} {'dense':>9} "
                  f"{'exact':>9} {'widths':>9} {'speedup':>7} {'flops':>6}  speedup_vs_flops  "
                  "exact/widths")
            for runtime in RUNTIMES:
                fns, make_input = runners(nets, runtime, shape, folder)
                for batch, (reps, warmup) in plan.items():
                    reps, warmup = (2, 1) if args.quick else (reps, warmup)
                    t = time_row(fns, make_input, batch, size, reps, warmup)
                    speedup, cost = t["dense"] / t["exact"], t["exact"] / t["widths"]
                    print(f"{name:<13} {runtime:<11} {batch:>5} {reps:>4} "
                          f"{t['dense'] * 1e3:>9.2f} {t['exact'] * 1e3:>9.2f} "
                          f"{t['widths'] * 1e3:>9.2f} {speedup:>6.2f}x {ratio:>6.3f}  "
                          f"speedup_vs_flops: {speedup * ratio:.2f}  {cost:>10.3f}", flush=True)
                    if runtime != "onnxruntime" or batch > 1:
                        overhead.append((cost, f"{name} {runtime} batch {batch}"))
                    if arch == "resnet56":
                        slowest.append((speedup, f"{runtime} batch {batch}"))
            del fns
            if arch == "resnet56":
                rounded = rounded_rows(name, arch, classes, size, plan[64], args.quick, folder,
                                       args.attenuate)
    cost, where = max(overhead)
    print(f"\ncorrections_overhead: {cost:.3f}  (worst exact/widths: {where}; target <= 1.10)")
    speedup, where = min(slowest)
    print(f"slowest_compact_resnet56: {speedup:.2f}x  (dense/exact at {where}; target >= 1)")
    best, where = max(rounded)
    print(f"rounded_speedup_vs_flops: {best:.2f}  ({where}; target >= 0.8)")


def buffers(model: nn.Module) -> list[tuple[str, tuple]]:
    """Names and shapes of everything a network holds (its constants are buffers)."""
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def rounded_rows(name, arch, classes, size, plan, quick, folder, attenuate) -> list:
    """ResNet-56 with every pruned layer keeping a multiple of N filters (--round_to N)."""
    reps, warmup = (2, 1) if quick else plan
    shape = (1, 3, size, size)
    nets, ratios = {}, {}
    for n in (8, 16):
        dense, pruned = soft_pruned(arch, classes, lambda f: round_selected(f, paper_count(f), n),
                                    attenuate=attenuate)
        nets[f"round_to {n}"] = compact_model(dense, pruned, input_shape=shape)
        ratios[f"round_to {n}"] = compact_cost(nets[f"round_to {n}"], shape)[0]
    flops_d = network_cost(dense, shape)[0]
    nets["dense"] = dense
    print(f"\n{name}, kept filters rounded up to a multiple of N (batch 64; speedup = dense / "
          "rounded compact; compare with the rows above)")
    print(f"{'model':<13} {'runtime':<11} {'round_to':>8} {'dense':>9} {'rounded':>9} "
          f"{'speedup':>7} {'flops':>6}  speedup_vs_flops")
    out = []
    for runtime in RUNTIMES:
        fns, make_input = runners(nets, runtime, shape, folder)
        t = time_row(fns, make_input, 64, size, reps, warmup)
        for n in (8, 16):
            k = f"round_to {n}"
            speedup, ratio = t["dense"] / t[k], ratios[k] / flops_d
            print(f"{name:<13} {runtime:<11} {n:>8} {t['dense'] * 1e3:>9.2f} "
                  f"{t[k] * 1e3:>9.2f} {speedup:>6.2f}x {ratio:>6.3f}  speedup_vs_flops: "
                  f"{speedup * ratio:.2f}", flush=True)
            out.append((speedup * ratio, f"{runtime}, round_to {n}"))
    return out


if __name__ == "__main__":
    main()
