"""CPU latency of compact networks beyond the ResNets: does compaction pay on every family?

    python -m bench.compact_zoo [--quick] [--only timm] [--coupling none residual]
                                [--round_to 1 16] [--attenuate weights bn] [--ort_threads 1 0]

VGG-16-BN (CIFAR, 32×32), torchvision's MobileNetV2, EfficientNet-B0, RegNetX-400MF,
ResNeXt-50 and DenseNet-121, and timm's EfficientNet-B0, MobileNetV3-L, CSPDarknet-53,
ResNeSt-14d and GhostNet (224×224); issue 32's hybrids: HGNetV2-B0, RepViT-M0.9, FastViT-T8
(their ops by rules), and MobileViT-XXS, LambdaResNet-26t (256×256) and TF EfficientNet-B0,
which keep parts whole (their attention, TF's dynamic padding); every prunable conv losing
⌊0.4F⌋ filters chosen by the
geometric-median criterion (FPGM-only at 40 %); BN statistics of random images and random
affine parameters (``bench.common.calibrate_bn``), so the constants are there as in a trained
network. For each: ``exact`` (max relative output difference, compact vs soft-pruned; beside
it the dense network's own float32 error against float64, its rounding scale), FLOPs
and parameters before and after, and the soft-pruned ``dense`` network against the
``compact`` one, timed interleaved (medians of CPU time, one thread) in eager PyTorch, NCHW
and channels_last (``nhwc``), and in ONNX Runtime (the ``export_onnx`` files, 1 intra-op
thread, as ``bench.compact_latency`` times it), at batch 1 and a larger batch.

``--coupling residual``: the convs whose outputs meet in one residual sum select the same
channels (``Pruner(coupling="residual")``: ranked by the group's combined GM score), so the
compact network's streams are narrow; each network is measured once per coupling asked for.
``--attenuate bn``: the pruned filters' BatchNorm γ and β are zero too (``--attenuate bn``, the
API's default), so the removed channels emit 0 and the compact network carries no constant.
``--ort_threads 0``: ONNX Runtime with its default intra-op threads too (timed in wall-clock
seconds, since CPU time sums the threads). Beside every ONNX Runtime row: the exported graphs'
Pad, Gather, Add and Mul nodes on the data path (``onnx_ops``), dense → compact.

Columns: ``speedup`` = dense ÷ compact; ``flops`` = compact ÷ dense MACs;
``speedup_vs_flops`` = speedup × flops (1 = as fast as the FLOPs promise). Summary lines, for
eager PyTorch (NCHW and nhwc) and, apart, for ONNX Runtime: ``slowest_compact_vs_dense`` = the
smallest speedup of any row (target ≥ 1.0: compaction never slows a network down);
``geomean_speedup_vs_flops`` over the larger-batch rows (target ≥ 0.7 in eager PyTorch; ONNX
Runtime's is reported, its target is the first line; coupled, ≥ 0.75); the same for the
networks with every pruned layer keeping a multiple of 16 filters (``--round_to 16``), beside
them.
"""
import argparse
import collections
import copy
import math
import os
import tempfile
import time
import warnings

import torch

from bench.common import calibrate_bn
from bench.compact_latency import export_quietly, ort_session, runners, time_row
from models import MODELS, build_model
from utils.compaction import (compact_cost, compact_model, find_prunable_convs, kept_line,
                              max_rel_error, network_cost)
from utils.method.criteria import criterion
from utils.method.schedule import count, round_selected
from utils.pruner import Pruner, PruningWarning

