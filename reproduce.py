"""Reproduce a whole table: a grid of runs (archs × methods × seeds), then its report.

    python reproduce.py cifar10 --gpus 0,1,2,3          # the paper's CIFAR-10 comparison: 45 runs
    python reproduce.py cifar10 --rate 0.4 --methods dense fpgm sfp --archs resnet56 --dry_run
    python reproduce.py gsc --slurm gsc.sbatch           # a Slurm array job script instead
    python reproduce.py cifar10 --target_flops 0.5 --methods dense fsdp fpgm sfp asfp l1
                                       # every method at one FLOPs budget (--allocation global)

Every job is the script's own command line with --resume auto, saving into a sub-folder of
--save_path named from its configuration (resnet56-fsdp-r50-s1): finished runs are skipped,
stopped ones continue. Flags after "--" go to every job (e.g. -- --workers 8). The report
(compare.py's) over the grid's folder comes last. Ctrl-C stops the running jobs resumably.
"""
import argparse
import contextlib
import importlib
import io
import os
import shlex
import sys

from utils.run.cli import OneLineParser
from utils.report.comparison import load_run, summary_lines, write_report
from utils.errors import UserError
from utils.run.grid import (ATTENUATE_DEFAULT, DEFAULT_RATE, FINISHED, FIXED_SHARE, GRIDS,
                            SEEDS, UNFINISHED, GridAsk, check_ask, check_slurm_path, configs,
                            describe, dry_run_lines, folder_state, plan, refuse_busy_folders,
                            slurm_script)
from utils.run.grid_runner import GridRunner, parse_gpus
from utils.run.driver import check_run_args

ROOT = os.path.dirname(os.path.abspath(__file__))


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(usage="%(prog)s GRID [options] [-- FLAGS FOR EVERY JOB]",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="methods at a total rate R (--rate), by criterion: "
                             + "; ".join(describe(c) for c in configs())
                             + f".\nAt a budget (--target_flops F): the same split as a ratio "
                             f"({FIXED_SHARE:g}:{DEFAULT_RATE - FIXED_SHARE:g}), the total found "
                             "per run")
    p.add_argument("grid", choices=list(GRIDS), help="cifar10: dense/FSDP/FPGM/SFP/ASFP × "
                   "ResNet-20/56/110; imagenet32, gsc: dense/FSDP/FPGM × ResNet-56")
    p.add_argument("--archs", nargs="+", help="cut the grid to these archs")
    p.add_argument("--methods", nargs="+", choices=configs(), metavar="METHOD",
                   help=f"cut (or extend) the grid's methods: {', '.join(configs())}")
    p.add_argument("--seeds", nargs="+", type=int, help=f"default: {' '.join(map(str, SEEDS))}")
    p.add_argument("--rate", type=float, default=None, help="total pruning rate (default 0.5)")
    p.add_argument("--target_flops", type=float, metavar="F",
                   help="every method at one budget instead of a rate: the compact network "
                        "keeps F of the dense FLOPs (fsdp and fpgm-mix keep their 1:4 split)")
    p.add_argument("--target_params", type=float, metavar="P", help="the same for parameters")
    p.add_argument("--allocation", nargs="+", choices=["uniform", "global"],
                   default=["uniform"], help="with a target, one more axis: the scripts' "
                   "--allocation")
    p.add_argument("--epochs", type=int, help="default: the script's recipe")
    p.add_argument("--attenuate", nargs="+", choices=["weights", "bn"],
                   default=[ATTENUATE_DEFAULT], help="one more axis: the scripts' --attenuate")
    p.add_argument("--data_path", help="default: the script's")
    p.add_argument("--save_path", help="the grid's folder (default: snapshots/grid-GRID)")
    p.add_argument("--gpus", help="run jobs in parallel, one per GPU: 0,1,2,3 (default: one "
                   "at a time on the script's default device)")
    p.add_argument("--dry_run", action="store_true", help="print the command lines, run nothing")
    p.add_argument("--slurm", metavar="FILE", help="write a Slurm array job script instead")
    return p


def resolved_args(script: str, argv) -> dict:
    """The job's flags as its script resolves them, refused as the script would refuse them."""
    module = importlib.import_module(script.removesuffix(".py"))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # argparse's own line, re-raised as ours
            args = module.parser().parse_args(list(argv))
    except SystemExit:
        raise UserError(err.getvalue().strip().removeprefix("error: ")
                        .removesuffix("; see --help") + f" (for {script})") from None
    check_run_args(args, getattr(module, "check", None))
    return vars(args)


