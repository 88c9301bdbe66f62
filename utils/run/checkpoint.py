"""checkpoint.pt: its layout (written, read and restored here only), the RNG states it
carries, so that a resumed run continues bit for bit, and what makes one good: the digest of
its contents (utils/files.py), weights and optimizer state without NaN or inf, and the flags a
resumed run must share with it."""
import random

import numpy as np
import torch

from ..errors import UserError
from ..files import DIGEST_KEY, atomic_save, check_seal, safe_load, sealed
from ..method.criteria import registry
from ..report.logger import ADDED_FLAGS
from .engine import NonFiniteState

FORMAT = "fsdp-checkpoint/2"
# a resumed run must rebuild the same method, budget, schedule, mask layout, optimisation and
# data pipeline (and every criterion's --prune_rate_<name> after the budget, see
# resume_must_match): another batch size would also skip or repeat samples of an interrupted
# epoch, and another --amp computes in other precisions
RESUME_MUST_MATCH = ("method", "attenuate", "arch", "dataset", "epochs", "target_flops",
                     "target_params", "allocation", "tau", "attenuation", "use_zero_scaling",
                     "round_to", "layer_begin", "layer_end", "layer_inter", "prune_include",
                     "prune_exclude", "keep_subnormals", "batch_size", "learning_rate",
                     "momentum", "decay", "nesterov", "schedule", "gammas", "epoch_prune",
                     "epoch_apply_cs", "batch_prune_size", "max_iter_cs", "cs_mode", "amp",
                     "use_pretrain", "pretrain_path")
_RATES_AT = RESUME_MUST_MATCH.index("tau")  # a budget replaces the rates: it is named first
# where the data and the folder are, how the run executes and what it reports: none changes
# what it computes (the sampler gives the same batches for any --workers, --eval_bn_refresh
# evaluates a copy), but another --device or --deterministic may change the last bits, and
# --nan_policy skip is the way past a non-finite loss. A change is logged and recorded in
# args.json (a script's own flags beside its resume_keys are treated alike).
RESUME_MAY_CHANGE = ("data_path", "save_path", "workers", "device", "ngpu", "deterministic",
                     "print_freq", "eval_bn_refresh", "tensorboard", "nan_policy")
# this invocation's own controls, and a flag without effect: never compared (--manualSeed
# must match when given, else the checkpoint's is used)
RESUME_IGNORED = ("resume", "overwrite", "stop_after", "evaluate", "debug", "use_state_dict",
                  "manualSeed")


def resume_must_match() -> tuple[str, ...]:
    rates = tuple(f"prune_rate_{c}" for c in registry())
    return RESUME_MUST_MATCH[:_RATES_AT] + rates + RESUME_MUST_MATCH[_RATES_AT:]


