"""The interface every filter-ranking criterion implements."""
from typing import ClassVar, Protocol

import torch
from torch import nn


class ScorePass(Protocol):
    """What the mask calls for a ``from_data`` criterion: ``initial`` marks the pass before
    training (the pass after epoch 0 has epoch 0 too). Returns {conv name: score per filter}.
    A pass may have a ``log`` attribute (where its messages go) and ``seconds`` (its time)."""

    def __call__(self, model: nn.Module, epoch: int, initial: bool) -> dict[str, torch.Tensor]: ...


class Criterion:
    """Ranks the filters of one prunable conv; the lowest scores are pruned first.

    A criterion from the weights implements ``scores``. One ``from_data`` implements
    ``data_pass``: the pass over labelled data that scores every layer at once (the CS pass);
    the mask asks for it only at the epochs where it is due.
    """

    name: ClassVar[str]            # registry key; the scripts' flag is --prune_rate_<name>
    title: ClassVar[str]           # for help texts and reports, e.g. "L2 norm"
    order: ClassVar[int] = 100     # position among the criteria in flags, columns and reports
    from_data: ClassVar[bool] = False

    def scores(self, weight: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """One score per candidate filter (indices into ``weight``'s first dimension): float64
        on the CPU, computed from the current weights."""
        raise NotImplementedError(f"{type(self).__name__} scores from data, not from weights")

    def data_pass(self, convs: list, data, *, num_classes: int, device, mode: str = "reference",
                  max_batches: int | None = None, amp_dtype=None, transform=None,
                  class_names=None, log=None) -> ScorePass:
        """For a ``from_data`` criterion: the pass over ``data`` (batches of (inputs, labels))
        that scores every filter of ``convs`` (``graph.PrunableConv``)."""
        raise NotImplementedError(f"{type(self).__name__} scores from the weights, not from data")

    def select(self, weight: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` lowest-scoring candidates; ties keep the candidates' order."""
        if n <= 0 or len(candidates) == 0:
            return candidates[:0]
        order = torch.argsort(self.scores(weight, candidates), stable=True)
        return candidates[order[:n]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
