"""How far the compact network's outputs are from the soft-pruned one's."""
import contextlib

import torch
from torch import nn


@torch.no_grad()
def max_rel_error(reference: nn.Module, model: nn.Module, input_shape, batch: int = 4) -> float:
    """max |model − reference| / max |reference| on random inputs (seed 0), eval mode, in the
    networks' own precision: no autocast, and no TF32 on a GPU (its 10-bit products would
    show as an error of the compaction)."""
    p = next(reference.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + tuple(input_shape)[-3:], generator=gen).to(p.device, p.dtype)
    was = reference.training, model.training
    reference.eval(), model.eval()
    try:
        with full_precision(p.device):
            ref = reference(x)
            return ((model(x) - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
    finally:
        reference.train(was[0]), model.train(was[1])


@contextlib.contextmanager
def full_precision(device: torch.device):
    """Autocast off, and TF32 off in CUDA's convs and matrix products, until the block ends."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
