"""The L2 norm of each filter, smallest first: SFP's and ASFP's criterion, FPGM's norm share."""
import torch

from . import register_criterion
from .base import Criterion


def filter_norms(weight: torch.Tensor, p: int, candidates: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Lp norm of every candidate filter (all filters by default), float64 on the CPU."""
    w = weight.detach()
    if candidates is not None:
        w = w[candidates.to(w.device)]
    return torch.linalg.vector_norm(w.flatten(1).double(), ord=p, dim=1).cpu()


@register_criterion
class L2Norm(Criterion):
    name, title, order = "norm", "L2 norm", 1

    def scores(self, weight, candidates):
        return filter_norms(weight, 2, candidates)
