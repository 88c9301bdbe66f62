"""The dataset scripts' command lines, built from the run configuration
(``utils.report.config``: every flag once, with the reference's names) with each script's
defaults (the paper's recipe) and datasets; ``check_args`` rejects invalid values and
combinations with one line before any work starts, and ``cli_words`` words the core's option
errors with the flags.
"""
import argparse

from models import MODELS, TIMM, arch_problem

from ..errors import UserError, api_name
from ..method.criteria import registry
from ..method.methods import METHODS, Pruning, resolve
from ..report import config


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # one line like every other bad input (argparse adds the usage block); --help has it
        self.exit(2, f"error: {message}; see --help\n")


def build_parser(description: str, datasets: list[str], defaults: dict,
                 script: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``utils.report.config`` that ``script`` (notebook_<script>.py) has, in their
    groups; ``defaults``: the script's recipe over the table's defaults."""
    p = OneLineParser(description=description,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in config.flags(script):
        group = groups.get(flag.group) or groups.setdefault(flag.group,
                                                             p.add_argument_group(flag.group))
        group.add_argument(f"--{flag.name}", **_argparse_options(flag, datasets))
    p.set_defaults(**defaults)
    return p


def _argparse_options(flag: config.Flag, datasets: list[str]) -> dict:
    if flag.parse is None:
        return {"action": "store_true", "help": _help(flag)}
    options = {"type": flag.parse, "default": flag.default, "help": _help(flag)}
    if flag.name == "dataset":
        options.update(choices=datasets, default=datasets[0])
    elif flag.choices is not None:
        options["choices"] = list(flag.choices)
    for key in ("nargs", "const", "metavar"):
        if getattr(flag, key) is not None:
            options[key] = getattr(flag, key)
    return options


def _help(flag: config.Flag) -> str:
    """The table's help; the ones that name this checkout's models are written here."""
    if flag.name == "arch":
        return (f"one of: {', '.join(MODELS)}, imagenet_NAME for any torchvision "
                f"classification model NAME, or {TIMM}NAME for any timm model NAME")
    if flag.name == "method":
        return "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    if flag.name == "use_pretrain":
        return (f"start from --pretrain_path; without it, --arch {TIMM}NAME downloads timm's "
                "published weights of NAME")
    return flag.help


def cli_words(key: str, value: str | None) -> str:
    """An option the core names (``errors.OptionError``) as the command line spells it."""
    if key == "target":
        return "--target_flops F or --target_params P"
    flag = config.cli_name(key)
    if flag is None:
        return api_name(key, value)
    return flag if value is None else f"{flag} {value}"


def spelled(value) -> str:
    """A flag's value as on the command line: ``--schedule 1 60``, not ``[1, 60]``."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check_args(args) -> None:
    """Every invalid value, found before any work: one line naming the flag and the fix. Each
    flag's own check comes from the table; here are the checks across flags."""
    def bad(msg):
        raise UserError(msg)

    problem = arch_problem(args.arch)
    if problem is not None:
        bad(problem)
    for flag in config.flags():
        if flag.check is None or not hasattr(args, flag.name):
            continue
        value = getattr(args, flag.name)
        wrong = flag.check(value)
        if wrong:
            head, _, advice = wrong.partition("; ")
            bad(f"--{flag.name} {head} (got {spelled(value)})" + (f"; {advice}" if advice else ""))
    if len(args.schedule) != len(args.gammas):
        bad(f"--schedule has {len(args.schedule)} steps but --gammas has {len(args.gammas)}; "
            "give one gamma per step")
    if args.target_flops is not None and args.target_params is not None:
        bad("--target_flops and --target_params contradict each other; give one of them")
    if args.resume and args.overwrite:
        bad("--resume and --overwrite contradict each other; give one of them")
    if args.use_pretrain and not args.pretrain_path and not args.arch.startswith(TIMM):
        bad(f"--use_pretrain needs --pretrain_path PATH (only --arch {TIMM}NAME downloads "
            "weights by name)")
    if args.evaluate and not (args.resume or args.pretrain_path):
        bad("--evaluate needs --resume PATH or --pretrain_path PATH")
    if args.ngpu == 0:
        args.device = "cpu"
    check_device(args.device)


def check_device(name: str | None) -> None:
    """``--device`` names a device torch knows, and one this machine has."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device; give cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"--device {name}: this machine has no CUDA GPU; give --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} GPU(s) (cuda:0 … "
                            f"cuda:{count - 1}); give one of them")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: these scripts run on cpu or cuda; give one of them")


def pruning_from_args(args) -> Pruning:
    """The run's method, rates and schedule parameters from the flags, checked (one line per
    problem); ``args`` is left as it is."""
    rates = {c: getattr(args, f"prune_rate_{c}") for c in registry()}
    target = {"flops": args.target_flops, "params": args.target_params}
    return resolve(args.method, rates, args.epochs, args.tau, args.attenuation,
                   args.use_zero_scaling, args.attenuate, args.epoch_prune,
                   target=target if any(v is not None for v in target.values()) else None,
                   allocation=args.allocation)


def record_defaults(args, pruning: Pruning) -> None:
    """Write what the method filled in into ``args`` (once, in ``main``): args.json and the
    checkpoint then hold every rate and τ the run used, which a resume must match. Under a
    target the rates split each layer's count (``--prune_rate_*`` as given: a one-criterion
    method takes none) and the allocation is recorded."""
    if pruning.target is None:
        for c in registry():
            setattr(args, f"prune_rate_{c}", pruning.rates.get(c, 0.0))
    else:
        args.allocation = pruning.target.allocation
    args.tau = pruning.tau
