"""A dataset script's command line run through its own ``main`` in the test's process: the exit
status, stdout and stderr that ``python <script> ARGS`` gives, without a new interpreter's
seconds of imports. A run that a signal or a crash must stop needs a process of its own:
``Forked`` runs the script as ``__main__`` in a process forked from a server that has imported
torch and the suite's modules once (multiprocessing's fork server), which saves each such run
the ~4.5 s of a fresh interpreter's imports (torch, and torch._dynamo, which torch.optim pulls
in). What a new interpreter itself does — its imports' own output, a broken install — is
tested with ``sys.executable`` where it matters (a bad --arch in tests/test_bad_inputs.py, the
installed package, torchrun)."""
import atexit
import contextlib
import io
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from utils.run.driver import main


def entry(module, argv) -> int:
    """What ``python <script> argv`` runs, in this process."""
    return main(module.parser(), module.make_data, argv, check=getattr(module, "check", None))


def run_in_process(module, *args, check=True) -> subprocess.CompletedProcess:
    """``entry`` with stdout and stderr captured (a parser error exits through SystemExit, as in
    the script)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry(module, list(args))
        except SystemExit as e:
            code = e.code
    return _checked(subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue()),
                    check)


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """``check``: raise on a non-zero status, with the output's tail."""
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


# what a script's process imports before its first epoch; none of it starts a thread or runs
# an op, so the server forks cleanly
PRELOAD = ["torch", "torch._dynamo", "torch.optim", "matplotlib.pyplot", "utils.run.driver",
           "notebook_cifar", "notebook_imagenet", "notebook_gsc"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fork_server():
    """multiprocessing's fork-server context, its server importing ``PRELOAD`` (started on the
    first process asked of it: once per test process)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class Forked:
    """``python <script> ARGS`` with ``env`` in ``cwd`` (the checkout), as a process of its own
    forked from the fork server: ``pid``, ``poll()``, ``wait()``, ``send_signal()``,
    ``communicate()`` and ``returncode`` as ``subprocess.Popen`` has them (a signal's exit is
    its negative number), stdout and stderr as text."""

    def __init__(self, script, *args, env=None, cwd=ROOT):
        self._folder = tempfile.mkdtemp(prefix="forked-")
        self._out, self._err = (os.path.join(self._folder, n) for n in ("out", "err"))
        env = dict(os.environ if env is None else env)
        self._process = fork_server().Process(
            target=_run_script, args=(script, list(args), cwd, env, self._out, self._err))
        self._process.start()
        self.pid = self._process.pid
        self.returncode = None

    def poll(self):
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self.returncode

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def communicate(self, timeout=None):
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.wait()
            raise
        out, err = (_read(p) for p in (self._out, self._err))
        shutil.rmtree(self._folder, ignore_errors=True)
        return out, err


def _read(path) -> str:
    """A stream's text; none where the process ended before it opened it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def run_forked(script, *args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """``Forked`` to its end: what ``subprocess.run(..., capture_output=True, text=True)``
    returns."""
    proc = Forked(script, *args, env=env)
    out, err = proc.communicate(timeout)
    return _checked(subprocess.CompletedProcess(args, proc.returncode, out, err), check)


def _run_script(script, args, cwd, env, out_path, err_path):
    """In the forked process: what the interpreter would do with ``python script args``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:  # a fresh interpreter's OpenMP reads it when torch loads
        import torch
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    path = os.path.join(cwd, script)
    sys.argv = [script, *args]
    if os.path.dirname(path) not in sys.path:  # the interpreter puts the script's folder first
        sys.path.insert(0, os.path.dirname(path))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:  # sys.exit(None) is 0, sys.exit("text") prints it and is 1
        code = 0 if e.code is None else e.code
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # as the interpreter ends on one: killed by SIGINT
        traceback.print_exc()
        _exit(-signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code):
    """End the forked process as the interpreter ends: exit functions run, streams flushed;
    a negative code: killed by that signal."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(10)
    os._exit(code)
