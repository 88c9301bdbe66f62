"""The geometric-median criterion of FPGM (He et al., CVPR 2019; docs/method.md)."""
import torch

from . import register_criterion
from .base import Criterion


@register_criterion
class GeometricMedian(Criterion):
    """Each candidate's summed Euclidean distance to the other candidates: the smallest are the
    closest to their geometric median, hence the most replaceable. Distances from the
    differences themselves in float64, as the authors' scipy ``cdist`` took them (the matmul
    form loses the last bits, which decides near-ties)."""

    name, title, order = "gm", "geometric median", 3

    def scores(self, weight, candidates):
        w = weight.detach()[candidates.to(weight.device)].flatten(1).double()
        dist = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
        return dist.sum(0).cpu()
