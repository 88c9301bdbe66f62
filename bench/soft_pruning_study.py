"""The study of docs/soft-pruning-and-batchnorm.md: every method with and without
``--attenuate bn`` on real images the project never trained on.

    python -m bench.soft_pruning_study [--fashion DIR] [--out snapshots/bn_study] [--jobs 2]

Data: a class-balanced subset of the full Fashion-MNIST (Debian's ``dataset-fashion-mnist``:
``apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist*.deb /tmp/fm``),
1 000 training and 200 test images per class, padded to 32×32 and repeated into three channels,
written as CIFAR-10 python batches so that ``notebook_cifar.py --dataset cifar10`` reads it
through the CIFAR pipeline. ResNet-20, every method at 50 % total (fsdp CS 10 % + GM 40 %; fpgm
GM 50 %; sfp/asfp norm 50 %), the recipe scaled to 10 epochs (lr ×10 at epoch 1, ×0.2 at 30 %,
60 % and 80 % of the epochs), 2 seeds, plus the dense run; then FSDP and FPGM (both variants)
and the dense run at 30 epochs with one seed, and FSDP as published once more with IEEE
subnormal floats (``--keep_subnormals``: what flushing them changes; its checkpoint after 26
epochs, ``checkpoint-e26.pt``, is ``bench.train_step``'s late state). ``--budgets 30`` runs
only the latter. Each job is ``notebook_cifar.py``'s own command line (printed), one thread each,
``--jobs`` at a time; a finished run is skipped and an unfinished one continued (``--resume
auto``), so the study can be stopped and rerun. It ends with ``compare.py`` over each budget.
"""
import argparse
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from datasets.fashion import CLASSES, FILES, read_idx
from utils.files import safe_load
from utils.report.logger import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = {"fsdp": ["--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4"],
         "fpgm": ["--method", "fpgm", "--prune_rate_gm", "0.5"],
         "sfp": ["--method", "sfp", "--prune_rate_norm", "0.5"],
         "asfp": ["--method", "asfp", "--prune_rate_norm", "0.5"],
         "dense": ["--prune_rate_cs", "0", "--prune_rate_gm", "0"]}
PER_CLASS = {"train": 1000, "test": 200}


