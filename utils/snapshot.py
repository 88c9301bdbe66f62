"""The snapshot folder and the checkpoint's layout, written and read here only."""
import os

from . import distributed as dist
from .checkpoint import atomic_save, rng_state, safe_load, set_rng_state
from .errors import UserError
from .method.criteria import registry

SNAPSHOT_FILES = ("checkpoint.pt", "metrics.csv", "summary.json", "args.json", "log.txt",
                  "curves.png", "schedule.png", "model_compact.pt")
FORMAT = "fsdp-checkpoint/2"
# a resumed run must rebuild the same method, schedule, mask layout and data pipeline (and
# every criterion's --prune_rate_<name>, see resume_must_match)
RESUME_MUST_MATCH = ("method", "attenuate", "arch", "dataset", "epochs", "tau", "attenuation",
                     "use_zero_scaling", "round_to", "layer_begin", "layer_end", "layer_inter",
                     "prune_include", "prune_exclude")
# flags added after checkpoints of this format were first written: their value in those
ADDED_FLAGS = {"attenuate": "weights"}


def resume_must_match() -> tuple[str, ...]:
    rates = tuple(f"prune_rate_{c}" for c in registry())
    return RESUME_MUST_MATCH[:5] + rates + RESUME_MUST_MATCH[5:]


def check_save_path(args) -> str | None:
    """The checkpoint to resume from, if any; refuses to mix two runs in one folder."""
    path = args.save_path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--save_path {path} is a file; give a folder")
    resume = args.resume
    if resume == "auto":
        auto = os.path.join(path, "checkpoint.pt")
        resume = auto if os.path.isfile(auto) else None
    present = [f for f in SNAPSHOT_FILES if os.path.exists(os.path.join(path, f))]
    if present and not (args.resume or args.overwrite):
        raise UserError(f"--save_path {path} already holds a run ({present[0]}); add --resume auto "
                        "to continue it, --overwrite to replace it, or choose another --save_path")
    return resume


def prepare_save_path(path: str, overwrite: bool) -> None:
    """Create and probe the folder once every input has been checked, so bad input leaves
    nothing behind; clear temporaries of a run killed while writing, and with ``overwrite``
    the files of the run being replaced."""
    if not dist.is_main():  # only rank 0 writes
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --save_path {path} ({e.strerror}); choose a writable "
                        "folder") from None
    for name in os.listdir(path):
        if name.startswith(".tmp-") or (overwrite and name in SNAPSHOT_FILES):
            os.unlink(os.path.join(path, name))


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
    for key in resume_must_match() + tuple(resume_keys) + (("manualSeed",) if seed_given else ()):
        default = 0.0 if key.startswith("prune_rate_") else ADDED_FLAGS.get(key)  # a new criterion
        old, new = ckpt["args"].get(key, default), getattr(args, key)
        if old != new:
            raise UserError(f"checkpoint {path} was made with --{key} {old}, this run asks for "
                            f"{new}; resume with the same flags or choose another --save_path")
    return ckpt


def write_checkpoint(path: str, *, epoch: int, batch: int, epoch_state, args, data, model,
                     optimizer, scaler, pruner, probe, history: list, wall: float) -> None:
    """At an epoch boundary (``epoch`` = the next epoch, ``batch`` 0) or inside one."""
    atomic_save({"format": FORMAT, "epoch": epoch, "batch": batch, "epoch_state": epoch_state,
                 "arch": args.arch, "method": args.method, "num_classes": data.num_classes,
                 "in_channels": data.in_channels, "input_shape": list(data.input_shape),
                 "args": vars(args), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler else None, "mask": pruner.state_dict(),
                 "probe": probe.state_dict() if probe else None,
                 "history": history, "wall_seconds": wall, "rng": rng_state()}, path)


def restore_checkpoint(ckpt: dict, *, model, optimizer, scaler, pruner, probe) -> dict:
    """Load the checkpoint's states into the run's objects; returns where the run stands:
    ``epoch``, ``batch``, ``epoch_state`` (partial sums of an interrupted epoch), ``history``,
    ``wall``."""
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
            "wall": float(ckpt["wall_seconds"])}
