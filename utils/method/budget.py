"""Prune to a budget (``--target_flops F``, ``--target_params P``): what a target is and which
layers it allocates filters to.

A target fixes the final compact network's cost as a fraction of the dense network's count
(multiply-accumulates or parameters, the compactor's own walk). ``allocation.Allocator``
turns it into per-layer final counts; the mask moves each layer's count towards its own with
the method's schedule.

Layers whose channels are coupled are counted once. A depthwise conv reads one input channel
per filter, and the compactor computes its channel only where both that input channel and the
filter are kept: pruned independently, the pair's cost would depend on how their two
selections overlap, which no count fixes in advance. Under a target such a conv gets no count
of its own when its input comes channel-wise from a prunable conv: the producer's selection
removes the channel from both.
"""
from collections.abc import Callable
from dataclasses import dataclass

from .graph import PrunableConv

KINDS = ("flops", "params")           # what a target counts; NetworkCost's (MACs, params)
ALLOCATIONS = ("uniform", "global")
TOLERANCE = 0.01                      # of the dense count: how close the final cost must be


@dataclass(frozen=True)
class Target:
    kind: str                 # "flops" (multiply-accumulates) or "params"
    fraction: float           # of the dense network's count, in (0, 1)
    allocation: str = "uniform"

    @property
    def index(self) -> int:
        """Position of the count in ``NetworkCost``'s (MACs, parameters)."""
        return KINDS.index(self.kind)

    @property
    def unit(self) -> str:
        return "FLOPs" if self.kind == "flops" else "parameters"

    def __str__(self) -> str:
        """``flops 0.5 uniform``: stored with a pruner's state, compared on resume."""
        return f"{self.kind} {self.fraction!r} {self.allocation}"


def is_depthwise(conv) -> bool:
    """Each filter reads one input channel (a depth multiplier gives several per channel)."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def counted_once(convs: list[PrunableConv], keep=()) -> list[PrunableConv]:
    """The convs a target allocates counts to: all but the depthwise ones fed channel-wise by
    another of ``convs`` (their channel lives and dies with that producer's); those named in
    ``keep`` stay (a coupled group's members select with their group)."""
    names = {c.name for c in convs}
    return [c for c in convs if c.name in keep or not (is_depthwise(c.conv) and c.source in names)]


@dataclass(frozen=True)
class PlanMaker:
    """How the mask gets a plan ({conv: (first, second)} final counts) from scores during the
    run (``--allocation global``): ``make`` maps {conv: the ``criterion``'s score per filter}
    to the plan. The mask calls it once, at the last update before anything is selected."""
    criterion: str
    make: Callable[[dict], dict]
