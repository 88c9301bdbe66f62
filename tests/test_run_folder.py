"""The run folder under a second process and under write faults (docs/troubleshooting.md,
"One run per folder" and "Faults while writing"): what the catalogue of bad inputs cannot
show with one command — two processes at once, real faults of the file system — and the rules
behind it: only this project's own temporaries are removed, files get the user's umask, and no
write follows a symbolic link out of the folder."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import compact as compact_cli
import notebook_cifar
from tests.cli import Forked, run_in_process
from tests.fakedata import write_cifar
from tests.snapshots import files_of, write_finished_run
from utils.errors import UserError, WriteFault
from utils.files import TEMPORARY_PREFIX, append_text, atomic_write
from utils.run import lock
from utils.run.save_path import prepare_save_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--dataset", "cifar10", "--arch", "resnet20", "--prune_rate_cs", "0.1",
        "--prune_rate_gm", "0.4", "--epochs", "1", "--batch_size", "32", "--batch_prune_size",
        "32", "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "1",
        "--device", "cpu"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny runs: a second thread only spins


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def hold_in_another_process(folder):
    """A process that holds ``folder``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from utils.run import lock; "
                             "lock.hold(sys.argv[1], ''); print('held', flush=True); "
                             "sys.stdin.read()", str(folder)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "held\n"
    return proc


# --- one run per folder ------------------------------------------------------------------------

def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_loses_nothing(tmp_path):
    data, save = tmp_path / "data", tmp_path / "run"
    write_cifar(str(data), n_train=64, n_test=32)
    argv = [*BASE, "--data_path", str(data), "--save_path", str(save)]
    first = Forked("notebook_cifar.py", *argv, env=ONE_THREAD)
    try:
        deadline = time.time() + 240
        while not (save / "log.txt").exists():  # the lock is taken before the first write
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # it holds the folder, whatever it was doing
        for extra in ([], ["--overwrite"], ["--resume", "auto"]):
            second = run_in_process(notebook_cifar, *argv, *extra, check=False)
            assert second.returncode == 2 and one_line(second.stderr) == (
                f"error: {save} is in use by another process (pid {first.pid}); wait for it to "
                "finish, or choose another --save_path"), extra
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    log = (save / "log.txt").read_text()
    assert log.count("arguments: ") == 1 and "done: final pruned top1" in log
    assert json.loads((save / "summary.json").read_text())["epochs"] == 1


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold_in_another_process(tmp_path)
    with pytest.raises(UserError, match=rf"in use by another process \(pid {holder.pid}\)"):
        lock.hold(str(tmp_path), "wait")
    holder.kill()
    holder.wait()
    with lock.holding(str(tmp_path), "wait"):  # the kernel dropped the dead holder's lock
        pass


def test_compact_refuses_a_run_in_use_and_holds_the_one_it_writes_into(tmp_path, capsys,
                                                                      monkeypatch):
    run = tmp_path / "run"
    write_finished_run(str(run))
    holder = hold_in_another_process(run)
    try:
        before = files_of(run)
        assert compact_cli.main([str(run)]) == 2
        assert one_line(capsys.readouterr().err) == (
            f"error: {run} is in use by another process (pid {holder.pid}); wait for it to "
            "finish: compact.py works on a finished run")
        assert files_of(run) == before
    finally:
        holder.kill()
        holder.wait()

    def compacting(snapshot, *_):  # while it writes, a second process is refused
        with open(run / ".lock", "rb") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise UserError("stop here")
    monkeypatch.setattr(compact_cli, "compact_checkpoint", compacting)
    assert compact_cli.main([str(run)]) == 2 and "stop here" in capsys.readouterr().err
    with lock.holding(str(run), "wait"):  # and released when compact.py is done
        pass


def test_a_write_into_the_folder_between_check_and_lock_is_refused(tmp_path):
    """What the run checked before building its model is what it locks: another process that
    wrote in between (a run started at the same moment) makes it stop, not mix."""
    (tmp_path / "log.txt").write_text("another run\n")
    with pytest.raises(UserError, match="another process wrote into --save_path"):
        prepare_save_path(str(tmp_path), overwrite=False, checked={})
    lock.release(str(tmp_path))
    assert (tmp_path / "log.txt").read_text() == "another run\n"


