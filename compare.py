"""Compare finished runs (FSDP, FPGM, SFP, ASFP, dense) in one report.

    python compare.py snapshots/fsdp-r56 snapshots/fpgm-r56 snapshots/dense-r56 [--out DIR]

Writes comparison.md, comparison.csv and comparison.png into ``--out`` (default: the folder
that holds the first run). A folder without a finished run is skipped with one warning line.
"""
import argparse
import os
import sys

from utils.comparison import load_run, write_report
from utils.errors import UserError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="snapshot folders (--save_path of finished runs)")
    p.add_argument("--out", default=None, help="report folder (default: the first run's parent)")
    args = p.parse_args(argv)
    runs = []
    for folder in args.runs:
        run = load_run(folder)
        if run is None:
            print(f"warning: skipping {folder}: no finished run there (summary.json and "
                  "metrics.csv are written when a run ends)", file=sys.stderr)
        else:
            runs.append(run)
    out = args.out or os.path.dirname(os.path.abspath(os.path.normpath(args.runs[0])))
    try:
        table = write_report(runs, out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width = max(len(r["run"]) for r in table)
    for r in table:
        drop = f"  drop {r['drop_vs_dense']:+.2f}" if r["drop_vs_dense"] is not None else ""
        flops = (f"  FLOPs −{100 * r['flops_reduction']:.1f}%"
                 if r["flops_reduction"] is not None else "")
        print(f"{r['run']:<{width}}  {r['method']:<5}  top-1 {r['top1']:6.2f}{drop}{flops}")
    print(f"report: {os.path.join(out, 'comparison.md')} (.csv, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
