"""A dataset script's command line run through its own ``main`` in the test's process: the exit
status, stdout and stderr that ``python <script> ARGS`` gives, without a new interpreter's
seconds of imports. A run that a signal or a crash must stop still needs a process of its own."""
import contextlib
import io
import os
import subprocess
import sys

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


def run_in_subprocess(script, *args, env, check=True) -> subprocess.CompletedProcess:
    """``python <script> ARGS`` in an interpreter of its own, with ``env`` (a crash point, the
    threads): for the runs a signal or a crash must stop."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return _checked(subprocess.run([sys.executable, os.path.join(root, script), *args], cwd=root,
                                   capture_output=True, text=True, timeout=600, env=env), check)


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """``check``: raise on a non-zero status, with the output's tail."""
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc
