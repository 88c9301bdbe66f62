"""Compare finished runs (FSDP, FPGM, SFP, ASFP, dense) in one report.

    python compare.py snapshots/fsdp-r56-s* snapshots/fpgm-r56-s* snapshots/dense-r56-s* [--out DIR]

Runs that differ only in --manualSeed (and where they ran) are one row: mean ± sample std.
Writes comparison.md, comparison.csv (one row per run), comparison_groups.csv and
comparison.png into ``--out`` (default: the folder that holds the first run); published
figures that match a row are quoted in a block of their own. A folder without a finished run
is skipped with one warning line.
"""
import argparse
import os
import sys

from utils.report.comparison import load_run, summary_lines, write_report
from utils.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="snapshot folders (--save_path of finished runs)")
    p.add_argument("--out", default=None, help="report folder (default: the first run's parent)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = args.out or os.path.dirname(os.path.abspath(os.path.normpath(args.runs[0])))
    try:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"--out {out} is a file; give the folder the report goes into")
        runs = read_runs(args.runs)
        table = write_report(runs, out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(table)))
    print(f"report: {os.path.join(out, 'comparison.md')} (.csv, _groups.csv, .png)")
    return 0


def read_runs(folders: list[str]) -> list:
    """The finished runs among ``folders``, each once (a folder given twice, or by another
    path, is one run: it would count twice in a group's mean)."""
    runs, seen = [], set()
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            print(f"warning: {folder} is given twice; it counts once", file=sys.stderr)
            continue
        seen.add(real)
        run = load_run(folder)
        if run is None:
            print(f"warning: skipping {folder}: no finished run there (summary.json and "
                  "metrics.csv are written when a run ends)", file=sys.stderr)
        else:
            runs.append(run)
    return runs


if __name__ == "__main__":
    sys.exit(main())
