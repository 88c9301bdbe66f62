"""The study behind docs/methods.md, 'Prune to a budget': FSDP and FPGM at one FLOPs budget,
with one rate for every layer (``--allocation uniform``) and with counts per layer from the
criterion's scores (``--allocation global``).

    python -m bench.budget_study [--fashion DIR] [--out snapshots/budget_study] [--dry_run]

The data and recipe are the soft-pruning study's (``bench.soft_pruning_study``): ResNet-20 on
a 10 000/2 000-image subset of Fashion-MNIST written as CIFAR-10 batches, the CIFAR recipe
scaled to 10 epochs, seed 1. Every run keeps 50 % of the dense network's FLOPs
(``--target_flops 0.5``): FSDP with ``--attenuate bn`` (its CS:GM split 1:4, the paper's
0.1:0.4) and FPGM (GM only). The runs go one at a time, one thread each, ``nice``d; each is
``notebook_cifar.py``'s own command line (printed), continued with ``--resume auto`` when
stopped, skipped when finished (``soft_pruning_study.run``). It ends with ``compare.py`` over
the four; run it without ``nice`` (each run is ``nice``d already).
"""
import argparse
import os
import subprocess
import sys

from bench.soft_pruning_study import run, scaled_recipe, write_cifar_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"fsdp-bn": ["--method", "fsdp", "--attenuate", "bn"], "fpgm": ["--method", "fpgm"]}
TARGET, EPOCHS, SEEDS = 0.5, 10, (1,)


def jobs(data: str, out: str) -> list[tuple[str, list[str]]]:
    """(save folder, command line) of every run."""
    planned = []
    for seed in SEEDS:
        for method, flags in METHODS.items():
            for allocation in ("uniform", "global"):
                save = os.path.join(out, f"resnet20-{method}-{allocation}-s{seed}")
                planned.append((save, [
                    "nice", "-n", "10", sys.executable, "notebook_cifar.py", "--dataset",
                    "cifar10", "--data_path", data, "--arch", "resnet20", *flags,
                    "--target_flops", str(TARGET), "--allocation", allocation,
                    *scaled_recipe(EPOCHS), "--manualSeed", str(seed), "--workers", "0",
                    "--save_path", save]))
    return planned


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", default="/tmp/fm/usr/share/datasets/fashion-mnist",
                    help="folder with the full Fashion-MNIST IDX gz files (the study's data)")
    ap.add_argument("--out", default="snapshots/budget_study")
    ap.add_argument("--dry_run", action="store_true", help="print the command lines only")
    return ap


def main() -> int:
    args = parser().parse_args()
    out = os.path.abspath(args.out)
    planned = jobs(os.path.join(out, "data"), out)
    if args.dry_run:
        print("\n".join(" ".join(cmd) for _, cmd in planned))
        return 0
    write_cifar_format(args.fashion, os.path.join(out, "data"))
    codes = [run(*job) for job in planned]
    subprocess.call([sys.executable, "compare.py", *(s for s, _ in planned), "--out", out],
                    cwd=ROOT)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
