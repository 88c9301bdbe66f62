"""The run folder (``--save_path``): which files make a run, refusing to mix two runs in one
folder, and creating it only once every input has been checked."""
import os

from .. import distributed as dist
from ..errors import UserError

SNAPSHOT_FILES = ("checkpoint.pt", "metrics.csv", "summary.json", "args.json", "log.txt",
                  "curves.png", "schedule.png", "model_compact.pt")


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
