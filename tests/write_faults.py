"""The write faults of tests/test_run_folder.py, made real in one interpreter of their own (its
imports paid once): the file-size limit (RLIMIT_FSIZE), a tiny file system (tmpfs) and a run
folder remounted read-only in the middle of a run. The mounts need a mount namespace of this
process's own (``unshare -m``, or ``unshare -rm`` for a user other than root), so that nothing
outside it sees them; where the machine gives none, those scenarios say why they could not run
(and their tests fail).

    python -m tests.write_faults WORKDIR      # writes WORKDIR/results.json

Every scenario runs the real command line in this process (``tests.cli``) and records what a
test checks: the exit status, stderr, what the run folder holds afterwards and the epoch of
the checkpoint that loads from it.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import traceback

import torch

import notebook_cifar
import utils.files
import utils.run.trainer
from tests.cli import run_in_process
from tests.fakedata import write_cifar
from tests.snapshots import temporaries
from utils.errors import UserError
from utils.files import safe_load

BASE = ["--dataset", "cifar10", "--arch", "resnet20", "--prune_rate_cs", "0.1",
        "--prune_rate_gm", "0.4", "--epochs", "2", "--batch_size", "32", "--batch_prune_size",
        "32", "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "1",
        "--device", "cpu"]


class Work:
    def __init__(self, root: str):
        self.root = root
        self.data = os.path.join(root, "data")
        self.earlier = os.path.join(root, "earlier")  # stopped after epoch 0 of 2

    def argv(self, save: str, *extra: str) -> list[str]:
        return [*BASE, "--data_path", self.data, "--save_path", save, *extra]

    def copy_of_earlier(self, name: str, mount: list[str] | None = None) -> str:
        """The earlier run copied to the folder ``name``: a mount point of ``mount`` (the
        arguments before the target: a tmpfs; ``["--bind"]``: bound onto itself, so that it
        can be remounted read-only alone)."""
        folder = os.path.join(self.root, name)
        os.makedirs(folder)
        if mount:
            _mount(*mount, *([folder] if mount == ["--bind"] else []), folder)
        shutil.copytree(self.earlier, folder, dirs_exist_ok=True)
        return folder


def outcome(proc, folder: str, log_before: bytes | None = None) -> dict:
    try:
        epoch = safe_load(os.path.join(folder, "checkpoint.pt"))["epoch"]
    except UserError:
        epoch = None
    with open(os.path.join(folder, "log.txt"), "rb") as f:
        log = f.read()
    return {"code": proc.returncode, "err": proc.stderr, "files": sorted(os.listdir(folder)),
            "temporaries": temporaries(folder), "checkpoint_epoch": epoch,
            "log_only_grew": log_before is None or log.startswith(log_before)}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _read_only(folder: str, on: bool = True) -> None:
    _mount("-o", f"remount,{'ro' if on else 'rw'},bind", folder)


def _log(folder: str) -> bytes:
    with open(os.path.join(folder, "log.txt"), "rb") as f:
        return f.read()


def with_file_size_limit(limit: int, argv: list[str]):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        return run_in_process(notebook_cifar, *argv, check=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# --- the scenarios: each returns what its test checks --------------------------------------------

def checkpoint_file_too_large(w: Work) -> dict:
    """The resumed epoch's checkpoint (2 MB) outgrows a 512 kB limit the log stays under."""
    save = w.copy_of_earlier("checkpoint-too-large")
    log = _log(save)
    return outcome(with_file_size_limit(512 * 1024, w.argv(save, "--resume", "auto")), save, log)


def log_file_too_large(w: Work) -> dict:
    """log.txt has reached the limit: its next line is the first write of the resume."""
    save = w.copy_of_earlier("log-too-large")
    with open(os.path.join(save, "log.txt"), "ab") as f:
        f.write(b"#" * (8192 - f.tell()))
    log = _log(save)
    return outcome(with_file_size_limit(8192, w.argv(save, "--resume", "auto")), save, log)


