"""Grids of runs that reproduce a table: the jobs, the state of their folders, Slurm scripts.

A grid is a script and a dataset crossed with archs × method configurations × ``--attenuate``
variants × seeds, every method at one total rate or at one budget (``--target_flops``, with
``--allocation`` variants as one more axis). Every job is that script's own command line, saving into its own
sub-folder of the grid's folder, always with ``--resume auto``: a fresh folder starts, a
stopped run continues, and a Slurm requeue does the same. ``utils.run.grid_runner`` runs them.
"""
import os
import shlex
from dataclasses import dataclass

from ..errors import UserError
from ..method.criteria import registry
from ..method.methods import METHODS, Method
from ..report import config
from ..report.logger import read_json
from . import lock


@dataclass(frozen=True)
class GridSpec:
    script: str                # run from the repository root
    dataset: str
    archs: tuple[str, ...]
    methods: tuple[str, ...]
    data_path: str             # the script's own default


GRIDS = {
    # the paper's CIFAR-10 comparison: every method at one total rate, three ResNets
    "cifar10": GridSpec("notebook_cifar.py", "cifar10", ("resnet20", "resnet56", "resnet110"),
                        ("dense", "fsdp", "fpgm", "sfp", "asfp"), "datasets"),
    # the paper's ResNet-56 runs on ImageNet32 and on Speech Commands
    "imagenet32": GridSpec("notebook_imagenet.py", "imagenet32", ("resnet56",),
                           ("dense", "fsdp", "fpgm"), "datasets/imagenet32"),
    "gsc": GridSpec("notebook_gsc.py", "gsc", ("resnet56",), ("dense", "fsdp", "fpgm"),
                    "datasets/gsc"),
}
SEEDS = (1, 2, 3)
DEFAULT_METHOD = "fsdp"  # the scripts' default: a dense run is it with every rate 0
DEFAULT_RATE = 0.5  # the paper's comparison
FIXED_SHARE = 0.1   # fsdp's CS share and fpgm-mix's norm share, as in the paper and FPGM
ATTENUATE_DEFAULT = config.added_defaults()["attenuate"]
ALLOCATION_DEFAULT = "uniform"


def grid_flags() -> set[str]:
    """The flags the grid sets itself (a user's extra flags may not repeat them)."""
    return set(config.set_by_grid())


def _share(x: float) -> str:
    return f"{round(x, 6):g}"


def configs() -> tuple[str, ...]:
    """The grid's method configurations, from the method registry: dense (nothing pruned),
    every method at its default split, and ``NAME-mix`` for a method of two criteria whose
    default gives the first one nothing (FPGM's mixed variant: norm 0.1 + GM)."""
    names = ["dense"]
    for m in METHODS.values():
        names.append(m.name)
        if m.second and m.default_rate(m.first) == 0:
            names.append(f"{m.name}-mix")
    return tuple(names)


def _method_of(config: str) -> tuple[Method, bool]:
    """The method of a configuration, and whether it is the mixed variant."""
    mixed = config.endswith("-mix") and config not in METHODS
    return METHODS[config.removesuffix("-mix") if mixed else config], mixed


def _split(m: Method, mixed: bool) -> bool:
    """Does the first criterion get ``FIXED_SHARE`` of the total (the rest to the second)?"""
    return bool(m.second) and (mixed or m.default_rate(m.first) > 0)


def describe(config: str) -> str:
    """What a configuration prunes at a total rate R (reproduce.py's help)."""
    if config == "dense":
        return "dense (nothing pruned)"
    m, mixed = _method_of(config)
    if _split(m, mixed):
        return f"{config} {m.first} {FIXED_SHARE:g} + {m.second} R−{FIXED_SHARE:g}"
    return f"{config} {m.second or m.first} R"


def method_flags(config: str, rate: float, target: tuple | None = None,
                 allocation: str = ALLOCATION_DEFAULT) -> list[str]:
    """A method whose default gives both criteria a share, and a ``-mix`` configuration, give
    ``FIXED_SHARE`` of the total to the first criterion and the rest to the second; any other
    gives the whole rate to its one criterion in use. With a ``target`` ((kind, fraction)) the
    total is the budget's: the split is kept as a ratio (1:4 at the default 0.5), a method
    with one criterion in use takes no rate of its own. Dense: the default method, rates 0."""
    if config == "dense":
        return [flag for c in METHODS[DEFAULT_METHOD].criteria
                for flag in (f"--prune_rate_{c}", "0")]
    m, mixed = _method_of(config)
    flags = ["--method", m.name]
    if target is not None:
        budget = [f"--target_{target[0]}", _share(target[1]), "--allocation", allocation]
        if mixed:
            flags += [f"--prune_rate_{m.first}", _share(FIXED_SHARE),
                      f"--prune_rate_{m.second}", _share(DEFAULT_RATE - FIXED_SHARE)]
        return flags + budget
    if _split(m, mixed):
        return flags + [f"--prune_rate_{m.first}", _share(FIXED_SHARE),
                        f"--prune_rate_{m.second}", _share(rate - FIXED_SHARE)]
    return flags + [f"--prune_rate_{m.second or m.first}", _share(rate)]


