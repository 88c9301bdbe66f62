"""The run folder (``--save_path``): which files make a run, refusing to mix two runs in one
folder — or two processes — and creating it only once every input has been checked."""
import os

from .. import distributed as dist
from ..errors import UserError
from ..files import create_temporary, remove_stale_temporaries, write_fault
from . import lock

SNAPSHOT_FILES = ("checkpoint.pt", "metrics.csv", "summary.json", "args.json", "log.txt",
                  "curves.png", "schedule.png", "model_compact.pt")
# every file a run may write: a network with parts kept whole is a torch.export program
# (model_compact.pt2) instead of model_compact.pt
RUN_FILES = SNAPSHOT_FILES + ("model_compact.pt2",)
# what a run starting afresh would overwrite of an earlier one: a --resume auto without a
# checkpoint must not (the checkpoint deleted to save space, say)
RESULT_FILES = ("metrics.csv", "summary.json", "model_compact.pt", "model_compact.pt2")
BUSY_FIX = "wait for it to finish, or choose another --save_path"


def check_save_path(args) -> str | None:
    """The checkpoint to resume from, if any; refuses to mix two runs in one folder, a folder
    another process is using, and a file of the run that is a symbolic link. Writes nothing."""
    path = args.save_path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--save_path {path} is a file; give a folder")
    if dist.is_main():  # the rank that locks it (the others never write there)
        lock.refuse_if_busy(path, BUSY_FIX)
    _refuse_links(path, args.overwrite)
    resume = args.resume
    if resume == "auto":
        auto = os.path.join(path, "checkpoint.pt")
        resume = auto if os.path.isfile(auto) else None
        if resume is None:
            _refuse_results_without_checkpoint(path)
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(path, f))]
    if present and not (args.resume or args.overwrite):
        raise UserError(f"--save_path {path} already holds a run ({present[0]}); add --resume auto "
                        "to continue it, --overwrite to replace it, or choose another --save_path")
    return resume


def file_identities(path: str) -> dict:
    """Every run file's identity (inode, size, mtime): taken when the folder is checked and
    again once it is locked, it shows whether another process wrote in between."""
    state = {}
    for name in RUN_FILES:
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:  # absent (or the folder is: prepare_save_path says why)
            continue
        state[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


def prepare_save_path(path: str, overwrite: bool, checked: dict | None = None) -> None:
    """Create and lock the folder once every input has been checked, so bad input leaves
    nothing behind; refuse it if another process wrote into it since ``checked``
    (``file_identities`` at the check); clear temporaries of a run killed while writing, and with
    ``overwrite`` the files of the run being replaced."""
    if not dist.is_main():  # only rank 0 writes
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e) from None
    lock.hold(path, BUSY_FIX)
    if checked is not None and file_identities(path) != checked:
        raise UserError(f"another process wrote into --save_path {path} while this run was "
                        "starting; look at what it left, then run the command again")
    _probe(path)
    remove_stale_temporaries(path)
    if overwrite:
        for name in RUN_FILES:
            _remove_old(os.path.join(path, name))


def _refuse_links(path: str, overwrite: bool) -> None:
    """A run's file that is a symbolic link would be written through (or replaced); with
    ``overwrite`` prepare_save_path removes the links themselves, never their targets."""
    link = os.path.join(path, "tensorboard")
    if os.path.islink(link):
        raise UserError(f"{link} is a symbolic link (to {os.readlink(link)}); a run writes only "
                        "inside its --save_path: replace the link by a folder")
    for name in () if overwrite else RUN_FILES:
        link = os.path.join(path, name)
        if os.path.islink(link):
            raise UserError(f"{link} is a symbolic link (to {os.readlink(link)}); a run writes "
                            "only inside its --save_path: replace the link by a copy of the "
                            "file, or start again with --overwrite")


def _refuse_results_without_checkpoint(path: str) -> None:
    results = [f for f in RESULT_FILES if os.path.exists(os.path.join(path, f))]
    if results:
        raise UserError(f"--resume auto: {path} holds the results of a run ({results[0]}) but "
                        "no checkpoint.pt to continue from; run again with --overwrite instead "
                        "to start afresh, or choose another --save_path")


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
