"""What a coupled selection costs in top-1: the study behind
docs/methods.md, 'What coupling costs in top-1'.

    python -m bench.coupling_study [--fashion DIR] [--out snapshots/coupling_study] [--jobs 2]

The budget study's data and recipe (``bench.budget_study``: ResNet-20 on a 10 000/2 000-image
subset of Fashion-MNIST written as CIFAR-10 batches, the CIFAR recipe scaled to 10 epochs), at
one FLOPs target with one rate for every layer (``--target_flops 0.4 --allocation uniform``:
a target the coupled ResNet-20's uniform plans meet within 1 %, docs/methods.md, 'Targets
under coupling'), FSDP with ``--attenuate bn`` (CS:GM 1:4) and FPGM, each with ``--coupling
none`` and ``residual``, seeds 1 and 2. The runs go ``--jobs`` at a time, one thread each,
``nice``d; a finished run is skipped and a stopped one continued. It ends with the table: top-1
of the fully pruned network per seed, the FLOPs and parameters it keeps, and per method the
paired difference coupled − uncoupled (the same seed: the same initial weights and batch order).

``--latency``: then every finished run's ``model_compact.pt`` in ONNX Runtime (1 intra-op
thread, batch 1 and 16, CPU time, interleaved with the dense ResNet-20 as
``bench.compact_latency`` times it): what each run's network gains in speed, and its exported
graph's Pad and Gather nodes on the data path (``bench.compact_zoo``'s count).
"""
import argparse
import os
import sys
import tempfile

from bench.equal_cost_study import (final_top1, finished, mean_std, paired, run_study,
                                    study_parser)
from bench.soft_pruning_study import scaled_recipe

TARGET, EPOCHS, SEEDS = 0.4, 10, (1, 2)
METHODS = {"fsdp-bn": ["--method", "fsdp", "--attenuate", "bn"], "fpgm": ["--method", "fpgm"]}
COUPLINGS = ("none", "residual")


def label(method: str, coupling: str) -> str:
    return method if coupling == "none" else f"{method}-coupled"


def jobs(data: str, out: str, seeds=SEEDS) -> list[tuple[str, int, str, list[str]]]:
    """(label, seed, save folder, command line) of every run, seed by seed, so the first
    seed's four runs finish first."""
    planned = []
    for seed in seeds:
        for method, flags in METHODS.items():
            for coupling in COUPLINGS:
                name = label(method, coupling)
                save = os.path.join(out, f"resnet20-{name}-s{seed}")
                planned.append((name, seed, save, [
                    "nice", "-n", "10", sys.executable, "notebook_cifar.py", "--dataset",
                    "cifar10", "--data_path", data, "--arch", "resnet20", *flags,
                    "--coupling", coupling, "--target_flops", str(TARGET),
                    "--allocation", "uniform", *scaled_recipe(EPOCHS),
                    "--manualSeed", str(seed), "--workers", "0", "--save_path", save]))
    return planned


def report(planned) -> str:
    """The markdown table (per run label: each seed's top-1, mean ± std, the compact network's
    FLOPs and parameters kept), then per method the paired difference coupled − uncoupled."""
    results = finished(planned)
    seeds = sorted({seed for _, seed, _, _ in planned})
    lines = ["| run | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± std | FLOPs kept | params kept |", "|---" * (len(seeds) + 4) + "|"]
    for name in dict.fromkeys(name for name, *_ in planned):
        got = results.get(name, {})
        cells = [f"{got[s][0]:.2f}" if s in got else "–" for s in seeds]
        shares = [", ".join(f"{k:.4f}" for k in sorted({round(v[i], 4) for v in got.values()}))
                  or "–" for i in (1, 2)]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {mean_std([v[0] for v in got.values()])} | {shares[0]} | "
                     f"{shares[1]} |")
    for method in METHODS:
        lines += [""] + paired(results, seeds, (label(method, "residual"), method))
    return "\n".join(lines)


LATENCY_BATCHES = {1: (300, 20), 16: (60, 5)}  # batch: (repeats, warm-up); ~1 and ~10 ms a call


def latency(planned, repeats=LATENCY_BATCHES) -> str:
    """Per finished run: its compact network against the dense ResNet-20 in ONNX Runtime on
    one thread (speedup = dense ÷ compact, CPU time), and the Pad/Gather nodes on its
    exported graph's data path."""
    import torch

    from bench.compact_latency import export_quietly, ort_session, time_row
    from bench.compact_zoo import onnx_ops
    from models import build_model
    from utils.compaction import load_compact

    torch.set_num_threads(1)
    lines = ["| run | seed | batch 1 speedup | batch 16 speedup | Pad, Gather |", "|---" * 5 + "|"]
    with tempfile.TemporaryDirectory() as folder:
        dense = ort_session(export_quietly(build_model("resnet20", 10).eval(), (1, 3, 32, 32),
                                           os.path.join(folder, "dense.onnx")))
        for name, seed, save, _ in planned:
            if final_top1(save) is None:
                continue
            path = export_quietly(load_compact(os.path.join(save, "model_compact.pt")),
                                  (1, 3, 32, 32), os.path.join(folder, f"{name}-{seed}.onnx"))
            compact, ops = ort_session(path), onnx_ops(path)
            fns = {"dense": lambda x: dense.run(None, {"input": x}),
                   "compact": lambda x, s=compact: s.run(None, {"input": x})}
            speedups = []
            for batch, (reps, warmup) in repeats.items():
                t = time_row(fns, lambda x: x.numpy(), batch, 32, reps, warmup)
                speedups.append(f"{t['dense'] / t['compact']:.2f}×")
            lines.append(f"| {name} | {seed} | {' | '.join(speedups)} | "
                         f"{ops['Pad']}, {ops['Gather']} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = study_parser(__doc__, "snapshots/coupling_study", "the study's folder")
    ap.set_defaults(seeds=list(SEEDS))
    ap.add_argument("--latency", action="store_true",
                    help="and each finished run's compact network timed in ONNX Runtime")
    return ap


def main() -> int:
    args = parser().parse_args()
    out = os.path.abspath(args.out)
    planned = jobs(os.path.join(out, "data"), out, args.seeds)
    code = run_study(args, planned, report)
    if args.latency and not args.dry_run:
        print("\n" + latency(planned))
    return code


if __name__ == "__main__":
    sys.exit(main())
