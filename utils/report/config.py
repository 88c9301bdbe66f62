"""The run configuration: every flag of the dataset scripts, once, with its roles.

A run is its flags (``args.json``, the checkpoint's ``args``), so the table below is also how
runs are read back. Each ``Flag`` holds its name, type, default, help and a check of its own
value, and its roles:

* ``resume``: ``MATCH`` (a resumed run must use the checkpoint's value: it changes what the
  run computes), ``CHANGE`` (may differ: logged and recorded in args.json) or ``IGNORE`` (this
  invocation's own control);
* ``control``: it does not change what the run computes (where the data are, how it executes
  and reports): the report groups runs over it, and the grid does not compare it;
* ``grid``: reproduce.py's grid sets it itself (a user's extra flags may not repeat it);
* ``shown``: a column of its own in the report;
* ``added``: the value runs made before the flag existed had (their args.json lacks it);
* ``api``: the Pruner's keyword for the same option, so that an error the method raises in its
  own terms (``errors.OptionError``) is worded with the flag on the command line.

The scripts' parsers (``utils/run/cli.py``), the resume check (``utils/run/checkpoint.py``),
the report (``comparison``) and the grid (``utils/run/grid.py``) read this table; a new flag is
one entry here.
"""
import math
import re
from dataclasses import dataclass, field

from ..method.budget import ALLOCATIONS
from ..method.criteria import registry
from ..method.groups import COUPLINGS
from ..method.methods import ATTENUATE, METHODS

MATCH, CHANGE, IGNORE = "match", "change", "ignore"
_UNSET = object()


@dataclass(frozen=True)
class Flag:
    name: str
    default: object = None
    parse: object = None          # the value's type (int, float, str); None: a switch
    help: str = ""
    group: str = "run control"
    resume: str = MATCH
    control: bool = False
    grid: bool = False
    shown: bool = False
    added: object = _UNSET
    api: str | None = None
    check: object = None          # (value) -> what is wrong with it, or None
    nargs: object = None
    const: object = None
    choices: tuple | None = None
    metavar: str | None = None
    scripts: tuple = ()           # only these scripts have it (notebook_X.py's X); () = all

    @property
    def is_added(self) -> bool:
        return self.added is not _UNSET


# --- checks of one value (cross-flag checks: utils/run/cli.check_args) ---------------------------

def at_least(lo):
    return lambda v: None if v is None or v >= lo else f"must be ≥ {lo}"


def finite_at_least(lo, strict=False):
    def check(v):
        if v is None:
            return None
        if not math.isfinite(v):
            return "must be a finite number"
        if v < lo or (strict and v == lo):
            return f"must be {'>' if strict else '≥'} {lo:g}"
        return None
    return check


def finite(v):
    return None if v is None or math.isfinite(v) else "must be a finite number"


def each_finite(values):
    return None if all(math.isfinite(v) for v in values) else "must be finite numbers"


def seed_range(v):
    return None if v is None or 0 <= v < 2 ** 32 else "must lie in [0, 2³²)"


def a_regex(v):
    if v is None:
        return None
    try:
        re.compile(v)
    except re.error as e:
        return f"is not a regular expression ({e})"
    return None


def tau_check(v):
    if v is None:
        return None
    if not math.isfinite(v) or not v > 4 / 3:
        return "must be > 4/3; the paper uses 10"
    return None


# --- the table ---------------------------------------------------------------------------------

DATA, OPTIM, METHOD = "data and model", "optimisation (the reference's flags)", "pruning method"


