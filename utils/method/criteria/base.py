"""The interface every filter-ranking criterion implements."""
from typing import ClassVar

import torch


class Criterion:
    """Ranks the filters of one prunable conv; the lowest scores are pruned first.

    A criterion from the weights implements ``scores``. One ``from_data`` gets its scores from
    a pass over data that a ``ScorePass`` makes for every layer at once (the CS pass); the mask
    asks for that pass only at the epochs where it is due.
    """

    name: ClassVar[str]            # registry key; the scripts' flag is --prune_rate_<name>
    title: ClassVar[str]           # for help texts and reports, e.g. "L2 norm"
    order: ClassVar[int] = 100     # position among the criteria in flags, columns and reports
    from_data: ClassVar[bool] = False

    def scores(self, weight: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """One score per candidate filter (indices into ``weight``'s first dimension): float64
        on the CPU, computed from the current weights."""
        raise NotImplementedError(f"{type(self).__name__} scores from data, not from weights")

    def select(self, weight: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` lowest-scoring candidates; ties keep the candidates' order."""
        if n <= 0 or len(candidates) == 0:
            return candidates[:0]
        order = torch.argsort(self.scores(weight, candidates), stable=True)
        return candidates[order[:n]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