# name, arch, image side, {batch: (repeats, warm-up)}
CASES = [
    ("vgg16_bn cifar", "vgg16_bn", 32, {1: (60, 5), 64: (8, 1)}),
    ("mobilenet_v2", "imagenet_mobilenet_v2", 224, {1: (30, 3), 16: (6, 1)}),
    ("efficientnet_b0", "imagenet_efficientnet_b0", 224, {1: (30, 3), 16: (6, 1)}),
    ("regnet_x_400mf", "imagenet_regnet_x_400mf", 224, {1: (30, 3), 16: (6, 1)}),
    ("resnext50_32x4d", "imagenet_resnext50_32x4d", 224, {1: (8, 1), 8: (3, 1)}),
    ("densenet121", "imagenet_densenet121", 224, {1: (8, 1), 8: (3, 1)}),
    ("timm efficientnet_b0", "timm:efficientnet_b0", 224, {1: (30, 3), 16: (6, 1)}),
    ("timm mobilenetv3_large", "timm:mobilenetv3_large_100", 224, {1: (30, 3), 16: (6, 1)}),
    ("timm cspdarknet53", "timm:cspdarknet53", 224, {1: (8, 1), 8: (3, 1)}),
    ("timm resnest14d", "timm:resnest14d", 224, {1: (15, 2), 8: (4, 1)}),
    ("timm ghostnet_100", "timm:ghostnet_100", 224, {1: (30, 3), 16: (6, 1)}),
    ("timm hgnetv2_b0", "timm:hgnetv2_b0", 224, {1: (15, 2), 16: (4, 1)}),
    ("timm repvit_m0_9", "timm:repvit_m0_9", 224, {1: (15, 2), 16: (4, 1)}),
    ("timm fastvit_t8", "timm:fastvit_t8", 224, {1: (15, 2), 8: (4, 1)}),
    ("timm mobilevit_xxs kept", "timm:mobilevit_xxs", 256, {1: (15, 2), 8: (4, 1)}),
    ("timm lambda_resnet26t kept", "timm:lambda_resnet26t", 256, {1: (8, 1), 8: (3, 1)}),
    ("timm tf_efficientnet_b0 kept", "timm:tf_efficientnet_b0", 224, {1: (15, 2), 16: (4, 1)}),
]
EAGER = ("nchw", "nhwc")
RATE = 0.4