def write_cifar_format(fashion_dir: str, out: str) -> str:
    """The Fashion-MNIST subset as a CIFAR-10 folder under ``out`` (once); returns ``out``."""
    folder = os.path.join(out, "cifar-10-batches-py")
    if os.path.isfile(os.path.join(folder, "batches.meta")):
        return out
    os.makedirs(folder, exist_ok=True)
    for split, (images_file, labels_file) in FILES.items():
        x = read_idx(os.path.join(fashion_dir, images_file), ndim=3)
        y = read_idx(os.path.join(fashion_dir, labels_file), ndim=1)
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:PER_CLASS[split]]
                                       for c in range(len(CLASSES))]))
        img = np.pad(x[keep], ((0, 0), (2, 2), (2, 2)))  # 28×28 → 32×32, zero border
        rgb = np.repeat(img[:, None], 3, axis=1).reshape(len(keep), 3072)
        labels = y[keep].astype(np.int64).tolist()
        if split == "test":
            batches = {"test_batch": (rgb, labels)}
        else:
            parts = np.array_split(np.arange(len(keep)), 5)
            batches = {f"data_batch_{i + 1}": (rgb[p], [labels[j] for j in p])
                       for i, p in enumerate(parts)}
        for name, (data, lab) in batches.items():
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump({b"data": data, b"labels": lab, b"batch_label": name.encode()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f)
    return out


def scaled_recipe(epochs: int) -> list[str]:
    """The CIFAR recipe's schedule (steps at 1, 30 %, 60 %, 80 % of 200 epochs) for ``epochs``."""
    steps = [1] + [max(2, round(f * epochs)) for f in (0.3, 0.6, 0.8)]
    return ["--epochs", str(epochs), "--schedule", *map(str, steps),
            "--gammas", "10", "0.2", "0.2", "0.2"]


BUDGETS = (10, 30)
# "ieee": the run as published with IEEE subnormal floats, as the authors' loop computed: the
# default flushes them (docs/method.md, 'Differences from the authors' code'); their twin shows
# what that changes, and its checkpoint after LATE_EPOCH epochs is bench.train_step's late state
VARIANTS = {"weights": [], "bn": ["--attenuate", "bn"], "ieee": ["--keep_subnormals"]}
LATE_EPOCH = 26
LATE_CHECKPOINT = f"checkpoint-e{LATE_EPOCH}.pt"


def jobs(data: str, out: str, budgets=BUDGETS) -> list[tuple[str, list[str]]]:
    """(save folder, command line) of every run of the study with ``budgets`` epochs."""
    plan = [(10, m, v, s) for m in ("fsdp", "fpgm", "sfp", "asfp") for v in ("weights", "bn")
            for s in (1, 2)]
    plan += [(10, "dense", "weights", s) for s in (1, 2)]
    plan += [(30, m, v, 1) for m in ("fsdp", "fpgm") for v in ("weights", "bn")]
    plan += [(30, "dense", "weights", 1), (30, "fsdp", "ieee", 1)]
    plan = [job for job in plan if job[0] in budgets]
    out_jobs = []
    for epochs, method, variant, seed in plan:
        save = os.path.join(out, f"e{epochs}", f"resnet20-{method}-{variant}-s{seed}")
        cmd = [sys.executable, "notebook_cifar.py", "--dataset", "cifar10", "--data_path", data,
               "--arch", "resnet20", *RATES[method], *scaled_recipe(epochs),
               "--manualSeed", str(seed), "--workers", "0", "--save_path", save]
        cmd += VARIANTS[variant]
        out_jobs.append((save, cmd))
    return out_jobs


def attenuation_table(planned, out: str) -> str:
    """The effective attenuation per epoch (metrics.csv), mean over seeds, per budget, method
    and variant, as markdown; also drawn, a figure per budget, into ``out``/attenuation.png
    (10 epochs) and ``out``/attenuation_e30.png."""
    groups: dict[tuple, list[list]] = {}
    for save, _ in planned:
        budget, name = save.split(os.sep)[-2:]
        method, variant = name.split("-")[1:3]
        path = os.path.join(save, "metrics.csv")
        if method == "dense" or not os.path.isfile(path):
            continue
        rows = read_metrics(save)
        groups.setdefault((budget, method, variant), []).append(
            [float(r["effective_attenuation"]) if r["effective_attenuation"] else None
             for r in rows])
    lines = []
    for budget in sorted({key[0] for key in groups}, key=lambda b: int(b[1:])):
        epochs = int(budget[1:])  # a table per budget: their epochs differ
        lines += ["", f"| {budget}: method | attenuate | "
                  + " | ".join(map(str, range(epochs))) + " |", "|---" * (epochs + 2) + "|"]
        means = {}
        for (b, method, variant), curves in sorted(groups.items()):
            if b == budget:
                means[method, variant] = [
                    None if any(c[e] is None for c in curves) else sum(c[e] for c in curves)
                    / len(curves) for e in range(min(map(len, curves)))]
                cells = " | ".join("–" if m is None else f"{m:.3f}"
                                   for m in means[method, variant])
                lines.append(f"| {method} | {variant} | {cells} |")
        name = "attenuation.png" if budget == "e10" else f"attenuation_{budget}.png"
        _draw(means, os.path.join(out, budget, "resnet20-fsdp-weights-s1"),
              os.path.join(out, name))
    return "\n".join(lines)


def _draw(means: dict, fsdp: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(7, 4))
    for (method, variant), mean in means.items():
        plt.plot(range(len(mean)), [float("nan") if m is None else m for m in mean],
                 "-" if variant == "bn" else "--", marker="o", markersize=3,
                 label=f"{method}, {' '.join(VARIANTS[variant]) or '--attenuate weights'}")
    if os.path.isfile(os.path.join(fsdp, "metrics.csv")):  # what FSDP asks for: the weight factor of the selected filters
        zeta = [float(r["zeta"]) for r in read_metrics(fsdp)]
        # row e measures the selection of update e − 1; a filter selected again is
        # multiplied again, so persisting selections fall below this one-update factor
        plt.plot(range(1, len(zeta)), zeta[:-1], "k:",
                 label="ζ(e − 1), FSDP's factor per update")
    plt.xlabel("epoch")
    plt.ylabel("effective attenuation (train mode)")
    plt.yscale("symlog", linthresh=1e-3)
    plt.grid(alpha=0.3)
    plt.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    plt.savefig(path, dpi=110, bbox_inches="tight")
    plt.close()


def run(save: str, cmd: list[str]) -> int:
    if os.path.isfile(os.path.join(save, "summary.json")):
        print(f"done already: {save}", flush=True)
        return 0
    late = os.path.join(save, LATE_CHECKPOINT)
    if "--keep_subnormals" in cmd and not os.path.isfile(late):  # stop there, keep a copy
        done = _epochs_done(save)
        if done < LATE_EPOCH:
            code = _call(save, cmd + ["--stop_after", str(LATE_EPOCH - done)])
            if code or _epochs_done(save) != LATE_EPOCH:
                return code or 1
        shutil.copyfile(os.path.join(save, "checkpoint.pt"), late)
    return _call(save, cmd)


def run_planned(args, planned) -> list[int] | None:
    """A study's runs (each job's last two items: its save folder and command line),
    ``args.jobs`` at a time, with its data written first: their exit statuses; ``[0]`` with
    ``--report_only``; None with ``--dry_run``, the command lines printed instead."""
    if args.dry_run:
        print("\n".join(" ".join(job[-1]) for job in planned))
        return None
    if args.report_only:
        return [0]
    write_cifar_format(args.fashion, os.path.join(os.path.abspath(args.out), "data"))
    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda job: run(*job[-2:]), planned))