def _static_flags() -> list[Flag]:
    return [
        Flag("dataset", None, str, group=DATA, shown=True, grid=True),
        Flag("data_path", "datasets", str, "dataset root (downloaded there if absent)", DATA,
             CHANGE, control=True, grid=True),
        Flag("arch", "resnet20", str, "", DATA, shown=True, grid=True),  # help: utils/run/cli
        Flag("workers", 2, int, "data-loading worker processes", DATA, CHANGE, control=True,
             check=at_least(0)),
        Flag("epochs", 200, int, group=OPTIM, shown=True, grid=True, api="epochs",
             check=at_least(1)),
        Flag("batch_size", 128, int, "global batch (split over ranks)", OPTIM,
             check=at_least(1)),
        Flag("learning_rate", 0.01, float, group=OPTIM, check=finite_at_least(0, strict=True)),
        Flag("momentum", 0.9, float, group=OPTIM, check=finite_at_least(0)),
        Flag("decay", 5e-4, float, "weight decay", OPTIM, check=finite_at_least(0)),
        Flag("nesterov", 1, int, "1: SGD with Nesterov momentum (the FSDP scripts); 0: plain "
             "momentum (FPGM's ImageNet recipe)", OPTIM, added=1, choices=(0, 1)),
        Flag("schedule", [1, 60, 120, 160], int, "epochs at which the learning rate is "
             "multiplied by the matching gamma", OPTIM, nargs="+"),
        Flag("gammas", [10, 0.2, 0.2, 0.2], float, group=OPTIM, nargs="+", check=each_finite),
        # the seed is no run control (the grid's folders differ by it), but the report groups
        # runs over it and a resume takes the checkpoint's unless one is given
        Flag("manualSeed", None, int, "random seed (random if absent)", OPTIM, IGNORE,
             grid=True, check=seed_range),
        Flag("method", "fsdp", str, "", METHOD, shown=True, grid=True, api="method",
             choices=tuple(METHODS)),
        Flag("tau", None, float, "steepness of the asymptotic schedule, > 4/3 (fsdp: 10, "
             "asfp: 8)", METHOD, api="tau", check=tau_check),
        Flag("attenuation", 1.0, float, "fsdp's s: ζ(e) = s·(1 − θ(e)/θ3); the paper uses 0.2 "
             "on ImageNet32", METHOD, api="attenuation", check=finite_at_least(0)),
        Flag("attenuate", "weights", str, "what a selected filter's factor multiplies: weights "
             "(the paper, bit-exact with the authors' loop) or bn: also its BatchNorm's γ and β, "
             "so the attenuation reaches the network in train mode "
             "(docs/soft-pruning-and-batchnorm.md)", METHOD, shown=True, grid=True,
             added="weights", api="attenuate", choices=ATTENUATE),
        Flag("use_zero_scaling", False, None, "fsdp with ζ = 0 at every epoch: plain soft "
             "pruning, asymptotic rate", METHOD, api="zero_scaling"),
        Flag("target_flops", None, float, "prune to a budget instead of rates: the compact "
             "network keeps F (in (0, 1)) of the dense network's FLOPs, within 1 %% of the "
             "dense count; fsdp's/fpgm's two rates then only set the split of each layer's "
             "count", METHOD, grid=True, added=None, api="target.flops", check=finite,
             metavar="F"),
        Flag("target_params", None, float, "the same for the parameters", METHOD, grid=True,
             added=None, api="target.params", check=finite, metavar="P"),
        Flag("allocation", None, str, "with a target: uniform (one rate for every layer, the "
             "default) or global (counts per layer from the criterion's scores, normalised by "
             "each layer's mean)", METHOD, grid=True, added=None, api="allocation",
             choices=ALLOCATIONS),
        Flag("coupling", "none", str, "residual: the convs whose outputs meet in one "
             "residual sum select the same channels, as one layer, so that the compact "
             "network's residual streams are narrow too; none: every conv selects its own "
             "(the paper). See docs/methods.md, 'Coupled selection'", METHOD,
             added="none", api="coupling", choices=COUPLINGS),
        Flag("round_to", 1, int, "keep a multiple of N filters in every pruned layer "
             "(selecting fewer where needed): CPU/GPU kernels compute channels in blocks of 8 "
             "or 16", METHOD, api="round_to", check=at_least(1), metavar="N"),
        Flag("epoch_prune", 1, int, "update the mask every N epochs", METHOD,
             api="prune_every", check=at_least(1)),
        Flag("epoch_apply_cs", 2, int, "recompute CS scores at epochs divisible by N "
             "(reference: even epochs)", METHOD, api="cs_every", check=at_least(1)),
        Flag("batch_prune_size", 256, int, "batch of the CS pass", METHOD, check=at_least(1)),
        Flag("max_iter_cs", 10000, int, "at most N batches per CS pass", METHOD,
             api="cs_batches", check=at_least(1)),
        Flag("cs_mode", "reference", str, "reference: the CS pass runs in the mode the network "
             "is in (train mode after an epoch, BN statistics updated: the authors' loop); "
             "train: always train mode, the BN running statistics put back after the pass; "
             "eval: always eval mode", METHOD, api="cs_mode",
             choices=("reference", "train", "eval")),
        Flag("layer_begin", 0, int, "first parameter index of a prunable conv weight "
             "(reference indexing)", METHOD),
        Flag("layer_end", None, int, "last parameter index (default: all)", METHOD),
        Flag("layer_inter", None, int, "take every N-th parameter index from layer_begin "
             "(reference: 3)", METHOD),
        Flag("prune_include", None, str, "regex: only prune convs whose name matches", METHOD,
             api="include", check=a_regex),
        Flag("prune_exclude", None, str, "regex: never prune convs whose name matches", METHOD,
             api="exclude", check=a_regex),
        Flag("save_path", "snapshots/run", str, "snapshot folder", resume=CHANGE, control=True,
             grid=True),
        Flag("resume", None, str, "continue from a checkpoint; auto = save_path/checkpoint.pt "
             "if present", resume=IGNORE, control=True, grid=True, metavar="PATH|auto"),
        Flag("overwrite", False, None, "replace an existing snapshot", resume=IGNORE,
             control=True, grid=True),
        Flag("stop_after", None, int, "stop (resumably) after N epochs of this invocation",
             resume=IGNORE, control=True, check=at_least(1), metavar="N"),
        Flag("evaluate", False, None, "only evaluate (with --resume or --pretrain_path) and "
             "exit", resume=IGNORE, control=True, grid=True),
        Flag("use_pretrain", False, None, ""),  # help: utils/run/cli (timm's prefix)
        Flag("pretrain_path", "", str, "state dict or checkpoint to start from"),
        Flag("use_state_dict", False, None, "accepted for compatibility", resume=IGNORE,
             control=True),
        Flag("amp", None, str, "mixed precision: bf16 where the device computes it (CPUs, "
             "GPUs from Ampere on), else fp16 with a GradScaler (docs/runs.md, 'Mixed "
             "precision')", nargs="?", const="auto", choices=("auto", "bf16", "fp16")),
        Flag("nan_policy", "stop", str, "on a NaN/Inf loss: stop (keeping the last checkpoint) "
             "or skip the batch", resume=CHANGE, choices=("stop", "skip")),
        Flag("deterministic", False, None, "deterministic kernels, no cuDNN benchmarking, no "
             "TF32: a resume on a GPU bit for bit (a CPU's always is)", resume=CHANGE),
        Flag("keep_subnormals", False, None, "keep IEEE subnormal floats on the CPU, as the "
             "authors' loop did (bit for bit with it late in an FSDP run, where such steps ran "
             "up to 7x slower on some CPUs); by default they are flushed to zero "
             "(docs/method.md, 'Differences from the authors' code')", added=True),
        Flag("device", None, str, "cpu, cuda, cuda:1 … (default: cuda if present)",
             resume=CHANGE, control=True),
        Flag("ngpu", None, int, "reference flag: 0 = CPU", resume=CHANGE, control=True),
        Flag("print_freq", 200, int, "log every N batches; the loss is checked, and under "
             "DDP a stop polled, with it", resume=CHANGE, control=True,
             check=at_least(1)),
        Flag("eval_bn_refresh", 0, int, "also evaluate, every epoch, a copy whose BN statistics "
             "are re-estimated on N training batches (the run itself is unchanged): the test "
             "curve of the network being trained, not of stale statistics", resume=CHANGE,
             control=True, check=at_least(0), metavar="N"),
        Flag("tensorboard", False, None, "also write TensorBoard scalars", resume=CHANGE,
             control=True),
        Flag("debug", False, None, "show tracebacks of errors", resume=IGNORE, control=True),
        # notebook_imagenet.py
        Flag("cs_samples", 50000, int, "--dataset imagenet: size of the fixed random training "
             "subset the CS pass reads (ImageNet32 uses the first training file and its "
             "mirror)", "ImageNet", check=at_least(1), scripts=("imagenet",)),
        Flag("crop_size", 224, int, "--dataset imagenet: input size", "ImageNet",
             check=at_least(1), scripts=("imagenet",)),
        Flag("resize_size", 256, int, "--dataset imagenet: shorter side before the evaluation "
             "centre crop", "ImageNet", check=at_least(1), scripts=("imagenet",)),
        # notebook_gsc.py
        Flag("cache_dir", None, str, "where the decoded clips are cached; none given: gsc_cache "
             "beside --save_path", "Speech Commands", CHANGE, control=True, scripts=("gsc",)),
        Flag("multi_crop", False, None, "evaluate the test split as the average softmax of 4 "
             "views per clip", "Speech Commands", scripts=("gsc",)),
        Flag("input", "mel32", str, "accepted for compatibility: 32 mel bands × 32 frames",
             "Speech Commands", CHANGE, control=True, choices=("mel32",), scripts=("gsc",)),
    ]


