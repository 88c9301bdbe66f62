"""A loader's batch on its way into the model: moved to the device, transformed there, autocast.

Shared by the training engine and the passes that read data for the method (the CS pass, the
attenuation probe), which must see batches exactly as training does.
"""
import contextlib

import torch


def to_device(x, device: torch.device):
    """A tensor, or each tensor of a dict, moved without blocking (pinned memory)."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def prepare(batch, device: torch.device, transform=None, split: str = "train"):
    """``(x, y[, seeds])`` from a loader → ``(x, y)`` on the device, after the script's batch
    transform (which runs there, drawing from the per-sample seeds)."""
    x, y, seeds = batch if len(batch) == 3 else (*batch, None)
    x, y = to_device(x, device), y.to(device, non_blocking=True)
    if transform is not None:
        x = transform(x, seeds, split)
    return x, y


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)
