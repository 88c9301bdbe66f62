"""Files that cannot be half-written, checkpoints that never execute pickled code when
loaded, and a digest that tells a damaged checkpoint from a good one: every writer and reader
of the project goes through these.

A write that fails (a full disk, a read-only file system, the file-size limit) raises
``WriteFault``: one line naming the file, the reason and the fix, the previous file intact. No
write follows a symbolic link: a replaced file's link is replaced, an appended one refused.
(Past the file-size limit, ``ulimit -f``, a write fails with EFBIG: CPython ignores the
SIGXFSZ that would otherwise kill the process without a word.)"""
import errno
import hashlib
import os
import pickle
import re
import secrets
import stat
import warnings
import zipfile

import torch

from .errors import UserError, WriteFault
from .faults import crash_point

# temporaries of an atomic write: a name no user would choose, with the writer's pid, so that a
# later run clears exactly the ones whose writer is gone (``remove_stale_temporaries``)
TEMPORARY_PREFIX = ".fsdp-tmp-"
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r"(\d+)-[0-9a-f]{8}-")

# what to do about a failed write, by errno; the reason itself is the system's own words
_FIXES = {errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space within your quota",
          errno.EROFS: "make its file system writable",
          errno.EFBIG: "raise the file-size limit (ulimit -f)",
          errno.EACCES: "fix its permissions", errno.EPERM: "fix its permissions"}


def atomic_write(path: str, write) -> None:
    """``write(binary_file)`` into a temporary file in the same folder, fsync, then rename over
    ``path``: a crash at any moment leaves either the old file or the new one, never a torn
    one. The file gets the mode a plain ``open`` gives (0666 less the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = create_temporary(folder, os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("atomic_save:" + os.path.basename(path))
        os.replace(tmp, path)  # over a symbolic link: replaces the link, never its target
    except BaseException as e:
        left = _remove(tmp)
        # torch.save reports a failed write as RuntimeError("... file write failed"), the
        # OSError (if any) in its context
        cause = _os_error(e) if isinstance(e, (OSError, RuntimeError)) else None
        if cause is None and not (isinstance(e, RuntimeError) and "write failed" in str(e)):
            raise
        reason = cause.strerror if cause is not None and cause.strerror else \
            str(e).splitlines()[0]
        kept = ("the previous file is intact" if os.path.lexists(path)
                else "nothing was half-written")
        raise write_fault(path, reason, cause.errno if cause is not None else None, kept,
                          left) from None
    _fsync_folder(folder)


def append_text(path: str, text: str) -> None:
    """Append ``text`` to ``path`` (created with the umask's mode), refusing a symbolic link: a
    run's log must not grow a file outside its folder."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WriteFault(f"{path} is a symbolic link ({os.readlink(path)}); files are only "
                             "appended inside their folder — replace the link by a regular "
                             "file") from None
        raise write_fault(path, e.strerror or str(e), e.errno, "its earlier lines are intact") \
            from None


def write_fault(path: str, reason: str, code: int | None, kept: str,
                leftover: str | None = None, doing: str = "write") -> WriteFault:
    """The one-line error of a failed write: the file, the system's reason, what is kept and
    the fix (and a temporary that could not be removed)."""
    fix = _FIXES.get(code, "free space or fix permissions")
    left = (f", and its temporary {os.path.basename(leftover)} is left behind" if leftover
            else "")
    return WriteFault(f"could not {doing} {path} ({reason}); {kept}{left} — {fix}")


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporaries of this project's atomic writes whose writer is gone — killed
    while writing — or is this process (its write failed); a live writer's, and every file of
    any other name, stay."""
    for name in os.listdir(folder):
        found = _TEMPORARY.match(name)
        if not found or not _writer_gone(int(found[1])):
            continue
        path = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):  # a folder or link of that name: not ours
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise write_fault(path, e.strerror or str(e), e.errno,
                              "it is a temporary left by a killed run", doing="remove") from None


def create_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new file ``.fsdp-tmp-<pid>-<random>-<name>`` in ``folder``, with the mode a plain
    open gives (mkstemp's 0600 would lock other users out of the finished file)."""
    while True:
        tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
                                   f"{name}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _remove(tmp: str | None) -> str | None:
    """Remove a failed write's temporary; the path when that fails too (a read-only file
    system): the error of the write itself is the one to report."""
    if tmp is None:
        return None
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        return None
    except OSError:
        return tmp
    return None


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: itself, or one in its cause or context (torch.save raises a
    RuntimeError during the file's OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _writer_gone(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _fsync_folder(folder: str) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through ``atomic_write``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str, map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors, numbers, strings and containers only."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; give the path of a checkpoint.pt")
    try:
        with warnings.catch_warnings():
            # a non-torch pickle makes torch warn about its protocol before refusing it: the
            # error below says it all, and stderr must stay one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines (with terminal escapes) advising weights_only=False:
        # keep only the culprit
        wanted = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if wanted:
            why = (f"it asks for {wanted[1]}, which plain weights never need (unpickling it "
                   "could run code)")
            raise _unreadable(f"refusing to load {path}: {why}; only load checkpoints you "
                                 "trust, saved as plain state dicts", why) from None
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        why = f"corrupt ({reason[1].strip() if reason else _first_sentence(e)})"
        raise _unreadable(f"{path} is not a checkpoint written by torch.save, or is {why}; "
                             "give a checkpoint.pt or a state dict saved with torch.save",
                             why) from None
    # torch's legacy reader fails on arbitrary bytes with KeyError and the like
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError) as e:
        why = f"corrupt or truncated: {_first_sentence(e)}"
        raise _unreadable(f"checkpoint {path} is corrupt or truncated ({_first_sentence(e)}); "
                             "use an earlier copy or start again with --overwrite", why) from None


