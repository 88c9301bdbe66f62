"""Command-line flags shared by the dataset scripts, with the reference's names (SPEC §5).

Each script passes its own defaults (the paper's recipe) and dataset choices; ``check_args``
rejects invalid combinations with one line before any work starts.
"""
import argparse
import math

from models import MODELS, TIMM, arch_problem

from ..errors import UserError
from ..method.budget import ALLOCATIONS
from ..method.criteria import registry
from ..method.methods import METHODS, Pruning, resolve


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # one line like every other bad input (argparse adds the usage block); --help has it
        self.exit(2, f"error: {message}; see --help\n")


def build_parser(description: str, datasets: list[str], defaults: dict) -> argparse.ArgumentParser:
    p = OneLineParser(description=description,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", choices=datasets, default=datasets[0])
    g.add_argument("--data_path", default="datasets", help="dataset root (downloaded there if absent)")
    g.add_argument("--arch", default="resnet20",
                   help=f"one of: {', '.join(MODELS)}, imagenet_NAME for any torchvision "
                        f"classification model NAME, or {TIMM}NAME for any timm model NAME")
    g.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    g = p.add_argument_group("optimisation (the reference's flags)")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--batch_size", type=int, default=128, help="global batch (split over ranks)")
    g.add_argument("--learning_rate", type=float, default=0.01)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--decay", type=float, default=5e-4, help="weight decay")
    g.add_argument("--nesterov", type=int, choices=[0, 1], default=1,
                   help="1: SGD with Nesterov momentum (the FSDP scripts); 0: plain momentum "
                        "(FPGM's ImageNet recipe)")
    g.add_argument("--schedule", type=int, nargs="+", default=[1, 60, 120, 160],
                   help="epochs at which the learning rate is multiplied by the matching gamma")
    g.add_argument("--gammas", type=float, nargs="+", default=[10, 0.2, 0.2, 0.2])
    g.add_argument("--manualSeed", type=int, default=None, help="random seed (random if absent)")
    g = p.add_argument_group("pruning method (SPEC §9)")
    g.add_argument("--method", choices=list(METHODS), default="fsdp",
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    for name, crit in registry().items():  # --prune_rate_<criterion>, one per criterion
        users = [m for m in METHODS.values() if name in m.criteria]
        shares = ", ".join(f"{m.name} {m.default_rates[m.criteria.index(name)]:g}" for m in users)
        g.add_argument(f"--prune_rate_{name}", type=float, default=None,
                       help=f"final share of the {crit.title} criterion (default: {shares})")
    g.add_argument("--tau", type=float, default=None,
                   help="steepness of the asymptotic schedule, > 4/3 (fsdp: 10, asfp: 8)")
    g.add_argument("--attenuation", type=float, default=1.0,
                   help="fsdp's s: ζ(e) = s·(1 − θ(e)/θ3); the paper uses 0.2 on ImageNet32")
    g.add_argument("--attenuate", choices=["weights", "bn"], default="weights",
                   help="what a selected filter's factor multiplies: weights (the paper, "
                        "bit-exact with the authors' loop) or bn: also its BatchNorm's γ and β, so "
                        "the attenuation reaches the network in train mode "
                        "(docs/soft-pruning-and-batchnorm.md)")
    g.add_argument("--use_zero_scaling", action="store_true",
                   help="fsdp with ζ = 0 at every epoch: plain soft pruning, asymptotic rate")
    g.add_argument("--target_flops", type=float, default=None, metavar="F",
                   help="prune to a budget instead of rates: the compact network keeps F (in "
                        "(0, 1)) of the dense network's FLOPs, within 1 %% of the dense count; "
                        "fsdp's/fpgm's two rates then only set the split of each layer's count")
    g.add_argument("--target_params", type=float, default=None, metavar="P",
                   help="the same for the parameters")
    g.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="with a target: uniform (one rate for every layer, the default) or "
                        "global (counts per layer from the criterion's scores, normalised by "
                        "each layer's mean)")
    g.add_argument("--round_to", type=int, default=1, metavar="N",
                   help="keep a multiple of N filters in every pruned layer (selecting fewer "
                        "where needed): CPU/GPU kernels compute channels in blocks of 8 or 16")
    g.add_argument("--epoch_prune", type=int, default=1, help="update the mask every N epochs")
    g.add_argument("--epoch_apply_cs", type=int, default=2,
                   help="recompute CS scores at epochs divisible by N (reference: even epochs)")
    g.add_argument("--batch_prune_size", type=int, default=256, help="batch of the CS pass")
    g.add_argument("--max_iter_cs", type=int, default=10000, help="at most N batches per CS pass")
    g.add_argument("--cs_mode", choices=["reference", "eval"], default="reference",
                   help="reference: the CS pass runs in the mode the network is in (train mode "
                        "after an epoch, BN statistics updated); eval: always eval mode")
    g.add_argument("--layer_begin", type=int, default=0,
                   help="first parameter index of a prunable conv weight (reference indexing)")
    g.add_argument("--layer_end", type=int, default=None, help="last parameter index (default: all)")
    g.add_argument("--layer_inter", type=int, default=None,
                   help="take every N-th parameter index from layer_begin (reference: 3)")
    g.add_argument("--prune_include", default=None, help="regex: only prune convs whose name matches")
    g.add_argument("--prune_exclude", default=None, help="regex: never prune convs whose name matches")
    g = p.add_argument_group("run control")
    g.add_argument("--save_path", default="snapshots/run", help="snapshot folder")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a checkpoint; auto = save_path/checkpoint.pt if present")
    g.add_argument("--overwrite", action="store_true", help="replace an existing snapshot")
    g.add_argument("--stop_after", type=int, default=None, metavar="N",
                   help="stop (resumably) after N epochs of this invocation")
    g.add_argument("--evaluate", action="store_true", help="only evaluate (with --resume or "
                   "--pretrain_path) and exit")
    g.add_argument("--use_pretrain", action="store_true",
                   help=f"start from --pretrain_path; without it, --arch {TIMM}NAME downloads "
                        "timm's published weights of NAME")
    g.add_argument("--pretrain_path", default="", help="state dict or checkpoint to start from")
    g.add_argument("--use_state_dict", action="store_true", help="accepted for compatibility")
    g.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16"], default=None,
                   help="mixed precision: bf16 on CPU, fp16 on CUDA unless bf16 is asked")
    g.add_argument("--nan_policy", choices=["stop", "skip"], default="stop",
                   help="on a NaN/Inf loss: stop (keeping the last checkpoint) or skip the batch "
                        "(and undo its updates of the BN statistics)")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    g.add_argument("--keep_subnormals", action="store_true",
                   help="keep IEEE subnormal floats on the CPU, as the authors' loop did (bit for "
                        "bit with it late in an FSDP run, where such steps ran up to 7x slower on "
                        "some CPUs); by default they are flushed to zero "
                        "(docs/method.md, 'Differences from the authors' code')")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    g.add_argument("--ngpu", type=int, default=None, help="reference flag: 0 = CPU")
    g.add_argument("--print_freq", type=int, default=200, help="log every N batches")
    g.add_argument("--eval_bn_refresh", type=int, default=0, metavar="N",
                   help="also evaluate, every epoch, a copy whose BN statistics are re-estimated "
                        "on N training batches (the run itself is unchanged): the test curve of "
                        "the network being trained, not of stale statistics")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.set_defaults(**defaults)
    return p


