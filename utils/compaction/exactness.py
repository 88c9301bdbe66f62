"""How far the compact network's outputs are from the soft-pruned one's."""
import torch
from torch import nn


@torch.no_grad()
def max_rel_error(reference: nn.Module, model: nn.Module, input_shape, batch: int = 4) -> float:
    """max |model − reference| / max |reference| on random inputs (seed 0), eval mode."""
    p = next(reference.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + tuple(input_shape)[-3:], generator=gen).to(p.device, p.dtype)
    was = reference.training, model.training
    reference.eval(), model.eval()
    try:
        ref = reference(x)
        return ((model(x) - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
    finally:
        reference.train(was[0]), model.train(was[1])