@torch.no_grad()
def soft_pruned_gm(arch: str, size: int, round_to: int = 1, seed: int = 0,
                   coupling: str = "none", attenuate: str = "weights"):
    """The network with ⌊0.4F⌋ filters per conv (a multiple of ``round_to`` kept) zeroed, those
    closest to their layer's geometric median: FPGM's own choice. ``coupling="residual"``:
    ⌊0.4W⌋ channels per coupled group of W, by the group's combined score, zeroed in every
    member (what the mask of a coupled run selects). ``attenuate="bn"``: their BatchNorm's γ
    and β zeroed too."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classes = 10 if arch in MODELS else 1000  # the CIFAR networks, or an ImageNet one
    model = calibrate_bn(build_model(arch, classes), (3, size, size), gen)
    convs = find_prunable_convs(model, input_shape=(3, size, size))
    if coupling == "residual":
        pruned = _coupled_gm(model, (3, size, size), round_to)
    else:
        pruned = {}
        for c in convs:
            n = round_selected(c.filters, count(c.filters, RATE), round_to)
            pruned[c.name] = criterion("gm").select(c.conv.weight, torch.arange(c.filters), n)
    for c in convs:
        if c.name in pruned:
            c.conv.weight[pruned[c.name]] = 0
            if attenuate == "bn":
                c.bn.weight[pruned[c.name]] = c.bn.bias[pruned[c.name]] = 0
    return model, pruned


def _coupled_gm(model, shape, round_to: int) -> dict:
    gm = criterion("gm")
    with warnings.catch_warnings():  # FPGM without an optimizer: the Pruner's usual warning
        warnings.simplefilter("ignore", PruningWarning)
        pruner = Pruner(model, "fpgm", {"gm": RATE}, 2, input_shape=shape,
                        coupling="residual")
    layers = pruner.layers
    pruner.remove()  # its hooks off the model, which is copied and exported next
    pruned = {}
    for layer in layers:
        n = round_selected(layer.filters, count(layer.filters, RATE), round_to)
        everyone = torch.arange(layer.filters)
        scores = layer.combined(everyone, lambda conv, f: gm.scores(conv.conv.weight, f))
        chosen = layer.take(torch.argsort(scores, stable=True), n)
        for member in layer.members:
            pruned[member.conv.name] = layer.part(member, chosen)
    return pruned


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats each: a smoke test")
    p.add_argument("--only", nargs="+", metavar="WORD",
                   help="only the networks whose name contains one of these words "
                        "(e.g. timm); the summary lines are over their rows")
    p.add_argument("--coupling", nargs="+", choices=("none", "residual"), default=["none"],
                   help="the selections measured: independent per conv (none), coupled per "
                        "residual stream (residual), or both")
    p.add_argument("--round_to", nargs="+", type=int, default=[1, 16], metavar="N",
                   help="every pruned layer keeps a multiple of N filters (1: as counted)")
    p.add_argument("--attenuate", nargs="+", choices=("weights", "bn"), default=["weights"],
                   help="bn: the pruned filters' BN γ and β zero too (no constants)")
    p.add_argument("--ort_threads", nargs="+", type=int, default=[1], metavar="N",
                   help="ONNX Runtime's intra-op threads per row (0: its default, all cores)")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    cases = [c for c in CASES if not args.only or any(w in c[0] for w in args.only)]
    torch.set_num_threads(1)
    import onnxruntime
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU "
          f"{torch.backends.cpu.get_cpu_capability()} ({os.cpu_count()} cores), PyTorch on 1 "
          f"thread; {RATE:.0%} of every prunable conv's filters (GM); FLOPs = "
          "multiply-accumulates; times are medians of CPU time (ms; wall time for ONNX Runtime "
          "on several threads)")
    variants = [Variant(c, r, a) for c in args.coupling for r in args.round_to
                for a in args.attenuate]
    rows = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            for v in variants:
                rows[v] += measure(case, v, args.quick, folder, args.ort_threads)
    print()
    for runtimes, where, target in ((EAGER, "", "; target >= 0.7"),
                                    (ORT_RUNTIMES, "_onnxruntime", "")):
        for v in variants:
            aim = "; target >= 0.75" if v.coupling == "residual" and not target else target
            summary(rows[v], runtimes, where + v.suffix("_coupled", "_bn", "_round_to_"), aim)


class Variant(collections.namedtuple("Variant", "coupling round_to attenuate")):
    def suffix(self, coupled: str, bn: str, rounded: str) -> str:
        return (coupled if self.coupling == "residual" else "") + \
            (bn if self.attenuate == "bn" else "") + \
            (f"{rounded}{self.round_to}" if self.round_to > 1 else "")


ORT_RUNTIMES = ("onnxruntime", "onnxruntime threads")


def summary(rows: list, runtimes: tuple, label: str, target: str) -> None:
    """The two summary lines over the rows of ``runtimes``."""
    rows = [r for r in rows if r[4] in runtimes]
    if not rows:
        return
    slowest = min(rows, key=lambda r: r[0])
    large = [r[1] for r in rows if r[2]]
    geomean = math.exp(sum(math.log(v) for v in large) / len(large))
    print(f"slowest_compact_vs_dense{label}: {slowest[0]:.2f}  ({slowest[3]}; target >= 1.0)")
    print(f"geomean_speedup_vs_flops{label}: {geomean:.2f}  (the larger-batch rows{target})")


@torch.no_grad()
def float32_rounding(dense, shape) -> float:
    """The dense network's own float32 error, max relative to itself in float64 on the inputs
    ``exact`` uses: compact vs dense differ by rounding when ``exact`` is of its order."""
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(dense).double()(x.double())
    return ((dense(x).double() - ref).abs().max() / ref.abs().max()).item()


def onnx_ops(path: str) -> collections.Counter:
    """The op types of the exported graph's data path: the nodes the input reaches (a constant
    map's own nodes ONNX Runtime folds into a constant when it loads the file)."""
    import onnx

    graph = onnx.load(path).graph
    reached, counts = {i.name for i in graph.input}, collections.Counter()
    for node in graph.node:  # topologically sorted, as ONNX requires
        if any(name in reached for name in node.input):
            reached.update(node.output)
            counts[node.op_type] += 1
    return counts


