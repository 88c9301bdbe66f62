"""Which channels of each tensor the network's output depends on, given the pruned filters.

A depthwise (or grouped) conv reads channel c of its input only for its filters of c's group;
when those are all pruned, whatever computes channel c upstream is wasted work. Walking the
graph backwards from the output marks the channels each tensor must really provide, so a
conv computes only filters that are kept *and* needed (MobileNet's expand conv then skips the
channels whose depthwise filter is pruned). Each op's rule says what it needs of its inputs
(``Rule.needs``); by default every input channel, which is always safe.
"""
import torch
from torch import fx

from .nodes import shape_of
from .rules import REGISTRY


class Liveness:
    """The needs found so far: {fx node: bool per channel (dim 1) of its output}."""

    def __init__(self, pruned: dict):
        self.pruned = pruned  # {conv name: bool per filter}
        self.need: dict[fx.Node, torch.Tensor] = {}

    def add(self, node, mask: torch.Tensor) -> None:
        if isinstance(shape_of(node), list):  # a split's tuple: its items route their parts
            return
        self.need[node] = self.need[node] | mask if node in self.need else mask.clone()

    def of(self, node) -> torch.Tensor | None:
        return self.need.get(node)

    @staticmethod
    def full(node) -> torch.Tensor:
        shape = shape_of(node)
        return torch.ones(shape[1] if len(shape) > 1 else 1, dtype=torch.bool)


def channels_needed(ops: list, pruned: dict) -> dict:
    """{fx node: bool per channel (dim 1) of its output}; nodes nobody reads are absent."""
    live = Liveness(pruned)
    for op in reversed(ops):
        rule = REGISTRY[op.kind]
        out = live.need.get(op.node)
        if out is None and not rule.live_without_readers:
            continue
        rule.needs(op, out, live)
    return live.need