def rate_flags() -> list[Flag]:
    """``--prune_rate_<name>``, one per registered criterion, in their order (a run made before
    a criterion existed gave it 0)."""
    out = []
    for name, crit in registry().items():
        users = [m for m in METHODS.values() if name in m.criteria]
        shares = ", ".join(f"{m.name} {m.default_rate(name):g}" for m in users)
        out.append(Flag(f"prune_rate_{name}", None, float, f"final share of the {crit.title} "
                        f"criterion (default: {shares or 'none'})", METHOD, shown=True,
                        grid=True, added=0.0, api=f"rates.{name}", check=finite))
    return out


def flags(script: str | None = None) -> list[Flag]:
    """Every flag, the rates after ``--method``; ``script``: only those that script has
    (None: every script's)."""
    static = _static_flags()
    at = [f.name for f in static].index("method") + 1
    every = static[:at] + rate_flags() + static[at:]
    return [f for f in every if script is None or not f.scripts or script in f.scripts]


def by_name(script: str | None = None) -> dict[str, Flag]:
    return {f.name: f for f in flags(script)}


# --- the roles, as the readers ask for them -----------------------------------------------------

# compared first on resume, so that the first difference named is the one that explains the
# others: what the run is, and a budget before the rates it replaces
_RESUME_FIRST = ("method", "attenuate", "arch", "dataset", "epochs", "target_flops",
                 "target_params", "allocation")