def read_checkpoint(path: str, args, seed_given: bool, resume_keys: tuple = ()) -> dict:
    """Load a checkpoint to resume, refusing other formats and runs made with other flags."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project; give a checkpoint.pt "
                        "written by these scripts")
    if ckpt.get("format") != FORMAT:
        raise UserError(f"{path} was written in format {ckpt.get('format')!r} by an older version "
                        f"of these scripts (this one reads {FORMAT!r}); finish that run with the "
                        "version that started it, or start again with --overwrite")
    check_seal(ckpt, path)  # before its flags are read: they are part of what it covers
    bad = non_finite(ckpt)  # kept by versions that wrote a diverged state
    if bad:
        raise UserError(f"checkpoint {path} holds NaN or inf in {len(bad)} of its tensors "
                        f"(first: {bad[0]}): training had diverged when it was written; use an "
                        "earlier copy or start again with --overwrite")
    for key in resume_must_match() + tuple(resume_keys) + (("manualSeed",) if seed_given else ()):
        old, new = _recorded(ckpt["args"], key), getattr(args, key)
        if old != new:
            raise UserError(f"checkpoint {path} was made with --{key} {_spelled(old)}, this run "
                            f"asks for {_spelled(new)}; resume with the same flags or choose "
                            "another --save_path")
    return ckpt


def resume_changes(ckpt: dict, args, resume_keys: tuple = ()) -> dict:
    """The flags that may change on resume and did: {flag: (the checkpoint's, this run's)}."""
    fixed = set(resume_must_match()) | set(resume_keys) | set(RESUME_IGNORED)
    recorded = ckpt["args"]
    return {key: (recorded[key], new) for key, new in sorted(vars(args).items())
            if key not in fixed and key in recorded and recorded[key] != new}


def _recorded(args: dict, key: str):
    """A flag's value in a checkpoint's args; one added since it was written had its default
    then (a new criterion's rate: 0)."""
    default = 0.0 if key.startswith("prune_rate_") else ADDED_FLAGS.get(key)
    return args.get(key, default)


def _spelled(value) -> str:
    """As on the command line: ``--schedule 1 60``, not ``[1, 60]``."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def write_checkpoint(path: str, *, epoch: int, batch: int, epoch_state, args, data, model,
                     optimizer, scaler, pruner, probe, history: list, wall: float) -> None:
    """At an epoch boundary (``epoch`` = the next epoch, ``batch`` 0) or inside one; with the
    digest of its contents (format 2 without one: written before digests, still read)."""
    trained = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    refuse_non_finite(trained, epoch, batch)  # the previous checkpoint stays the last good one
    state = {"format": FORMAT, "epoch": epoch, "batch": batch, "epoch_state": epoch_state,
             "arch": args.arch, "method": args.method, "num_classes": data.num_classes,
             "in_channels": data.in_channels, "input_shape": list(data.input_shape),
             "args": vars(args), **trained,
             "scaler": scaler.state_dict() if scaler else None, "mask": pruner.state_dict(),
             "probe": probe.state_dict() if probe else None,
             "history": history, "wall_seconds": wall, "rng": rng_state()}
    atomic_save(sealed(state), path)


def refuse_non_finite(trained: dict, epoch: int, batch: int) -> None:
    """NonFiniteState when the weights or the optimizer's state (``trained``: their state
    dicts under "model" and "optimizer") hold NaN or inf; ``epoch``, ``batch``: where the run
    stands, as write_checkpoint takes them."""
    bad = non_finite(trained)
    if bad:
        where = f"in epoch {epoch} after batch {batch}" if batch else f"after epoch {epoch - 1}"
        raise NonFiniteState(where, bad)


def non_finite(ckpt: dict) -> list[str]:
    """The key paths of the floating tensors of the weights and the optimizer's state that
    hold NaN or inf (the other parts hold counts, scores and RNG states)."""
    named = [(name, t) for part in ("model", "optimizer")
             for name, t in _tensors(ckpt.get(part), part) if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()  # one sync
    return [name for (name, _), ok in zip(named, finite) if not ok]


def _tensors(value, path: str):
    """(key path, tensor) of every tensor in nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}.{i}")


def restore_checkpoint(ckpt: dict, *, model, optimizer, scaler, pruner, probe) -> dict:
    """Load the checkpoint's states into the run's objects; returns where the run stands:
    ``epoch``, ``batch``, ``epoch_state`` (partial sums of an interrupted epoch), ``history``,
    ``wall``, and ``digest``: whether it carried one (read_checkpoint checked it)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    pruner.load_state_dict(ckpt["mask"])
    if probe is not None and ckpt.get("probe"):
        probe.load_state_dict(ckpt["probe"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return {"epoch": int(ckpt["epoch"]), "batch": int(ckpt.get("batch", 0)),
            "epoch_state": ckpt.get("epoch_state"), "history": list(ckpt["history"]),
            "wall": float(ckpt["wall_seconds"]), "digest": DIGEST_KEY in ckpt}


def rng_state() -> dict:
    """Every RNG the training touches, as tensors and numbers (weights_only-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python_version": py[0], "python": torch.tensor(py[1], dtype=torch.int64),
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": [int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), None))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