@dataclass(frozen=True)
class Job:
    name: str             # the sub-folder: resnet56-fsdp-r50-s1
    folder: str           # absolute
    script: str
    argv: tuple[str, ...]

    def command(self, python: str) -> list[str]:
        return [python, self.script, *self.argv]


@dataclass(frozen=True)
class GridAsk:
    """What reproduce.py was asked for, every value checked by ``check_ask``."""
    grid: str
    archs: tuple[str, ...]
    methods: tuple[str, ...]
    attenuate: tuple[str, ...]
    seeds: tuple[int, ...]
    rate: float
    epochs: int | None
    data_path: str
    save_path: str
    extra: tuple[str, ...] = ()  # flags after "--", passed to every job
    target: tuple | None = None  # (kind, fraction): every method at one budget, not a rate
    allocations: tuple[str, ...] = (ALLOCATION_DEFAULT,)


def check_ask(ask: GridAsk) -> None:
    if os.path.exists(ask.save_path) and not os.path.isdir(ask.save_path):
        raise UserError(f"--save_path {ask.save_path} is a file; give the grid's folder")
    for flag, values in (("--archs", ask.archs), ("--methods", ask.methods),
                         ("--attenuate", ask.attenuate), ("--seeds", ask.seeds)):
        if len(set(values)) != len(values):
            raise UserError(f"{flag} lists a value twice ({' '.join(map(str, values))}); "
                            "give each once")
    if len(set(ask.allocations)) != len(ask.allocations):
        raise UserError(f"--allocation lists a value twice ({' '.join(ask.allocations)}); "
                        "give each once")
    if ask.target is None and ask.allocations != (ALLOCATION_DEFAULT,):
        raise UserError("--allocation spreads a budget over the layers and the grid has none; "
                        "add --target_flops F (or --target_params P), or drop it")
    if ask.target is not None and not 0 < ask.target[1] < 1:
        raise UserError(f"--target_{ask.target[0]} must lie in (0, 1) (got {ask.target[1]:g}): "
                        "the fraction of the dense network to keep")
    if not FIXED_SHARE < ask.rate < 1:
        raise UserError(f"--rate must be > {FIXED_SHARE} and < 1 (got {ask.rate:g}); fsdp and "
                        f"fpgm-mix give {FIXED_SHARE} of it to CS / the norm")
    for arg in ask.extra:
        if arg.split("=", 1)[0] in grid_flags():
            raise UserError(f"{arg.split('=', 1)[0]} is set by the grid itself (see "
                            "reproduce.py --help); drop it from the flags after --")


def job_name(arch: str, config: str, attenuate: str, rate: float, seed: int,
             target: tuple | None = None, allocation: str = ALLOCATION_DEFAULT) -> str:
    """``resnet56-fsdp-r50-s1``; at a budget ``resnet56-fsdp-f50-s1`` (f: FLOPs, p:
    parameters kept, in %), ``-global`` for that allocation."""
    parts = [arch, config]
    if config != "dense":
        parts += [attenuate] if attenuate != ATTENUATE_DEFAULT else []
        parts += [f"{target[0][0]}{target[1] * 100:g}"] if target else [f"r{rate * 100:g}"]
        parts += [allocation] if allocation != ALLOCATION_DEFAULT else []
    return "-".join(parts + [f"s{seed}"])


def plan(ask: GridAsk) -> list[Job]:
    """Seed-major order: the first pass over every configuration gives a whole table early."""
    spec, grid_dir = GRIDS[ask.grid], os.path.abspath(ask.save_path)
    jobs = []
    for seed in ask.seeds:
        for arch in ask.archs:
            for config in ask.methods:
                for attenuate, allocation in _variants(ask, config):
                    name = job_name(arch, config, attenuate, ask.rate, seed, ask.target,
                                    allocation)
                    folder = os.path.join(grid_dir, name)
                    argv = ["--dataset", spec.dataset, "--arch", arch,
                            *method_flags(config, ask.rate, ask.target, allocation),
                            *(["--attenuate", attenuate] if attenuate != ATTENUATE_DEFAULT
                              else []),
                            "--manualSeed", str(seed),
                            *(["--epochs", str(ask.epochs)] if ask.epochs is not None else []),
                            "--data_path", os.path.abspath(ask.data_path), "--save_path", folder,
                            "--resume", "auto", *ask.extra]
                    jobs.append(Job(name, folder, spec.script, tuple(argv)))
    return jobs


def _variants(ask: GridAsk, config: str) -> list[tuple[str, str]]:
    """(attenuate, allocation) of a configuration's runs; a dense run prunes nothing, so it
    has nothing to attenuate or allocate: one per seed."""
    if config == "dense":
        return [(ATTENUATE_DEFAULT, ALLOCATION_DEFAULT)]
    return [(a, b) for a in ask.attenuate for b in ask.allocations]


