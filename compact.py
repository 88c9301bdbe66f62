"""Compact a finished FSDP run: drop the pruned filters for real, and report the savings.

    python compact.py SNAPSHOT_DIR_or_checkpoint.pt [--out model_compact.pt]
        [--pt2 model.pt2] [--onnx model.onnx] [--input_size 32]

Writes ``model_compact.pt`` (next to the checkpoint unless ``--out``), loadable with
``utils.compaction.load_compact`` — or, for a network that keeps parts of the dense one whole
(docs/compaction.md, 'What is kept whole'), ``model_compact.pt2``, a torch.export program;
optionally files that need no code of ours: a torch.export
program (``torch.export.load``), an ONNX file (torch's exporter, with onnx and onnxscript from
requirements.txt; it runs in ONNX Runtime, also pinned there) and, deprecated, TorchScript.
A run folder another process is using (a run still training) is refused; the one it writes
model_compact.pt into is locked meanwhile (utils/run/lock.py).
"""
import argparse
import contextlib
import os
import sys

import torch

from utils.compaction import (check_onnx_exporter, export_onnx, export_pt2, export_torchscript,
                              kept_line, load_compact)
from utils.errors import UserError
from utils.run import lock
from utils.run.compact_run import compact_checkpoint

BUSY_FIX = "wait for it to finish: compact.py works on a finished run"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("snapshot", help="snapshot folder or its checkpoint.pt (after the last epoch)")
    p.add_argument("--out", default=None, help="compact model file (default: "
                   "model_compact.pt next to the checkpoint)")
    p.add_argument("--pt2", default=None, metavar="PATH",
                   help="also save a torch.export program (torch.export.load(PATH).module())")
    p.add_argument("--onnx", default=None, metavar="PATH", help="also export to ONNX")
    p.add_argument("--torchscript", default=None, metavar="PATH",
                   help="also export TorchScript (deprecated by torch: prefer --pt2)")
    p.add_argument("--input_size", type=int, default=None,
                   help="image side for FLOPs and exports (default: the run's input size)")
    p.add_argument("--allow_unfinished", action="store_true",
                   help="compact a run that has not finished (its selected filters are not "
                        "zero yet: the compact network differs from the soft-pruned one)")
    p.add_argument("--keep_ratio", type=float, default=None,
                   help="p for FPGM's analytic FLOPs reduction (default: kept fraction of filters)")
    return p


def report(fig: dict) -> str:
    """The figures of ``utils.compaction.compaction_figures`` (summary.json's keys) as text."""
    c, h, w = fig["input_shape"]
    lines = [f"compact model: {fig['compact_path']}  ({fig['arch']}, {h}x{w} input)"]
    if fig.get("kept_whole"):
        lines.append(kept_line(fig["kept_whole"]))
    for what, unit in (("flops", "M MACs"), ("params", "M")):
        d, n = fig[f"{what}_dense"], fig[what]
        lines.append(f"{what:<7} dense {d / 1e6:9.3f}{unit}  compact {n / 1e6:9.3f}{unit}  "
                     f"reduction {fig[f'{what}_reduction']:.1%}")
    for suffix, label in (("", "filters kept"), ("_nominal", "nominal: 1 - the pruning rates")):
        if f"keep_ratio{suffix}" not in fig:
            continue
        analytic = fig[f"fpgm_analytic_flops_reduction{suffix}"]
        lines.append(f"FPGM analytic FLOPs reduction at keep ratio "
                     f"{fig[f'keep_ratio{suffix}']:.3f} ({label}): "
                     + (f"{analytic:.1%}" if analytic is not None else "n/a for this arch"))
    lines.append(f"max relative output difference, compact vs soft-pruned: "
                 f"{fig['max_rel_error']:.1e}")
    return "\n".join(lines)


def run_folder_held(snapshot: str, out: str | None):
    """The run folder, refused while another process uses it (a run still training, a
    resume); locked while model_compact.pt is written into it."""
    folder = snapshot if os.path.isdir(snapshot) else os.path.dirname(os.path.abspath(snapshot))
    if not os.path.isdir(folder):  # compact_checkpoint says what is missing
        return contextlib.nullcontext()
    lock.refuse_if_busy(folder, BUSY_FIX)
    if out is not None and (os.path.realpath(os.path.dirname(os.path.abspath(out)))
                            != os.path.realpath(folder)):
        return contextlib.nullcontext()  # it only reads the run
    return lock.holding(folder, BUSY_FIX)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        with run_folder_held(args.snapshot, args.out):
            return _compact(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _compact(args) -> int:
    """The compact network, its report and the exports asked for."""
    if args.onnx:
        check_onnx_exporter()  # before the work, not after it
    fig = compact_checkpoint(args.snapshot, args.out, args.input_size, args.keep_ratio,
                             args.allow_unfinished)
    print(report(fig))
    if args.pt2 or args.onnx or args.torchscript:
        path = fig["compact_path"]
        model = torch.export.load(path).module() if path.endswith(".pt2") else load_compact(path)
        shape = (1, *fig["input_shape"])
        if args.pt2:
            export_pt2(model, args.pt2, shape)
            print(f"torch.export program: {args.pt2}")
        if args.onnx:
            export_onnx(model, args.onnx, shape)
            print(f"ONNX: {args.onnx}")
        if args.torchscript:
            print("note: TorchScript is deprecated by torch (torch.jit warns on every use); "
                  "--pt2 writes its successor, a torch.export program", file=sys.stderr)
            export_torchscript(model, args.torchscript, shape)
            print(f"TorchScript: {args.torchscript}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
