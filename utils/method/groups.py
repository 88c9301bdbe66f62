"""Coupled selection (``coupling="residual"``): the convs whose outputs meet in one residual sum
select the same channels, as one layer of the mask.

Selected independently, the convs that write into one residual stream zero different channels,
so every channel of the stream is computed by some operand and the stream stays full width in
the compact network. Coupled, they form a *group* (``Group``: found in the model's one traced
graph, ``compaction.streams``) with one channel space — the stream's channels, and the filters
of each member at its offset in it (a member may cover part of it: a ghost module's two
halves, the narrower stream before an option-A shortcut) — and the mask treats the group as
one ``Layer``: one count from the schedule (or a plan), one ranking by the group's combined
score, the same channels selected in every member. Where the members write different parts of
the channels, the count is taken in shares of the group's *writer classes* (``Layer.take``),
so that it fixes the cost a target counts.

**How the scores of different layers are combined.** A criterion's scores live on a different
scale in every layer (``allocation.normalised`` says why), so each member's scores are divided
by their mean over the channels being ranked, then a channel's score is the *average* over the
members that write it. Where every member writes every channel — the usual stream — this is
the sum the global allocation ranks by, divided by the number of members; the average keeps a
channel that fewer members write (an option-A stream's new channels) from looking less
important merely for that. A lone conv is a layer of one member, ranked by its raw scores as
before, so an uncoupled run is unchanged bit for bit.
"""
from dataclasses import dataclass
from functools import cached_property

import torch

from .allocation import normalised
from .graph import PrunableConv

COUPLINGS = ("none", "residual")


@dataclass(frozen=True)
class Group:
    """Convs whose outputs meet in one residual stream: ``members`` are (conv name, offset of
    its filter 0 in the group's ``width`` channels), in forward order; ``name`` names the
    group in plans, reports and checkpoints."""
    name: str
    width: int
    members: tuple


@dataclass(frozen=True)
class Member:
    conv: PrunableConv
    offset: int

    @property
    def span(self) -> range:
        return range(self.offset, self.offset + self.conv.filters)


