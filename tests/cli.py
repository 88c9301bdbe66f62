"""A dataset script's command line run through its own ``main`` in the test's process: the exit
status, stdout and stderr that ``python <script> ARGS`` gives, without a new interpreter's
seconds of imports. A run that a signal or a crash must stop still needs a process of its own."""
import contextlib
import io
import subprocess

from utils.run.trainer import main


def entry(module, argv) -> int:
    """What ``python <script> argv`` runs, in this process."""
    return main(module.parser(), module.make_data, argv, check=getattr(module, "check", None),
                resume_keys=getattr(module, "RESUME_KEYS", ()))


def run_in_process(module, *args, check=True) -> subprocess.CompletedProcess:
    """``entry`` with stdout and stderr captured (a parser error exits through SystemExit, as in
    the script); ``check``: raise on a non-zero status, with the output's tail."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry(module, list(args))
        except SystemExit as e:
            code = e.code
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