def plot_file_too_large(w: Work) -> dict:
    """A fresh run: schedule.png (60 kB) is its first file over 32 kB."""
    save = os.path.join(w.root, "plot-too-large")
    return outcome(with_file_size_limit(32 * 1024, w.argv(save)), save)


def disk_full(w: Work) -> dict:
    """The earlier run on a tmpfs with 512 kB to spare: the next checkpoint does not fit."""
    size = sum(os.path.getsize(os.path.join(w.earlier, f)) for f in os.listdir(w.earlier))
    save = w.copy_of_earlier("disk-full", ["-t", "tmpfs", "-o", f"size={size + 512 * 1024}",
                                           "tmpfs"])
    log = _log(save)
    return outcome(run_in_process(notebook_cifar, *w.argv(save, "--resume", "auto"),
                                  check=False), save, log)


def read_only_mid_run(w: Work) -> dict:
    """The folder turns read-only right after the resumed epoch's checkpoint: args.json,
    written next (the copy's --save_path changed on resume, so it is recorded with the first
    checkpoint after it), fails, and the new checkpoint is the one that loads."""
    save = w.copy_of_earlier("read-only-mid-run", ["--bind"])
    log = _log(save)
    real = utils.run.trainer.write_checkpoint

    def then_read_only(path, **kwargs):
        real(path, **kwargs)
        _read_only(save)
    utils.run.trainer.write_checkpoint = then_read_only
    try:
        proc = run_in_process(notebook_cifar, *w.argv(save, "--resume", "auto"), check=False)
    finally:
        utils.run.trainer.write_checkpoint = real
    return outcome(proc, save, log)


def read_only_at_rename(w: Work) -> dict:
    """The folder turns read-only between the checkpoint's temporary and its rename: neither
    the rename nor the temporary's removal can happen. Made writable again, ``--resume auto``
    removes the leftover and finishes the run."""
    save = w.copy_of_earlier("read-only-at-rename", ["--bind"])
    log = _log(save)
    real = utils.files.crash_point

    def read_only_before_rename(name):
        if name == "atomic_save:checkpoint.pt":
            _read_only(save)
    utils.files.crash_point = read_only_before_rename
    try:
        proc = run_in_process(notebook_cifar, *w.argv(save, "--resume", "auto"), check=False)
    finally:
        utils.files.crash_point = real
    result = outcome(proc, save, log)
    _read_only(save, on=False)
    result["again"] = outcome(run_in_process(notebook_cifar, *w.argv(save, "--resume", "auto"),
                                             check=False), save)
    return result


SCENARIOS = {"checkpoint-file-too-large": checkpoint_file_too_large,
             "log-file-too-large": log_file_too_large,
             "plot-file-too-large": plot_file_too_large, "disk-full": disk_full,
             "read-only-mid-run": read_only_mid_run, "read-only-at-rename": read_only_at_rename}
NEED_MOUNTS = ("disk-full", "read-only-mid-run", "read-only-at-rename")


def mounts_work(root: str) -> str | None:
    """None when this process may mount (root, in a namespace of its own); else why not."""
    probe = os.path.join(root, "mount-probe")
    os.makedirs(probe)
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
        _mount("--make-private", probe)
        subprocess.run(["umount", probe], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return (f"cannot mount here ({getattr(e, 'stderr', b'') or e}); needs a mount "
                "namespace (unshare -m, or unshare -rm)")
    return None


def main(root: str) -> None:
    torch.set_num_threads(1)  # tiny runs: a second thread only spins on a shared CPU
    w = Work(root)
    write_cifar(w.data, n_train=64, n_test=32)
    run_in_process(notebook_cifar, *w.argv(w.earlier, "--stop_after", "1"))
    no_mounts = mounts_work(root) if os.environ.get("FSDP_MOUNT_NAMESPACE") else \
        "not in a mount namespace of its own (unshare -m)"
    results = {}
    for name, scenario in SCENARIOS.items():
        if name in NEED_MOUNTS and no_mounts:
            results[name] = {"skipped": no_mounts}
            continue
        try:
            results[name] = scenario(w)
        except Exception:  # a write fault that escaped as a traceback: its test shows it
            results[name] = {"crashed": traceback.format_exc()}
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
