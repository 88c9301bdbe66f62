"""Subnormal floats on the CPU: flushed to zero for a training run, and counted.

FSDP multiplies the selected filters (and their gradients) by ζ(e) at every update, so late in
a run some of their values, and what they produce, fall below float32's normal range
(2^-126 ≈ 1.2e-38). Many x86 cores compute with such *subnormal* operands through a slow
microcode path: a ResNet-20 step was measured 7× slower. Setting the CPU's flush-to-zero and
denormals-are-zero modes (FTZ/DAZ) makes every such result, and every such operand, exactly 0:
a value 2^-126 times smaller than the numbers it meets contributes nothing a float32 sum can
hold, and the step runs at full speed on every CPU. GPUs keep subnormals at full speed and are
not affected. ``--keep_subnormals`` keeps IEEE arithmetic, as the authors' loop had it
(docs/method.md, 'Differences from the authors' code').
"""
import contextlib

import torch

TINY = {dtype: torch.finfo(dtype).tiny for dtype in (torch.float16, torch.bfloat16,
                                                      torch.float32, torch.float64)}


@contextlib.contextmanager
def flushed(enabled: bool = True):
    """FTZ/DAZ in this thread, and in every thread it starts from here on, until the end of
    the block; yields whether the CPU supports it (False when ``enabled`` is False).

    The mode is per thread and a new thread inherits its creator's, so enter this before the
    process's first parallel CPU work: the intra-op pool is started then, and the threads of a
    pool that already exists keep their mode (the scripts enter it first thing in ``main``).
    """
    supported = enabled and torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)


def count(tensors) -> tuple[int, int]:
    """(subnormal values, all values) over the floating-point tensors of ``tensors``."""
    subnormal = total = 0
    for t in tensors:
        if t is None or not t.is_floating_point():
            continue
        t = t.detach()
        a = t.abs()
        subnormal += int(((a > 0) & (a < TINY[t.dtype])).sum())
        total += t.numel()
    return subnormal, total


def training_state(model: torch.nn.Module, optimizer=None) -> list:
    """Every float a training step reads or writes that persists between steps: parameters,
    their gradients, the optimizer's state, the buffers (BN statistics)."""
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
    tensors += list(model.buffers())
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor)]
    return tensors