def check_args(args) -> None:
    """Every invalid value, found before any work: one line naming the flag and the fix."""
    def bad(msg):
        raise UserError(msg)

    problem = arch_problem(args.arch)
    if problem is not None:
        bad(problem)
    check_finite_flags(args)
    if args.tau is not None and not args.tau > 4 / 3:
        bad(f"--tau must be > 4/3 (got {args.tau}); the paper uses 10")
    if len(args.schedule) != len(args.gammas):
        bad(f"--schedule has {len(args.schedule)} steps but --gammas has {len(args.gammas)}; "
            "give one gamma per step")
    for flag in ("epochs", "batch_size", "batch_prune_size", "max_iter_cs", "epoch_prune",
                 "epoch_apply_cs", "print_freq", "round_to"):
        if getattr(args, flag) < 1:
            bad(f"--{flag} must be ≥ 1 (got {getattr(args, flag)})")
    if args.workers < 0:
        bad(f"--workers must be ≥ 0 (got {args.workers})")
    if args.eval_bn_refresh < 0:
        bad(f"--eval_bn_refresh must be ≥ 0 (got {args.eval_bn_refresh})")
    if args.stop_after is not None and args.stop_after < 1:
        bad(f"--stop_after must be ≥ 1 (got {args.stop_after})")
    if args.learning_rate <= 0:
        bad(f"--learning_rate must be > 0 (got {args.learning_rate})")
    if args.attenuation < 0:
        bad(f"--attenuation must be ≥ 0 (got {args.attenuation})")
    for flag in ("momentum", "decay"):
        if getattr(args, flag) < 0:
            bad(f"--{flag} must be ≥ 0 (got {getattr(args, flag)})")
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


def check_finite_flags(args) -> None:
    """NaN and inf pass every comparison test (``nan < 0`` is False): refused by name before
    they reach the weights, where a NaN factor would poison every checkpoint after it."""
    flags = (*(f"prune_rate_{c}" for c in registry()), "tau", "attenuation", "learning_rate",
             "momentum", "decay", "target_flops", "target_params")
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{flag} must be a finite number (got {value})")
    if not all(math.isfinite(g) for g in args.gammas):
        raise UserError(f"--gammas must be finite numbers (got {' '.join(map(str, args.gammas))})")


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
