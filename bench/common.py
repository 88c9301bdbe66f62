"""Timing helpers for the benches: interleaved repeats, medians, one process."""
import statistics
import time

import torch
from torch import nn

from utils.method.tracer import is_batchnorm


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, repeats: int, device, warmup: int = 1,
                clock=time.perf_counter) -> dict:
    """Median seconds of each fn, alternating between them so drift hits all sides alike.
    ``clock``: ``time.process_time`` measures the CPU time of this process instead of wall
    time, which neighbours on a shared machine do not inflate (for single-threaded runs)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random BN statistics and affine parameters, so a zeroed filter's channel carries a
    non-trivial constant (a freshly initialised BN maps zero to zero)."""
    for m in model.modules():
        if is_batchnorm(m):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


@torch.no_grad()
def calibrate_bn(model: nn.Module, input_shape, gen: torch.Generator) -> nn.Module:
    """BN statistics of one batch of random images, then random affine parameters: a deep
    random network with ``randomize_bn`` saturates (its output hardly depends on the input),
    one calibrated so behaves like a trained one, and every pruned channel still carries its
    own constant."""
    bns = [m for m in model.modules() if is_batchnorm(m)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = None  # a plain average of the batches seen
    model.train()
    model(torch.randn((4,) + tuple(input_shape)[-3:], generator=gen))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
    return model.eval()