def ask_from(args, extra: list[str]) -> GridAsk:
    spec = GRIDS[args.grid]
    targets = [(k, v) for k, v in (("flops", args.target_flops), ("params", args.target_params))
               if v is not None]
    if len(targets) > 1:
        raise UserError("--target_flops and --target_params contradict each other; give one")
    if targets and args.rate is not None:
        raise UserError(f"--rate and --target_{targets[0][0]} contradict each other: a target "
                        "sets every method's total rate itself; drop --rate")
    return GridAsk(args.grid, tuple(args.archs or spec.archs),
                   tuple(args.methods or spec.methods), tuple(args.attenuate),
                   tuple(args.seeds or SEEDS), DEFAULT_RATE if args.rate is None else args.rate,
                   args.epochs, args.data_path or spec.data_path,
                   args.save_path or os.path.join("snapshots", f"grid-{args.grid}"), tuple(extra),
                   targets[0] if targets else None, tuple(args.allocation))


def checked_plan(ask: GridAsk):
    """Every job and its folder's state; any bad input is refused before anything is run."""
    check_ask(ask)
    jobs = plan(ask)
    states = {}
    for job in jobs:
        try:
            wanted = resolved_args(job.script, job.argv)
        except UserError as e:
            raise UserError(f"{job.name}: {e}") from None
        states[job.name] = folder_state(job, wanted)
    return jobs, states


def report(jobs, grid_dir: str) -> None:
    """compare.py's report over every finished run in the grid's folder, the grid's first."""
    folders = [j.folder for j in jobs]
    if os.path.isdir(grid_dir):
        folders += sorted(os.path.join(grid_dir, n) for n in os.listdir(grid_dir)
                          if os.path.join(grid_dir, n) not in folders)
    runs = [r for r in map(load_run, folders) if r is not None]
    if not runs:
        print("no finished run to report yet")
        return
    print("\n".join(summary_lines(write_report(runs, grid_dir))))
    print(f"report: {os.path.join(grid_dir, 'comparison.md')} (.csv, _groups.csv, .png)")


def run_grid(ask: GridAsk, jobs, states, gpus, argv) -> int:
    grid_dir = os.path.abspath(ask.save_path)
    todo = [j for j in jobs if states[j.name] != FINISHED]
    resuming = {j.name for j in todo if states[j.name] == UNFINISHED}
    where = (f"up to {len(gpus)} at a time, one per GPU ({','.join(map(str, gpus))})" if gpus
             else "one at a time")
    print(f"grid {ask.grid}: {len(jobs)} runs in {grid_dir}: {len(todo)} to run "
          f"({len(resuming)} continue a checkpoint), {len(jobs) - len(todo)} finished; {where}")
    outcome = GridRunner(todo, gpus, sys.executable, ROOT, resuming).run()
    again = shlex.join(["python", "reproduce.py", *argv])
    if outcome.signal is not None:
        print(f"interrupted: {len(outcome.stopped)} running job(s) stopped with a resumable "
              f"checkpoint; continue with the same command: {again}", file=sys.stderr)
        return 128 + outcome.signal
    report(jobs, grid_dir)
    if outcome.unfinished:
        print(f"{len(outcome.unfinished)} run(s) did not finish ({len(outcome.failed)} failed: "
              f"see their console.txt); fix the cause, then run the same command again: "
              f"{again}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    args = parser().parse_args(ours)
    try:
        if args.slurm and (args.gpus or args.dry_run):
            raise UserError("--slurm writes a script for Slurm, which gives each task its GPU; "
                            "drop --gpus and --dry_run")
        ask = ask_from(args, extra)
        gpus = parse_gpus(args.gpus)
        jobs, states = checked_plan(ask)
        if args.slurm:
            return write_slurm(args.slurm, ask, jobs, states)
        if not args.dry_run:
            refuse_busy_folders(jobs, states)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(dry_run_lines(jobs, states, sys.executable, ROOT)))
        return 0
    return run_grid(ask, jobs, states, gpus, argv)


def write_slurm(path: str, ask: GridAsk, jobs, states) -> int:
    todo = [j for j in jobs if states[j.name] != FINISHED]
    if not todo:
        print("every run of the grid has finished; nothing to submit (for the report, run the "
              "same command without --slurm)")
        return 0
    check_slurm_path(path)
    grid_dir = os.path.abspath(ask.save_path)
    os.makedirs(grid_dir, exist_ok=True)  # Slurm writes the tasks' output there
    with open(path, "w") as f:
        f.write(slurm_script(todo, sys.executable, ROOT, ask.grid, grid_dir))
    print(f"wrote {path}: {len(todo)} array tasks ({len(jobs) - len(todo)} runs have finished); "
          f"submit it with: sbatch {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
