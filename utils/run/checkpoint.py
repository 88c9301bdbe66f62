"""checkpoint.pt: its layout (written, read and restored here only), the RNG states it
carries (every rank's, so that a resumed run continues bit for bit: docs/runs.md, 'Resuming a
run'), and what makes one good: the digest of
its contents (utils/files.py), weights and optimizer state without NaN or inf, and the flags a
resumed run must share with it."""
import random
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist
from ..errors import UserError
from ..files import DIGEST_KEY, atomic_save, check_seal, safe_load, sealed
from ..report import config
from .engine import NonFiniteState

FORMAT = "fsdp-checkpoint/3"  # 3: one RNG state per rank; 2: rank 0's, all GPUs' CUDA states
READABLE = ("fsdp-checkpoint/2", FORMAT)


def read_checkpoint(path: str, args, seed_given: bool) -> dict:
    """Load a checkpoint to resume, refusing other formats and runs made with other flags:
    every flag of this run that the run configuration says must match on resume (and the
    seed when given)."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project; give a checkpoint.pt "
                        "written by these scripts")
    if ckpt.get("format") not in READABLE:
        raise UserError(f"{path} was written in format {ckpt.get('format')!r} by an older version "
                        f"of these scripts (this one reads {' and '.join(map(repr, READABLE))}); "
                        "finish that run with the version that started it, or start again with "
                        "--overwrite")
    check_seal(ckpt, path)  # before its flags are read: they are part of what it covers
    bad = non_finite(ckpt)  # kept by versions that wrote a diverged state
    if bad:
        raise UserError(f"checkpoint {path} holds NaN or inf in {len(bad)} of its tensors "
                        f"(first: {bad[0]}): training had diverged when it was written; use an "
                        "earlier copy or start again with --overwrite")
    for key in must_match(args) + (("manualSeed",) if seed_given else ()):
        old, new = config.value_of(ckpt["args"], key), getattr(args, key)
        if old != new:
            raise UserError(f"checkpoint {path} was made with --{key} {_spelled(old)}, this run "
                            f"asks for {_spelled(new)}; resume with the same flags or choose "
                            "another --save_path")
    return ckpt


def must_match(args) -> tuple[str, ...]:
    """The flags of this run (its script's) that a resume must share with the checkpoint."""
    return tuple(k for k in config.must_match() if hasattr(args, k))


def resume_changes(ckpt: dict, args) -> dict:
    """The flags that may change on resume and did: {flag: (the checkpoint's, this run's)}."""
    fixed = set(config.must_match()) | set(config.ignored_on_resume())
    recorded = ckpt["args"]
    return {key: (recorded[key], new) for key, new in sorted(vars(args).items())
            if key not in fixed and key in recorded and recorded[key] != new}


def _spelled(value) -> str:
    """As on the command line: ``--schedule 1 60``, not ``[1, 60]``."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def write_checkpoint(path: str, *, epoch: int, batch: int, epoch_state, args, data, model,
                     optimizer, scaler, pruner, probe, history: list, wall: float,
                     rng: list[dict]) -> None:
    """At an epoch boundary (``epoch`` = the next epoch, ``batch`` 0) or inside one; with the
    digest of its contents (format 2 without one: written before digests, still read).
    ``rng``: every rank's RNG states, in rank order (``rng_states``)."""
    trained = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    refuse_non_finite(trained, epoch, batch)  # the previous checkpoint stays the last good one
    state = {"format": FORMAT, "epoch": epoch, "batch": batch, "epoch_state": epoch_state,
             "arch": args.arch, "method": args.method, "num_classes": data.num_classes,
             "in_channels": data.in_channels, "input_shape": list(data.input_shape),
             "args": vars(args), **trained,
             "scaler": scaler.state_dict() if scaler else None, "mask": pruner.state_dict(),
             "probe": probe.state_dict() if probe else None,
             "history": history, "wall_seconds": wall, "rng": rng}
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


def restore_checkpoint(ckpt: dict, *, model, optimizer, scaler, pruner, probe,
                       device: torch.device) -> dict:
    """Load the checkpoint's states into the run's objects; returns where the run stands:
    ``epoch``, ``batch``, ``epoch_state`` (partial sums of an interrupted epoch), ``history``,
    ``wall``, ``digest``: whether it carried one (read_checkpoint checked it), and
    ``rng_ranks``: how many processes' RNG states it holds."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    pruner.load_state_dict(ckpt["mask"])
    if probe is not None and ckpt.get("probe"):
        probe.load_state_dict(ckpt["probe"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    ranks = restore_rng(ckpt["rng"], device)
    return {"epoch": int(ckpt["epoch"]), "batch": int(ckpt.get("batch", 0)),
            "epoch_state": ckpt.get("epoch_state"), "history": list(ckpt["history"]),
            "wall": float(ckpt["wall_seconds"]), "digest": DIGEST_KEY in ckpt,
            "rng_ranks": ranks}


# -- RNG states: one per rank, each seeded with seed + rank (utils/run/trainer.py) -------------

def rng_states(device: torch.device) -> list[dict]:
    """Every rank's RNG states, in rank order, on every rank (a collective under DDP)."""
    return dist.all_gather_object(rng_state(device))


def rng_state(device: torch.device) -> dict:
    """This process's RNGs, as tensors and numbers (weights_only-loadable): Python's, numpy's,
    torch's CPU generator and, on a GPU, the generator of this rank's device only (asking for
    every visible GPU's would start CUDA on each of them, and a resume with fewer visible
    could not put them back)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python_version": py[0], "python": torch.tensor(py[1], dtype=torch.int64),
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": [int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(saved, device: torch.device) -> int:
    """Put back this rank's RNG states from a checkpoint's ``rng``: a list, one per rank
    (format 3), or rank 0's alone (format 2). A rank the checkpoint holds none for (the run
    now has more processes) keeps the fresh seeding it started with, seed + rank: the resume
    goes on, but not bit for bit (another world size splits every batch otherwise anyway).
    Returns how many ranks' states the checkpoint holds."""
    states = saved if isinstance(saved, list) else [saved]
    if dist.rank() < len(states):
        _set_rng_state(states[dist.rank()], device)
    return len(states)


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), None))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type != "cuda":  # a CPU run (or one resumed on the CPU) leaves CUDA alone
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    else:  # format 2: one state per GPU that was visible, this device's at its index
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(state.get("cuda", ())):
            torch.cuda.set_rng_state(state["cuda"][index], device)