@dataclass(frozen=True)
class Layer:
    """What the mask counts as one layer: a lone conv, or a group of coupled convs."""
    name: str
    filters: int     # the channels it selects among
    members: tuple   # of Member

    @staticmethod
    def of_conv(c: PrunableConv) -> "Layer":
        return Layer(c.name, c.filters, (Member(c, 0),))

    @property
    def coupled(self) -> bool:
        return len(self.members) > 1 or self.members[0].offset != 0

    @property
    def whole(self) -> bool:
        """Does every member write every channel (a lone conv does)?"""
        return all(m.offset == 0 and m.conv.filters == self.filters for m in self.members)

    def part(self, member: Member, channels: torch.Tensor) -> torch.Tensor:
        """``member``'s filters among the layer's ``channels`` (in their order)."""
        if not self.coupled:
            return channels
        inside = (channels >= member.offset) & (channels < member.offset + member.conv.filters)
        return channels[inside] - member.offset

    def expand(self, channels: torch.Tensor) -> dict:
        """{conv name: its filters} for the layer's ``channels``."""
        return {m.conv.name: self.part(m, channels) for m in self.members}

    def combined(self, candidates: torch.Tensor, scores_of) -> torch.Tensor:
        """One score per candidate channel: each member's scores (``scores_of(conv, filters)``
        of its filters among the candidates) over their mean, averaged over the members
        that write the channel; a channel no member writes is never selected (inf)."""
        total = torch.zeros(self.filters, dtype=torch.float64)
        writers = torch.zeros(self.filters, dtype=torch.float64)
        for m in self.members:
            filters = self.part(m, candidates)
            if len(filters):
                total[filters + m.offset] += normalised(scores_of(m.conv, filters))
                writers[filters + m.offset] += 1
        mean = total / writers.clamp(min=1)
        return torch.where(writers > 0, mean, torch.full_like(mean, float("inf")))[candidates]

    def take(self, order: torch.Tensor, n: int, taken: torch.Tensor | None = None
             ) -> torch.Tensor:
        """``n`` channels by ``order``: where every member writes every channel, its first
        ``n``. Otherwise in each *writer class* (the channels one set of members writes: an
        option-A stream's channels of the first stage, those the second stage adds, …) its
        share of the group's count (``shares``; with the channels ``taken`` already, the
        shares of the count they make together), the lowest of ``order`` in it, skipping any
        whose selection would leave a member without a filter: every conv keeps one. A count
        the shares cannot fill so is filled by ``order`` from any class.

        Why by class: what a channel's removal saves depends on the members that write it (a
        first-stage channel of an option-A stream narrows every stage, a last-stage one only
        the last), so the same count of channels chosen by the ranking alone costs anything
        between the two; chosen in shares of its classes, the count fixes the cost, and a
        target planned from counts is met (every member loses the group's rate of its own
        filters, as a uniform rate has it)."""
        if self.whole:
            return order[:n]
        taken = order[:0] if taken is None else taken
        classes, sizes = self.classes
        had = classes[taken]
        had = torch.bincount(had[had >= 0], minlength=len(sizes))
        want = (self.shares(len(taken) + n) - had).tolist()
        left = [m.conv.filters - len(self.part(m, taken)) for m in self.members]
        chosen: dict[int, None] = {}  # in the order taken
        for by_class in (True, False):
            for channel in order.tolist():
                if len(chosen) == n:
                    break
                k = int(classes[channel])
                if channel in chosen or k < 0 or (by_class and want[k] <= 0):
                    continue
                owners = [i for i, m in enumerate(self.members) if channel in m.span]
                if all(left[i] > 1 for i in owners):
                    chosen[channel] = None
                    want[k] -= 1
                    for i in owners:
                        left[i] -= 1
        return torch.tensor(list(chosen), dtype=torch.long)

    @cached_property
    def classes(self) -> tuple[torch.Tensor, list[int]]:
        """Per channel, the index of its writer class (numbered by their first channel; −1
        where no member writes: never selected), and each class's size."""
        index: dict = {}
        ids = []
        for c in range(self.filters):
            writers = tuple(i for i, m in enumerate(self.members) if c in m.span)
            ids.append(index.setdefault(writers, len(index)) if writers else -1)
        ids = torch.tensor(ids, dtype=torch.long)
        return ids, torch.bincount(ids[ids >= 0], minlength=len(index)).tolist()

    def shares(self, n: int) -> torch.Tensor:
        """How many of ``n`` channels each writer class gives: in proportion to its size,
        one channel at a time to the class furthest below its proportion (the Sainte-Laguë
        divisor method, so a larger ``n`` never gives a class fewer: a second criterion
        takes the rest of the shares of both counts together)."""
        sizes = self.classes[1]
        given = [0] * len(sizes)
        for _ in range(min(n, sum(sizes))):
            k = max((k for k in range(len(sizes)) if given[k] < sizes[k]),
                    key=lambda k: (sizes[k] / (2 * given[k] + 1), -k))
            given[k] += 1
        return torch.tensor(given, dtype=torch.long)


def layers_of(convs: list[PrunableConv], groups: list[Group] | None) -> list[Layer]:
    """The mask's layers in forward order (a group where its first member is): each group of
    ``groups`` one layer, every other conv of ``convs`` a layer of its own."""
    by_name = {c.name: c for c in convs}
    group_of = {}
    for g in groups or ():
        missing = [n for n, _ in g.members if n not in by_name]
        if missing:
            raise ValueError(f"group {g.name}: {missing[0]} is not among the pruned convs")
        for name, _ in g.members:
            group_of[name] = g
    layers, seen = [], set()
    for c in convs:
        g = group_of.get(c.name)
        if g is None:
            layers.append(Layer.of_conv(c))
        elif g.name not in seen:
            seen.add(g.name)
            layers.append(Layer(g.name, g.width, tuple(Member(by_name[n], int(o))
                                                      for n, o in g.members)))
    return layers


def expand_all(layers: list[Layer], selected: dict) -> dict:
    """{conv name: filters} of {layer name: channels} (layers missing from ``selected``: none).
    A target's walk counts any channels it is given; where they would leave a member of a
    group without a filter (an option-A stream's first stage), that member keeps its last,
    as the mask's selection does (``Layer.take``)."""
    out = {}
    for layer in layers:
        if layer.name in selected:
            channels = torch.as_tensor(selected[layer.name], dtype=torch.long)
            out.update(layer.expand(layer.take(channels, len(channels))))
    return out
