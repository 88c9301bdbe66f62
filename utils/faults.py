"""Fault injection for the crash-safety tests: ``FSDP_CRASH_AT=NAME#N`` makes the process
SIGKILL itself the N-th time it reaches ``crash_point(NAME)`` (N defaults to 1);
``FSDP_CRASH_SIGNAL=SIGTERM`` (any signal's name) sends that signal instead, which the run
handles as a user's ``kill`` would.

The named points sit where a real crash hurts most: inside a training epoch, right after a CS
pass, and between writing a checkpoint's temporary file and renaming it. Unset, it costs one
dictionary lookup.
"""
import os
import signal
from collections import Counter

_seen = Counter()


def crash_point(name: str) -> None:
    target = os.environ.get("FSDP_CRASH_AT")
    if not target:
        return
    want, _, nth = target.partition("#")
    if want != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.Signals[os.environ.get("FSDP_CRASH_SIGNAL", "SIGKILL")])