def read_for_compaction(path, allow_unfinished: bool = False) -> tuple:
    """(the checkpoint's path, the checkpoint) of a run folder or its checkpoint.pt, for
    compaction: its digest checked, and every field compaction reads checked for type and
    size, since a checkpoint may come from anyone (an arch by a name the model zoo knows, the
    mask's selection as filter indices by conv name, an input of at most 65 536 pixels a
    side). A run that has not finished is refused unless ``allow_unfinished``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a snapshot directory or its checkpoint.pt")
    ckpt = safe_load(str(path))
    missing = [k for k in ("arch", "num_classes", "in_channels", "model", "mask")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or not isinstance(ckpt["mask"], dict) or "selected" not in ckpt["mask"]:
        raise UserError(f"{path} lacks {missing or ['mask.selected']}: it is not an FSDP training "
                        "checkpoint; pass the checkpoint.pt of a finished run")
    check_seal(ckpt, str(path))
    _check_fields(ckpt, path)
    if not allow_unfinished:
        _refuse_unfinished(ckpt, path)
    return path, ckpt


def _check_fields(ckpt: dict, path) -> None:
    def bad(what):
        raise UserError(f"{path} is damaged or not a checkpoint of these scripts ({what}); pass "
                        "the checkpoint.pt of a finished run")

    arch = ckpt["arch"]
    if not isinstance(arch, str) or not arch.isprintable() or len(arch) > 200:
        bad("its arch is not a model name")
    for key in ("num_classes", "in_channels"):
        if type(ckpt[key]) is not int or not 0 < ckpt[key] < 2 ** 20:
            bad(f"its {key} is not a positive integer")
    shape = ckpt.get("input_shape")
    if shape is not None and (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
            type(s) is int and 0 < s <= 2 ** 16 for s in shape)):
        bad("its input_shape is not three sizes")
    if shape is not None:
        ckpt["input_shape"] = tuple(shape)
    selected = ckpt["mask"]["selected"]
    if not isinstance(selected, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and not v.is_floating_point()
            and v.dim() == 1 for k, v in selected.items()):
        bad("its mask is not filter indices by conv name")
    if not isinstance(ckpt["model"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        bad("its model is not a state dict")


def _refuse_unfinished(ckpt: dict, path) -> None:
    """A checkpoint of these scripts records where its run stands: before the last epoch's
    mask update its selected filters are not zero, and the compact network would differ."""
    epochs = (ckpt.get("args") or {}).get("epochs") if isinstance(ckpt.get("args"), dict) else None
    done, batch = ckpt.get("epoch"), ckpt.get("batch", 0)
    if type(epochs) is int and type(done) is int and (done < epochs or batch):
        raise UserError(f"{path} is the checkpoint of an unfinished run (after {done} of "
                        f"{epochs} epochs): its selected filters are not zero yet; finish it with "
                        "--resume auto, or pass --allow_unfinished to compact it as it is")


def restore_checked(ckpt: dict, path, **objects) -> dict:
    """``restore_checkpoint``, one line naming the file where a part of it does not fit the
    run's objects (a checkpoint is read from disk: sealed, yet edited by hand, or of another
    version of these scripts)."""
    try:
        return restore_checkpoint(ckpt, **objects)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        first = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"checkpoint {path} does not fit this run ({first}); use an earlier "
                        "copy or start again with --overwrite") from None
