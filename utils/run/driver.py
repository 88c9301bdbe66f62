"""The dataset scripts' command line: parse, check every flag, run, and turn a user error into
one line on stderr with a non-zero exit. The run itself is ``trainer.Trainer``'s.

A script supplies its argument parser (the paper's defaults) and ``make_data(args) -> Data``
(utils/run/data.py).
"""
import os
import random
import sys

import torch

from models import MODELS, build_model

from . import loaders, lock
from .. import distributed as dist
from .. import subnormals
from ..compaction import ModelGraph
from ..errors import OptionError, UserError, WriteFault
from ..method.methods import Pruning
from .checkpoint import read_checkpoint, resume_changes
from .cli import check_args, cli_words, pruning_from_args, record_defaults
from .data import Data
from .engine import NonFinite, evaluate
from .precision import amp_dtype, seed_everything
from .pretrained import load_pretrained
from .save_path import check_save_path, file_identities
from .stop import StopRequest
from .trainer import Trainer


def main(parser, make_data, argv=None, check=None) -> int:
    """Parse, run, and turn user errors into one line on stderr with exit status 2.

    ``check(args)``: the script's own argument checks across flags (raise ``UserError``;
    each flag's own check is in the run configuration, ``utils.report.config``).
    """
    args = parser.parse_args(argv)
    # before any parallel CPU work, so the intra-op threads inherit the mode (utils/subnormals)
    with subnormals.flushed(not args.keep_subnormals) as flushing:
        if not (flushing or args.keep_subnormals):
            print("warning: this CPU cannot flush subnormal floats to zero (no FTZ/DAZ mode); "
                  "late FSDP epochs may run slower on it", file=sys.stderr)
        return _main(args, make_data, check)


def _main(args, make_data, check) -> int:
    try:
        pruning = check_run_args(args, check)
        return run(args, make_data, pruning)
    except UserError as e:
        if args.debug:
            raise
        # the last checkpoint on disk is whole: the run goes on from it once the cause is fixed
        then = ", then continue with --resume auto" if isinstance(e, WriteFault) else ""
        print(f"error: {_one_line(e)}{then}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, the last checkpoint stays
        print("interrupted; the last checkpoint is kept — continue with --resume auto",
              file=sys.stderr)
        return 130
    except NonFinite as e:
        if args.debug:
            raise
        if dist.is_main():  # every rank stops at the same batch and says the same: one line
            print(f"error: {e}; {_after_non_finite(args.save_path)}", file=sys.stderr)
        return 3
    finally:
        lock.release(args.save_path)
        dist.cleanup()


def check_run_args(args, check=None) -> Pruning:
    """Every check of the parsed flags that ``main`` makes before any work; fills in the
    method's defaults (once) and returns the run's method with its rates. Raises UserError,
    worded with the flags (reproduce.py checks its jobs' flags with it too)."""
    check_args(args)
    try:
        pruning = pruning_from_args(args)
    except OptionError as e:
        raise UserError(e.render(cli_words)) from None
    record_defaults(args, pruning)
    if check is not None:
        check(args)
    return pruning


def _after_non_finite(save_path: str) -> str:
    """What stays and what to do after a non-finite loss or state: the learning rate must
    match on resume, so a lower one is a new run."""
    if not os.path.isfile(os.path.join(save_path, "checkpoint.pt")):
        return ("no checkpoint was written yet — start again with a lower --learning_rate, or "
                "pass --nan_policy skip")
    return ("the last good checkpoint is kept — resume it with --nan_policy skip, or start "
            "again with a lower --learning_rate")


def _one_line(e: UserError) -> str:
    """The error as the command line words it (an option of the core by its flag). A
    UserError raised in a DataLoader worker comes back with the worker's traceback in its
    message; its own message is the last line, after the class name."""
    text = e.render(cli_words) if isinstance(e, OptionError) else str(e)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def run(args, make_data, pruning: Pruning | None = None) -> int:
    check_architecture(args.arch)
    device = dist.init_from_env(args.device)
    seed_given = args.manualSeed is not None
    args.manualSeed = dist.broadcast_object(args.manualSeed if seed_given
                                            else random.randint(1, 10000))
    seed_everything(args.manualSeed + dist.rank(), args.deterministic)
    if args.evaluate:
        return _evaluate_only(args, make_data(args), device)
    resume = check_save_path(args)
    checked = file_identities(args.save_path)  # locked later, when the run first writes there
    ckpt = read_checkpoint(resume, args, seed_given) if resume else None
    if ckpt is not None:
        args.manualSeed = ckpt["args"]["manualSeed"]  # the data order depends on it

    # the seed is final here
    trainer = Trainer(args, make_data(args), device, ckpt is not None, pruning, checked)
    if ckpt is not None:
        trainer.restore(ckpt, resume, resume_changes(ckpt, args))
    else:
        trainer.start()
    with StopRequest(device) as stop:
        code = trainer.train_epochs(stop)
    if code is not None:
        return code
    trainer.finish()
    return 0


def check_architecture(arch: str) -> None:
    """Refuse, before any data is read, a model FSDP can neither trace nor prune (its prunable
    convs, the cost of every epoch and the compact network come from its fx graph)."""
    if arch in MODELS:  # the 32×32 networks build in milliseconds; meta tensors would cost
        model = build_model(arch, 10, 3)  # a ~1.5 s first-use set-up in every process
    else:
        try:
            with torch.device("meta"):  # a torchvision model: no memory, no initialisation
                model = build_model(arch, 10, 3)
        except Exception:  # a builder that reads tensor values (RegNet's widths)
            model = build_model(arch, 10, 3)
    if not ModelGraph(model).pairs:
        raise UserError(f"--arch {arch} has no Conv2d whose output goes only to a "
                        f"BatchNorm2d ({_why_no_pairs(model)}), so FSDP has no filter to "
                        "prune; choose a CNN with BatchNorm, e.g. --arch resnet50")


def _why_no_pairs(model) -> str:
    kinds = {type(m).__name__ for m in model.modules()}
    if "BatchNorm2d" not in kinds:
        norms = sorted(k for k in kinds if k.endswith("Norm") or "Norm2d" in k)
        return f"it normalises with {', '.join(norms)}" if norms else "it has no BatchNorm2d"
    return "no conv feeds a BatchNorm2d alone"


def _evaluate_only(args, data: Data, device) -> int:
    model = build_model(args.arch, data.num_classes, data.in_channels).to(device)
    source = (os.path.join(args.save_path, "checkpoint.pt") if args.resume == "auto"
              else args.resume or args.pretrain_path)
    load_pretrained(model, source, args.arch)
    stats = evaluate(model, loaders.test_loader(args, data, device), device,
                     amp_dtype(args, device), data.batch_transform)
    if dist.is_main():
        print(f"test: top1 {stats['top1']:.2f}  top5 {stats['top5']:.2f}  "
              f"loss {stats['loss']:.4f}  ({stats['n']} images)")
    return 0
