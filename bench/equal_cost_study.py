"""FSDP against FPGM at equal cost over three seeds: the study behind docs/methods.md,
'FSDP against FPGM at equal cost'.

    python -m bench.equal_cost_study [--fashion DIR] [--out snapshots/bn_study] [--jobs 2]

The data and the 30-epoch recipe are the soft-pruning study's (``bench.soft_pruning_study``:
ResNet-20 on a 10 000/2 000-image subset of Fashion-MNIST written as CIFAR-10 batches). Every
pruned run keeps the FLOPs that FPGM at 50 % keeps (``--target_flops 0.355``, the compact
count of ResNet-20 at 32×32 with half of every layer's filters pruned: 0.3546) with one rate
for every layer (``--allocation uniform``), so the three methods prune the very same widths
and differ only in which filters they select and what they do to them: FSDP with
``--attenuate bn``, FSDP as published (CS:GM 1:4, the paper's 0.1:0.4) and FPGM; plus the dense
run; seeds 1, 2 and 3. The dense runs are the soft-pruning study's own folders (the same
command line), so one that study finished is reused. The runs go ``--jobs`` at a time, one
thread each, ``nice``d; a finished run is skipped and a stopped one continued. It ends with the
table: mean ± std per method over the seeds, and the per-seed paired differences FSDP ``bn``
− FPGM and FSDP as published − FPGM (the same seed: the same initial weights and batch order)
with their 95 % intervals.
"""
import argparse
import json
import os
import statistics
import sys

from bench.soft_pruning_study import RATES, run_planned, scaled_recipe

TARGET = 0.355  # FPGM at 50 % on ResNet-20 at 32×32 keeps 0.3546 of the dense FLOPs
EPOCHS, SEEDS = 30, (1, 2, 3)
# method label → (flags, folder under --out); the dense runs are the soft-pruning study's
METHODS = {
    "fsdp-bn": ["--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4", "--attenuate", "bn"],
    "fsdp": ["--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4"],
    "fpgm": ["--method", "fpgm"],
    "dense": RATES["dense"],
}
PAIR = ("fsdp-bn", "fpgm")  # the paired difference the study is for (its runs go first)
OTHER_PAIRS = (("fsdp", "fpgm"),)  # reported too: FSDP as published against FPGM
# Student's t, two-sided 95 %, by degrees of freedom (beyond 30: the normal 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def folder(out: str, method: str, seed: int) -> str:
    if method == "dense":  # bench.soft_pruning_study's folder of the same command line
        return os.path.join(out, f"e{EPOCHS}", f"resnet20-dense-weights-s{seed}")
    return os.path.join(out, f"e{EPOCHS}-equal", f"resnet20-{method}-s{seed}")


def jobs(data: str, out: str, seeds=SEEDS) -> list[tuple[str, str, int, list[str]]]:
    """(method, seed, save folder, command line) of every run: the paired comparison's runs
    first, seed by seed (what the report is for, should the machine be needed before the rest
    end), then the others."""
    planned = []
    order = [m for m in METHODS if m in PAIR], [m for m in METHODS if m not in PAIR]
    for method, seed in [(m, s) for group in order for s in seeds for m in group]:
        save = folder(out, method, seed)
        budget = ([] if method == "dense"
                  else ["--target_flops", str(TARGET), "--allocation", "uniform"])
        cmd = ["nice", "-n", "10", sys.executable, "notebook_cifar.py", "--dataset", "cifar10",
               "--data_path", data, "--arch", "resnet20", *METHODS[method], *budget,
               *scaled_recipe(EPOCHS), "--manualSeed", str(seed), "--workers", "0",
               "--save_path", save]
        planned.append((method, seed, save, cmd))
    return planned