# --- temporaries, modes, symbolic links --------------------------------------------------------

def test_only_temporaries_of_this_project_whose_writer_is_gone_are_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = os.getppid()
    names = {f"{TEMPORARY_PREFIX}{gone.pid}-0123abcd-checkpoint.pt": False,  # a killed run's
             f"{TEMPORARY_PREFIX}{alive}-0123abcd-comparison.md": True,  # a live writer's
             f"{TEMPORARY_PREFIX}notes": True, ".tmp-notes": True, ".tmp-x-checkpoint.pt": True}
    for name in names:
        (tmp_path / name).write_text("mine")
    prepare_save_path(str(tmp_path), overwrite=False)
    lock.release(str(tmp_path))
    assert set(os.listdir(tmp_path)) == {n for n, kept in names.items() if kept} | {".lock"}


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_files_get_the_mode_of_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "summary.json"), lambda f: f.write(b"{}"))
        append_text(str(tmp_path / "log.txt"), "a line\n")
    finally:
        os.umask(previous)
    for name in ("summary.json", "log.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_log_that_is_a_symbolic_link_is_never_appended_to(tmp_path):
    """The run refuses such a folder before it starts (the catalogue's log-is-a-symlink); the
    append itself refuses too, should the link appear while the run trains."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's\n")
    (tmp_path / "run").mkdir()
    os.symlink(outside, tmp_path / "run" / "log.txt")
    with pytest.raises(WriteFault, match="log.txt is a symbolic link"):
        append_text(str(tmp_path / "run" / "log.txt"), "a line\n")
    assert outside.read_text() == "not the run's\n"


# --- real write faults (tests/write_faults.py) -------------------------------------------------

def _mount_namespace() -> list[str]:
    """The command that gives a process a mount namespace of its own: as root ``unshare -m``;
    as another user, inside a user namespace where it is root (``unshare -rm``: tmpfs and
    read-only bind mounts are allowed there); [] where neither works."""
    command = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    if not shutil.which("unshare"):
        return []
    ok = subprocess.run([*command, "true"], capture_output=True).returncode == 0
    return command if ok else []


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Every scenario of tests/write_faults.py, in one interpreter (in a mount namespace of its
    own where this machine allows one)."""
    work = tmp_path_factory.mktemp("faults")
    command = [sys.executable, "-m", "tests.write_faults", str(work)]
    env = ONE_THREAD
    namespace = _mount_namespace()
    if namespace:
        command, env = [*namespace, *command], {**env, "FSDP_MOUNT_NAMESPACE": "1"}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


# scenario, the file that fails, the system's reason, the epoch of the checkpoint that loads
# afterwards (1: the earlier run's; 2: the one written just before the fault; None: the fault
# came before the first)
FAULTS = [
    ("checkpoint-file-too-large", "checkpoint.pt", "File too large", 1),
    ("log-file-too-large", "log.txt", "File too large", 1),
    ("plot-file-too-large", "schedule.png", "File too large", None),
    ("disk-full", "checkpoint.pt", "No space left on device", 1),
    ("read-only-mid-run", "args.json", "Read-only file system", 2),
    ("read-only-at-rename", "checkpoint.pt", "Read-only file system", 1),
]


@pytest.mark.parametrize("name,file,reason,epoch", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_write_fault_is_one_line_and_the_last_checkpoint_loads(faults, name, file, reason,
                                                                 epoch):
    result = faults[name]
    assert "skipped" not in result, f"this scenario could not run: {result.get('skipped')}"
    assert "crashed" not in result, result.get("crashed")
    line = one_line(result["err"])
    assert result["code"] == 2
    assert line.startswith(f"error: could not write {os.sep}") and f"{file} ({reason}); " in line
    assert line.endswith(", then continue with --resume auto")
    assert result["checkpoint_epoch"] == epoch and result["log_only_grew"]
    if name == "read-only-at-rename":  # the temporary could not be removed either: named …
        (left,) = result["temporaries"]
        assert f"and its temporary {left} is left behind" in line
        again = result["again"]  # … and removed by the resume that finishes the run
        assert again["code"] == 0 and not again["temporaries"], again["err"]
        assert "summary.json" in again["files"] and again["checkpoint_epoch"] == 2
    else:
        assert not result["temporaries"]