# --- the state of a job's folder ---------------------------------------------------------------

FRESH, UNFINISHED, FINISHED = "fresh", "unfinished", "finished"


def _recorded_flags(folder: str) -> dict | None:
    """The flags the folder's run was made with: args.json, else what summary.json says."""
    args = read_json(folder, "args.json")
    if args is not None:
        return args
    summary = read_json(folder, "summary.json")
    if summary is None:
        return None
    keys = ("method", "arch", "dataset", "epochs", "round_to", "attenuate",
            *(f"prune_rate_{c}" for c in registry()))
    return {**{k: summary[k] for k in keys if k in summary}, "manualSeed": summary.get("seed")}


def first_difference(recorded: dict, wanted: dict) -> tuple[str, object, object] | None:
    """The first flag that changes what a run computes and differs: (flag, recorded, wanted)."""
    added = config.added_defaults()
    recorded = {**added, **recorded}  # a run from before a flag ran with its default
    wanted = {**added, **wanted}
    for key in sorted((set(recorded) & set(wanted)) - config.run_control()):
        if recorded[key] != wanted[key]:
            return key, recorded[key], wanted[key]
    return None


def folder_state(job: Job, wanted: dict) -> str:
    """FRESH, UNFINISHED or FINISHED; a folder holding a run of other flags is refused."""
    if os.path.exists(job.folder) and not os.path.isdir(job.folder):
        raise UserError(f"{job.folder} is a file, where the grid keeps the run {job.name}; "
                        "move it away or give the grid another --save_path")
    recorded = _recorded_flags(job.folder)
    if recorded is None:
        names = os.listdir(job.folder) if os.path.isdir(job.folder) else []
        return UNFINISHED if "checkpoint.pt" in names else FRESH
    diff = first_difference(recorded, wanted)
    if diff is not None:
        key, old, new = diff
        raise UserError(f"{job.folder} holds a run made with --{key} {_short(old)}, this grid "
                        f"asks for {_short(new)}; give the grid another --save_path, or the flags "
                        "of that run")
    if os.path.isfile(os.path.join(job.folder, "summary.json")):
        return FINISHED
    return UNFINISHED


def refuse_busy_folders(jobs: list[Job], states: dict) -> None:
    """Before the first job starts: refuse a grid one of whose runs to do is in use by another
    process (a run started by hand, compact.py, another reproduce.py on the same folder)."""
    for job in jobs:
        if states[job.name] != FINISHED and os.path.isdir(job.folder):
            try:
                lock.refuse_if_busy(job.folder, "wait for it to finish, or give the grid "
                                                "another --save_path")
            except UserError as e:
                raise UserError(f"{job.name}: {e}") from None


def _short(value) -> str:
    """A value from a run's args.json for a one-line message: short, and printable."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 60 else text[:57] + "…"


# --- what --dry_run prints and --slurm writes --------------------------------------------------

def dry_run_lines(jobs: list[Job], states: dict, python: str, root: str) -> list[str]:
    lines = []
    for job in jobs:
        if states[job.name] == FINISHED:
            lines.append(f"# finished, skipped: {job.folder}")
        else:
            lines.append(shlex.join(job.command(python)))
    todo = sum(states[j.name] != FINISHED for j in jobs)
    lines.append(f"# {len(jobs)} runs: {todo} to run, {len(jobs) - todo} finished "
                 f"(the commands run in {root})")
    return lines


SLURM_MARK = "# Slurm array job written by reproduce.py"


def slurm_script(jobs: list[Job], python: str, root: str, grid: str, grid_dir: str) -> str:
    """One array task per job; Slurm gives each task its GPU (CUDA_VISIBLE_DEVICES)."""
    lines = ["#!/bin/bash", f"{SLURM_MARK} (grid {grid}): one run per array task.",
             "# Submit it with sbatch. Every command continues its run with --resume auto, so a",
             "# requeued task, or this file submitted again, goes on where it stopped (a finished",
             "# run only writes its final outputs again). When every task has ended, run the",
             "# same reproduce.py command without --slurm: it skips the finished runs and writes",
             "# the report. Add what your cluster needs: --partition, --time, modules ...",
             f"#SBATCH --job-name=fsdp-{grid}", f"#SBATCH --array=0-{len(jobs) - 1}",
             "#SBATCH --gres=gpu:1", "#SBATCH --requeue",
             f"#SBATCH --output={os.path.join(grid_dir, 'slurm-%A_%a.out')}",
             f"cd {shlex.quote(root)}", 'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) {shlex.join(job.command(python))} ;;" for i, job in enumerate(jobs)]
    lines += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def check_slurm_path(path: str) -> None:
    """Replace only a file this module wrote: never a script or a file of the user's."""
    if os.path.isdir(path):
        raise UserError(f"--slurm {path} is a folder; give a file name")
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            head = f.read(len("#!/bin/bash\n") + len(SLURM_MARK))
        if SLURM_MARK not in head:
            raise UserError(f"--slurm {path} exists and was not written by reproduce.py; "
                            "give a new file name")
