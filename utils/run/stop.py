"""Ctrl-C / SIGTERM: finish the current batch, write a resumable checkpoint, then exit.

A second Ctrl-C raises KeyboardInterrupt at once (the last checkpoint on disk stays valid).
Under DDP the ranks agree on stopping, so none waits forever for a collective: between epochs
(``agreed``) and, inside one, every --print_freq batches (utils/run/engine.py).
"""
import signal
import threading

import torch

from .. import distributed as dist


class StopRequest:
    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")  # where the ranks' collectives run
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers need the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether this process has been asked to stop (no collective)."""
        return self.signum is not None

    def agreed(self) -> bool:
        """True when this rank — or, under DDP, any rank — has been asked to stop."""
        if not dist.is_dist():
            return self.requested()
        flag, = dist.agree_max(torch.tensor([float(self.requested())], device=self.device))
        if flag and self.signum is None:
            self.signum = signal.SIGTERM
        return bool(flag)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)