def final_top1(save: str) -> tuple[float, float, float] | None:
    """(final top-1, FLOPs kept, parameters kept) of a finished run, None before it finishes:
    the kept shares are the compact network's, as compact.py counts them."""
    try:
        with open(os.path.join(save, "summary.json")) as f:
            s = json.load(f)
        compact = s.get("compact") or {}
        return (float(s["final_top1"]), 1 - float(compact.get("flops_reduction", 0.0)),
                1 - float(compact.get("params_reduction", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished(planned) -> dict[str, dict[int, tuple]]:
    """{label: {seed: ``final_top1``}} of the runs of ``planned`` ((label, seed, save folder,
    command line)) that have finished."""
    results: dict[str, dict[int, tuple]] = {}
    for label, seed, save, _ in planned:
        got = final_top1(save)
        if got is not None:
            results.setdefault(label, {})[seed] = got
    return results


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(planned) -> str:
    """The markdown table: per method the final top-1 of each seed, mean ± std (sample std,
    n − 1) and the FLOPs kept; then the paired difference per seed, its mean and spread."""
    results = finished(planned)
    seeds = sorted({seed for _, seed, _, _ in planned})
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± std | FLOPs kept |", "|---" * (len(seeds) + 3) + "|"]
    for method in METHODS:
        got = results.get(method, {})
        cells = [f"{got[s][0]:.2f}" if s in got else "–" for s in seeds]
        kept = sorted({round(v[1], 4) for v in got.values()})
        lines.append(f"| {method} | " + " | ".join(cells) + f" | "
                     f"{mean_std([v[0] for v in got.values()])} | "
                     f"{', '.join(f'{k:.4f}' for k in kept) or '–'} |")
    for pair in (PAIR, *OTHER_PAIRS):
        lines += [""] + paired(results, seeds, pair)
    return "\n".join(lines)


def paired(results: dict, seeds: list, pair: tuple) -> list[str]:
    """The per-seed difference ``pair[0]`` − ``pair[1]`` (the same seed: the same initial
    weights and batch order), its mean, spread and 95 % interval."""
    a, b = (results.get(m, {}) for m in pair)
    both = [s for s in seeds if s in a and s in b]
    diffs = [a[s][0] - b[s][0] for s in both]
    lines = [f"paired difference {pair[0]} − {pair[1]} (points of top-1): "
             + ", ".join(f"seed {s} {d:+.2f}" for s, d in zip(both, diffs))]
    if len(diffs) >= 2:
        lines.append(f"mean {statistics.mean(diffs):+.2f}, std {statistics.stdev(diffs):.2f}, "
                     f"range [{min(diffs):+.2f}, {max(diffs):+.2f}] over {len(diffs)} seeds")
        low, high = interval95(diffs)
        lines.append(f"95 % interval of the mean difference (Student's t, {len(diffs) - 1} "
                     f"degrees of freedom): [{low:+.2f}, {high:+.2f}]")
    return lines


def interval95(values: list[float]) -> tuple[float, float]:
    """The two-sided 95 % confidence interval of the mean of ``values`` (two or more), by
    Student's t: what the seeds can tell apart from no difference at all."""
    n = len(values)
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(values) / n ** 0.5
    mean = statistics.mean(values)
    return mean - half, mean + half


def parser() -> argparse.ArgumentParser:
    return study_parser(__doc__, "snapshots/bn_study",
                        "the soft-pruning study's folder (its data and dense runs are shared)")


def study_parser(doc: str, out: str, out_help: str) -> argparse.ArgumentParser:
    """The flags of a study of seeded runs on the soft-pruning study's data (this one's, and
    ``bench.coupling_study``'s)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--fashion", default="/tmp/fm/usr/share/datasets/fashion-mnist",
                    help="folder with the full Fashion-MNIST IDX gz files (the study's data)")
    ap.add_argument("--out", default=out, help=out_help)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--dry_run", action="store_true", help="print the command lines only")
    ap.add_argument("--report_only", action="store_true",
                    help="only the table of the runs finished so far")
    return ap


def run_study(args, planned, report) -> int:
    """The study's runs (``planned``: (label, seed, save folder, command line)), ``--jobs`` at
    a time, then ``report(planned)`` printed; the worst exit status."""
    codes = run_planned(args, planned)
    if codes is None:
        return 0
    print(report(planned))
    return max(codes)


def main() -> int:
    args = parser().parse_args()
    out = os.path.abspath(args.out)
    return run_study(args, jobs(os.path.join(out, "data"), out, args.seeds), report)


if __name__ == "__main__":
    sys.exit(main())