def must_match(script: str | None = None) -> tuple[str, ...]:
    names = [f.name for f in flags(script) if f.resume == MATCH]
    return tuple(sorted(names, key=lambda n: _RESUME_FIRST.index(n) if n in _RESUME_FIRST
                        else len(_RESUME_FIRST)))


def may_change(script: str | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in flags(script) if f.resume == CHANGE)


def ignored_on_resume(script: str | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in flags(script) if f.resume == IGNORE)


def run_control() -> frozenset:
    """The flags that change nothing a run computes (every script's)."""
    return frozenset(f.name for f in flags() if f.control)


def set_by_grid() -> frozenset:
    return frozenset(f"--{f.name}" for f in flags() if f.grid)


def shown() -> tuple[str, ...]:
    return tuple(f.name for f in flags() if f.shown)


def added_defaults() -> dict:
    """{flag: the value of runs made before it existed} (a criterion's rate flag aside: a run
    made before the criterion gave it 0, ``value_of``)."""
    return {f.name: f.added for f in _static_flags() if f.is_added}


def value_of(recorded: dict, name: str):
    """A flag's value in a run's recorded flags; one added since then had its ``added`` value."""
    flag = by_name().get(name)
    return recorded.get(name, flag.added if flag is not None and flag.is_added else None)


def cli_name(api: str) -> str | None:
    """The flag (``--name``) of the API's option ``api`` (``"cs_every"``, ``"rates.cs"``)."""
    found = [f.name for f in flags() if f.api == api]
    return f"--{found[0]}" if found else None