def _unreadable(message: str, reason: str) -> UserError:
    """A file ``safe_load`` cannot (or must not) read: ``reason`` is why, without the fix a
    checkpoint's reader words (a compact model's reader words its own)."""
    error = UserError(message)
    error.reason = reason
    return error


def _first_sentence(e: BaseException) -> str:
    """torch's errors run to paragraphs; their first sentence names the problem."""
    text = " ".join(str(e).split())
    return text.split(". ")[0] if text else type(e).__name__


# --- the digest written inside a checkpoint ----------------------------------------------------
# torch's zip reader checks no checksum: a bit flipped on disk or in a copy loads as a plausible
# number (an exponent bit turns 0.05 into 1e37). A digest of the contents, written with them and
# checked on every load for use, turns that into one line naming the file. It detects damage,
# not tampering: anyone can recompute it.

DIGEST_KEY = "digest"
_ALGORITHM = "sha256"


def sealed(obj: dict) -> dict:
    """``obj`` with the digest of its contents under DIGEST_KEY, for ``atomic_save``."""
    return {**obj, DIGEST_KEY: f"{_ALGORITHM}:{content_digest(obj)}"}


def seal_matches(obj) -> bool | None:
    """None when ``obj`` carries no digest, else whether its contents match it."""
    digest = obj.get(DIGEST_KEY) if isinstance(obj, dict) else None
    if not (isinstance(digest, str) and digest.startswith(_ALGORITHM + ":")):
        return None
    return digest == f"{_ALGORITHM}:{content_digest(obj)}"


def check_seal(obj, path: str) -> bool:
    """True when ``obj`` (as loaded from ``path``) carries a digest and its contents match it,
    False when it carries none (written before digests, or not by these scripts); a mismatch
    is a UserError naming the file."""
    matches = seal_matches(obj)
    if matches is False:
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the digest "
                        "written with them; use an earlier copy or start again with --overwrite")
    return bool(matches)


def content_digest(obj) -> str:
    """SHA-256 over ``obj`` (DIGEST_KEY of its top level left out) in a canonical order: each
    tensor's key path, dtype, shape and bytes, each other value's key path, type and repr
    (Python's float repr round-trips), mappings in the order of their keys' repr."""
    h = hashlib.sha256()
    items = obj.items() if isinstance(obj, dict) else ()
    text: list = []  # the lines since the last tensor, hashed in one piece: the same stream
    _feed(h, text, "", {k: v for k, v in items if k != DIGEST_KEY} if isinstance(obj, dict)
          else obj)
    h.update("".join(text).encode())
    return h.hexdigest()


_LEAVES = {str, int, float, bool, type(None)}  # most of a manifest: no isinstance walk for them


def _feed(h, text: list, path: str, value) -> None:
    if type(value) in _LEAVES:
        text.append(f"{path}|{type(value).__name__}|{value!r}\n")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        text.append(f"{path}|{t.dtype}|{tuple(t.shape)}\n")
        h.update("".join(text).encode())
        text.clear()
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # any dtype, bfloat16 included
    elif isinstance(value, dict):
        text.append(f"{path}|map|{len(value)}\n")
        for key in sorted(value, key=repr):
            _feed(h, text, f"{path}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        text.append(f"{path}|seq|{len(value)}\n")
        for i, item in enumerate(value):
            _feed(h, text, f"{path}/{i}", item)
    else:
        text.append(f"{path}|{type(value).__name__}|{value!r}\n")
