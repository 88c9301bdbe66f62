"""What the Pruner does in the user's process leaves the user's state as it found it.

A ``DataLoader`` draws from the global RNG each time it is iterated (to seed its workers), a
model with dropout draws in train mode, and a BatchNorm in train mode updates its running
statistics: a CS pass or a check of ``cs_data`` would otherwise change the user's next random
numbers (the same-seed loop's results) and their network's statistics.
"""
import contextlib
import random

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def rng_untouched():
    """The global RNGs — Python's, numpy's, torch's on the CPU and on every GPU already in
    use — as they were before the block, whatever it drew."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    gpus = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if gpus is not None:
            torch.cuda.set_rng_state_all(gpus)


@contextlib.contextmanager
def bn_statistics_untouched(model: nn.Module):
    """Every BatchNorm's running statistics and batch count as they were before the block."""
    saved = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)
                  if b is not None})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, value in buffers.items():
                    getattr(m, k).copy_(value)