def _epochs_done(save: str) -> int:
    path = os.path.join(save, "checkpoint.pt")
    return int(safe_load(path)["epoch"]) if os.path.isfile(path) else 0


def _call(save: str, cmd: list[str]) -> int:
    # continues a stopped run, and starts afresh where one was stopped before its first
    # checkpoint (the folder holds its args.json and log only)
    cmd = cmd + ["--resume", "auto"]
    print(" ".join(cmd), flush=True)
    os.makedirs(save, exist_ok=True)
    with open(os.path.join(save, "stdout.txt"), "a") as log:
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"exit {code}: {save}", flush=True)
    return code


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", default="/tmp/fm/usr/share/datasets/fashion-mnist",
                    help="folder with the full Fashion-MNIST IDX gz files")
    ap.add_argument("--out", default="snapshots/bn_study")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--budgets", type=int, nargs="+", choices=BUDGETS, default=list(BUDGETS),
                    help="only the runs of these epoch budgets")
    ap.add_argument("--dry_run", action="store_true", help="print the command lines only")
    ap.add_argument("--report_only", action="store_true",
                    help="only the reports of the runs finished so far")
    return ap


def main() -> int:
    args = parser().parse_args()
    out = os.path.abspath(args.out)
    planned = jobs(os.path.join(out, "data"), out, args.budgets)
    codes = run_planned(args, planned)
    if codes is None:
        return 0
    for budget in (f"e{b}" for b in args.budgets):
        folders = [s for s, _ in planned if os.path.basename(os.path.dirname(s)) == budget]
        subprocess.call([sys.executable, "compare.py", *folders, "--out",
                         os.path.join(out, budget)], cwd=ROOT)
    print(attenuation_table(planned, out))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
