"""The L1 norm of each filter, smallest first (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017: the sum of a filter's absolute weights ranks its importance)."""
from . import register_criterion
from .base import Criterion
from .norm import filter_norms


@register_criterion
class L1Norm(Criterion):
    name, title, order = "l1", "L1 norm", 2

    def scores(self, weight, candidates):
        return filter_norms(weight, 1, candidates)
