"""The run folder (``--save_path``): which files make a run, refusing to mix two runs in one
folder, and creating it only once every input has been checked."""
import os

from .. import distributed as dist
from ..errors import UserError
from ..files import create_temporary, remove_stale_temporaries, write_fault

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
    except OSError as e:
        raise _unwritable(path, e) from None
    _probe(path)
    remove_stale_temporaries(path)
    if overwrite:
        for name in SNAPSHOT_FILES:
            _remove_old(os.path.join(path, name))


def _probe(path: str) -> None:
    """Write and remove a file of the temporaries' naming (never a name of the user's)."""
    try:
        fd, probe = create_temporary(path, "write-test")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise _unwritable(path, e) from None


def _remove_old(path: str) -> None:
    try:
        os.unlink(path)  # a symbolic link goes, its target stays
    except FileNotFoundError:
        pass
    except OSError as e:
        raise write_fault(path, e.strerror or str(e), e.errno,
                          "the earlier run's other files are as they were", doing="remove") \
            from None


def _unwritable(path: str, e: OSError) -> UserError:
    return UserError(f"cannot write to --save_path {path} ({e.strerror}); choose a writable "
                     "folder")
