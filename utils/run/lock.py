"""One process per run folder: an advisory lock (``flock``) on the file ``.lock`` inside it,
taken before the first write and held until the process ends — a training run and its resume,
compact.py on the run, a reproduce.py job. A second process is refused in one line naming the
holder's pid; the kernel drops the lock when its holder ends however it ends, so a killed run
leaves no stale lock behind.

``.lock`` stays empty: taking the lock changes no byte or mtime of the folder, and the holder's
pid comes from ``/proc/locks`` (Linux; elsewhere the message names no pid). Needs ``fcntl``:
Linux and macOS, not Windows.
"""
import contextlib
import errno
import os
import sys

from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # real path of a folder -> the descriptor holding its lock


def hold(folder: str, fix: str) -> None:
    """Lock ``folder`` (which exists) for the rest of this process, or until ``release``; a
    folder this process holds already is fine. Refuses a folder another process holds:
    ``fix`` says what to do then."""
    key = os.path.realpath(folder)
    if key in _held:
        return
    fd = _open(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder_pid(fd)
        os.close(fd)
        raise _busy(folder, pid, fix) from None
    except OSError as e:  # no flock on this file system (Lustre without -o flock, some FUSE)
        os.close(fd)
        print(f"warning: cannot lock {folder} ({e.strerror}): its file system does not support "
              "flock, so nothing keeps a second process out of it", file=sys.stderr)
        return
    _held[key] = fd


def release(folder: str) -> None:
    fd = _held.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


@contextlib.contextmanager
def holding(folder: str, fix: str):
    """``hold`` for the time of a ``with`` block."""
    held_before = os.path.realpath(folder) in _held
    hold(folder, fix)
    try:
        yield
    finally:
        if not held_before:
            release(folder)


def refuse_if_busy(folder: str, fix: str) -> None:
    """Refuse ``folder`` if another process holds it, without writing anything: the early
    check of a command that locks it later, or only reads it."""
    if os.path.realpath(folder) in _held:
        return
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # no lock file (a fresh folder, a run of an older version): nobody holds it
        return
    try:
        _require_fcntl()
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, _holder_pid(fd), fix) from None
    except OSError:  # no flock on this file system: hold() warns
        pass
    finally:
        os.close(fd)  # drops the shared lock, if it was taken


def _open(folder: str) -> int:
    """The lock file, created empty if missing. Read-only: an open for writing would keep the
    file system from being remounted read-only while a run holds it."""
    _require_fcntl()
    path = os.path.join(folder, LOCK_FILE)
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; it must be this folder's own lock "
                            "file: remove the link") from None
        raise UserError(f"cannot write to {folder} ({e.strerror}); choose a writable "
                        "folder") from None


def _require_fcntl() -> None:
    if fcntl is None:
        raise UserError("locking a run folder needs fcntl, which this system lacks (Windows); "
                        "run the scripts on Linux or macOS")


def _busy(folder: str, pid: int | None, fix: str) -> UserError:
    by = f" (pid {pid})" if pid else ""
    return UserError(f"{folder} is in use by another process{by}; {fix}")


def _holder_pid(fd: int) -> int | None:
    """The pid holding an flock on ``fd``'s file, from /proc/locks (Linux); None elsewhere."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF" ("->" marks a waiter)
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return int(fields[4]) or None
    return None
