"""Files that cannot be half-written, checkpoints that never execute pickled code when
loaded, and a digest that tells a damaged checkpoint from a good one: every writer and reader
of the project goes through these."""
import hashlib
import os
import pickle
import re
import tempfile
import warnings
import zipfile

import torch

from .errors import UserError
from .faults import crash_point


def atomic_write(path: str, write) -> None:
    """``write(binary_file)`` into a temporary file in the same folder, fsync, then rename over
    ``path``: a crash at any moment leaves either the old file or the new one, never a torn
    one. Temporaries are named ``.tmp-*``, so a restarted run can clear them."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("atomic_save:" + os.path.basename(path))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save reports ENOSPC as RuntimeError("... file write failed")
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write failed" in str(e)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
            raise UserError(f"could not write {path} ({reason}); the previous file is intact — "
                            "free space or fix permissions, then continue with --resume auto"
                            ) from None
        raise
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
            raise UserError(f"refusing to load {path}: it asks for {wanted[1]}, which plain "
                            "weights never need (unpickling it could run code); only load "
                            "checkpoints you trust, saved as plain state dicts") from None
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        raise UserError(f"{path} is not a checkpoint written by torch.save, or is corrupt "
                        f"({reason[1].strip() if reason else _first_sentence(e)}); give a "
                        "checkpoint.pt or a state dict saved with torch.save") from None
    # torch's legacy reader fails on arbitrary bytes with KeyError and the like
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError) as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({_first_sentence(e)}); "
                        "use an earlier copy or start again with --overwrite") from None


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


def check_seal(obj, path: str) -> bool:
    """True when ``obj`` (as loaded from ``path``) carries a digest and its contents match it,
    False when it carries none (written before digests, or not by these scripts); a mismatch
    is a UserError naming the file."""
    digest = obj.get(DIGEST_KEY) if isinstance(obj, dict) else None
    if not (isinstance(digest, str) and digest.startswith(_ALGORITHM + ":")):
        return False
    if digest != f"{_ALGORITHM}:{content_digest(obj)}":
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the digest "
                        "written with them; use an earlier copy or start again with --overwrite")
    return True


def content_digest(obj) -> str:
    """SHA-256 over ``obj`` (DIGEST_KEY of its top level left out) in a canonical order: each
    tensor's key path, dtype, shape and bytes, each other value's key path, type and repr
    (Python's float repr round-trips), mappings in the order of their keys' repr."""
    h = hashlib.sha256()
    items = obj.items() if isinstance(obj, dict) else ()
    _feed(h, "", {k: v for k, v in items if k != DIGEST_KEY} if isinstance(obj, dict) else obj)
    return h.hexdigest()


def _feed(h, path: str, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{path}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # any dtype, bfloat16 included
    elif isinstance(value, dict):
        h.update(f"{path}|map|{len(value)}\n".encode())
        for key in sorted(value, key=repr):
            _feed(h, f"{path}/{key!r}", value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{path}|seq|{len(value)}\n".encode())
        for i, item in enumerate(value):
            _feed(h, f"{path}/{i}", item)
    else:
        h.update(f"{path}|{type(value).__name__}|{value!r}\n".encode())