JOIN_OPS = ("Pad", "Gather", "Add", "Mul")


def ort_runners(paths: dict, threads: int) -> tuple[dict, str]:
    """{name: fn(x)} on ONNX Runtime with ``threads`` intra-op threads (0: its default) for the
    exported ``paths``, and their join ops (dense → compact)."""
    fns = {k: (lambda x, s=ort_session(p, threads): s.run(None, {"input": x}))
           for k, p in paths.items()}
    counts = {k: onnx_ops(p) for k, p in paths.items()}
    ops = ", ".join(f"{op} {counts['dense'][op]}→{counts['compact'][op]}" for op in JOIN_OPS)
    return fns, ops


def measure(case, variant: "Variant", quick: bool, folder: str,
            ort_threads=(1,)) -> list:
    """Time one network and print its rows: [(speedup, speedup_vs_flops, larger batch, where,
    runtime)]."""
    name, arch, size, plan = case
    round_to = variant.round_to
    dense, pruned = soft_pruned_gm(arch, size, round_to, coupling=variant.coupling,
                                   attenuate=variant.attenuate)
    shape = (3, size, size)
    compact = compact_model(dense, pruned, input_shape=shape)
    flops_d, params_d = network_cost(dense, shape)
    flops_c, params_c = compact_cost(compact, shape)
    ratio = flops_c / flops_d
    label = name + variant.suffix(" coupled", " bn", " r")
    kept = f"; {kept_line(compact.kept_whole)}" if compact.kept_whole else ""
    print(f"\n{label}: exact {max_rel_error(dense, compact, shape):.1e} (dense in float32 vs "
          f"float64: {float32_rounding(dense, shape):.1e}), FLOPs "
          f"{flops_d / 1e6:.1f}M -> {flops_c / 1e6:.1f}M (-{1 - ratio:.1%}), params "
          f"{params_d / 1e6:.2f}M -> {params_c / 1e6:.2f}M (-{1 - params_c / params_d:.1%})"
          f"{kept}")
    print(f"{'model':<26} {'runtime':<11} {'batch':>5} {'reps':>4} {'dense':>10} {'compact':>10} "
          f"{'speedup':>7} {'flops':>6}  speedup_vs_flops")
    out = []
    largest = max(plan)
    nets = {"dense": dense, "compact": compact}
    paths = {k: export_quietly(m, (1,) + shape, os.path.join(folder, f"{k}_{id(m)}.onnx"))
             for k, m in nets.items()}
    settings = [(r, 1) for r in EAGER] + \
        [("onnxruntime" if n == 1 else "onnxruntime threads", n) for n in ort_threads]
    for runtime, threads in settings:
        ops, clock = "", time.process_time
        if runtime in EAGER:
            fns, make_input = runners(nets, runtime, (1,) + shape, folder)
        else:
            fns, ops = ort_runners(paths, threads)
            make_input = lambda x: x.numpy()  # noqa: E731
            if threads != 1:  # CPU time would sum the threads
                clock = time.perf_counter
        for batch, (reps, warmup) in plan.items():
            if round_to > 1 and batch != largest:
                continue  # rounded widths: the larger batch only
            reps, warmup = (2, 1) if quick else (reps, warmup)
            t = time_row(fns, make_input, batch, size, reps, warmup, clock)
            speedup = t["dense"] / t["compact"]
            shown = runtime if threads == 1 else f"ort {threads or 'all'} thr"
            print(f"{label:<26} {shown:<11} {batch:>5} {reps:>4} {t['dense'] * 1e3:>10.2f} "
                  f"{t['compact'] * 1e3:>10.2f} {speedup:>6.2f}x {ratio:>6.3f}  "
                  f"speedup_vs_flops: {speedup * ratio:.2f}" + (f"  ({ops})" if ops else ""),
                  flush=True)
            out.append((speedup, speedup * ratio, batch == largest,
                        f"{label} {shown} batch {batch}", runtime))
    return out


if __name__ == "__main__":
    main()
