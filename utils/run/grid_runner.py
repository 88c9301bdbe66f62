"""Run a grid's jobs as subprocesses: one at a time, or one per listed GPU in parallel.

Each job is started in a session of its own, so a Ctrl-C in the terminal reaches this
process only; it forwards the signal once to every running job, which finishes its batch,
writes a resumable checkpoint and exits 130 (143 for SIGTERM). A second Ctrl-C is forwarded
too: the jobs then leave at once, keeping their last checkpoint. A job's output goes to
``console.txt`` in its folder.
"""
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..report.logger import read_json
from .grid import Job

POLL_SECONDS = 0.2


def _die_with_parent() -> None:
    # Linux: a job that outlived a killed reproduce.py would race the rerun for its folder;
    # ask the kernel to send it SIGTERM (a resumable stop) when its parent dies
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def gpu_count() -> int:
    return torch.cuda.device_count()


def parse_gpus(text: str | None) -> list[int] | None:
    """``--gpus 0,1,2,3`` → [0, 1, 2, 3], every one a GPU this process can see."""
    if text is None:
        return None
    try:
        gpus = [int(g) for g in text.split(",")]
    except ValueError:
        raise UserError(f"--gpus {text}: give GPU numbers separated by commas, e.g. 0,1,2,3") \
            from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError(f"--gpus {text}: give each GPU once, numbered from 0")
    count = gpu_count()
    missing = [g for g in gpus if g >= count]
    if missing:
        have = f"{count} ({', '.join(map(str, range(count)))})" if count else "no CUDA GPU"
        raise UserError(f"--gpus names GPU {missing[0]}, but this machine has {have}; "
                        + ("leave --gpus out to run the jobs one at a time" if not count
                           else f"give GPUs from 0 to {count - 1}"))
    return gpus


def job_env(gpu: int | None) -> dict:
    """The environment of a job on ``gpu`` (None: the default device, on the CPU the CPU)."""
    env = dict(os.environ)
    if gpu is not None:
        # --gpus counts the GPUs this process sees: map through a CUDA_VISIBLE_DEVICES of ours
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[gpu] if visible else str(gpu)
    return env


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    signal: int | None = None

    @property
    def unfinished(self) -> list[str]:
        return self.failed + self.stopped + self.not_started


class GridRunner:
    def __init__(self, jobs: list[Job], gpus: list[int] | None, python: str, root: str,
                 resuming: set[str], log=print):
        self.pending = deque(jobs)
        self.total = len(jobs)
        self.slots = list(gpus) if gpus else [None]
        self.python, self.root, self.resuming, self.log = python, root, resuming, log
        self.running: dict = {}  # slot -> (job, process, start time, number)
        self.outcome = Outcome()
        self._told = False  # the stop was announced

    def run(self) -> Outcome:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.pending or self.running:
                if self.outcome.signal is None:
                    self._fill_slots()
                elif not self._told:
                    self._told = True
                    self.log(f"{signal.Signals(self.outcome.signal).name}: stopping the running "
                             "jobs (each writes a resumable checkpoint); no new job starts")
                self._reap()
                time.sleep(POLL_SECONDS)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.outcome

    def _on_signal(self, signum, frame) -> None:
        # no printing here: the handler may interrupt a print of the main loop
        self.outcome.signal = signum
        self.pending.clear()
        for _, proc, _, _ in self.running.values():
            proc.send_signal(signum)

    def _fill_slots(self) -> None:
        for slot in self.slots:
            if slot not in self.running and self.pending:
                self._start(self.pending.popleft(), slot)

    def _start(self, job: Job, slot) -> None:
        number = self.total - len(self.pending)
        try:
            os.makedirs(job.folder, exist_ok=True)
            console = _open_console(job.folder)
        except OSError as e:
            self.outcome.failed.append(job.name)
            self.log(f"[{number}/{self.total}] {job.name}: not started: cannot write "
                     f"{os.path.join(job.folder, 'console.txt')} ({e.strerror})")
            return
        with console:
            proc = subprocess.Popen(
                job.command(self.python), cwd=self.root, env=job_env(slot), stdout=console,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        if self.outcome.signal is not None:  # the signal came while it was being started
            proc.send_signal(self.outcome.signal)
        self.running[slot] = (job, proc, time.time(), number)
        verb = "continued" if job.name in self.resuming else "started"
        where = f" on GPU {slot}" if slot is not None else ""
        self.log(f"[{number}/{self.total}] {job.name}: {verb}{where}")

    def _reap(self) -> None:
        for slot, (job, proc, t0, number) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[slot]
            minutes = (time.time() - t0) / 60
            prefix = f"[{number}/{self.total}] {job.name}"
            summary = os.path.join(job.folder, "summary.json")
            if code == 0 and os.path.isfile(summary):
                self.outcome.done.append(job.name)
                self.log(f"{prefix}: done in {minutes:.1f} min{_top1(job.folder)}")
            elif code == 0 or self.outcome.signal is not None:
                # asked to stop (130/143, or killed by the signal before its handler was set),
                # or --stop_after: --resume auto continues from the last checkpoint
                self.outcome.stopped.append(job.name)
                self.log(f"{prefix}: stopped after {minutes:.1f} min; it continues from its "
                         "checkpoint when the grid is run again")
            else:
                self.outcome.failed.append(job.name)
                self.log(f"{prefix}: failed (exit {code}) after {minutes:.1f} min: "
                         f"{_last_line(job.folder)} — its output: "
                         f"{os.path.join(job.folder, 'console.txt')}")
                self._give_up_if_all_fail()

    def _give_up_if_all_fail(self) -> None:
        """Two failures and no success yet: a wrong --data_path or a missing dataset, most
        likely, which every other job would hit as well."""
        if len(self.outcome.failed) < 2 or self.outcome.done or not self.pending:
            return
        self.outcome.not_started = [job.name for job in self.pending]
        self.pending.clear()
        self.log(f"the first {len(self.outcome.failed)} runs failed: not starting the other "
                 f"{len(self.outcome.not_started)}, which would most likely fail alike")


def _open_console(folder: str):
    """console.txt for appending; never through a symbolic link, out of the run folder."""
    fd = os.open(os.path.join(folder, "console.txt"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    return os.fdopen(fd, "ab")


def _top1(folder: str) -> str:
    summary = read_json(folder, "summary.json") or {}
    top1 = summary.get("final_top1")
    return f", final top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""


def _last_line(folder: str) -> str:
    try:
        with open(os.path.join(folder, "console.txt"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
