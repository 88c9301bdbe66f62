"""Ctrl-C / SIGTERM: finish the current batch, write a resumable checkpoint, then exit.

A second Ctrl-C raises KeyboardInterrupt at once (the last checkpoint on disk stays valid).
Under DDP the ranks agree on stopping, so none waits forever for a collective.
"""
import signal
import threading

import torch

from .. import distributed as dist


class StopRequest:
    def __init__(self):
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

    def agreed(self) -> bool:
        """True when this rank — or, under DDP, any rank — has been asked to stop."""
        if not dist.is_dist():
            return self.signum is not None
        flag = torch.tensor([0.0 if self.signum is None else 1.0])
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = signal.SIGTERM
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 0)
