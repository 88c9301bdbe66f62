"""Per-layer final counts whose compact network costs a target (``budget.Target``).

A plan is {conv: (first, second)}: how many filters each criterion selects in each layer at
the end of the run. Its cost is the compactor's own graph walk (``cost``, injected: {conv:
pruned filter indices} → MACs or parameters, ``compaction.cost.NetworkCost``), so the search
counts what the compact network will hold — residual sums completed to full width, a layer's
removed filters removing the next layer's inputs, the classifier. The walk needs indices: a
plan's filters are taken in a fixed pseudo-random order per layer, as independent selections
fall, a coupled group's in the shares of its writer classes as its selection takes them
(``groups.Layer.take``): the cost then depends on the counts alone.

* ``uniform``: one rate T for every layer (split between the two criteria in the ratio of the
  given rates), found by bisection over the rates at which some layer's count steps. Layers
  of one width step together, which on a narrow network moves the cost by several points, so
  between the two neighbouring rates the layers that step take the larger count one at a
  time, in forward order, until the cost is closest to the target.
* ``global``: every filter's score from the method's criterion, divided by its layer's mean
  score (``normalised``), one ranking over all layers; the lowest are pruned, at most all but
  ``round_to`` (one) of a layer, as many as the target asks for.
"""
from collections.abc import Callable

import torch

from ..errors import OptionError
from .budget import TOLERANCE, Target
from .schedule import count, round_selected, split_counts

Plan = dict[str, tuple[int, int]]


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """A layer's scores divided by their mean.

    Scores of one criterion live on a different scale in every layer: a filter's norm and its
    summed distance to the others (GM) scale with the layer's weights, which a following
    BatchNorm makes arbitrary, GM's sum also with the layer's width, CS's between-class
    scatter with the square of its activations. Dividing by the mean removes any such factor
    exactly (a layer's scores × c give the same allocation) and keeps the contrast inside the
    layer: a layer whose filters score far below its average gives up more of them. Ranks
    would remove the scale too, but also every difference between layers — they give the
    uniform allocation back. A layer whose scores are all 0 (no class separability at all)
    is all equally unimportant: zeros, pruned first, down to what every layer keeps."""
    s = scores.detach().double().cpu().clamp_min(0)
    mean = s.mean()
    return s / mean if bool(mean > 0) and bool(torch.isfinite(mean)) else torch.zeros_like(s)


class Allocator:
    """``convs`` in forward order; ``first_share``: the first criterion's part of a layer's
    count (the ratio of the given rates)."""

    def __init__(self, convs, cost: Callable[[dict], float], target: Target, first_share: float,
                 round_to: int = 1):
        self.filters = {c.name: c.filters for c in convs}
        self.layers = {c.name: c for c in convs}
        self.cost, self.target, self.first_share = cost, target, first_share
        self.round_to = round_to
        self.spelled = f"⟨target.{target.kind}={target.fraction:g}⟩"
        generator = torch.Generator().manual_seed(0)
        self.orders = {n: torch.randperm(f, generator=generator) for n, f in self.filters.items()}
        self.keep = {n: min(round_to, f) for n, f in self.filters.items()}  # never fewer
        self.dense = float(cost({}))
        self.rates: tuple[float, float] | None = None  # the uniform plan's two rates
        self._memo: dict[tuple, float] = {}

    # -- counting ------------------------------------------------------------------------------
    def fraction(self, plan: Plan) -> float:
        """The cost of ``plan``'s compact network over the dense network's."""
        key = tuple(sum(plan.get(n, (0, 0))) for n in self.filters)
        if key not in self._memo:
            pruned = {n: self._take(n, k) for n, k in zip(self.filters, key) if k}
            self._memo[key] = float(self.cost(pruned)) / self.dense
        return self._memo[key]

    def _take(self, name: str, k: int) -> torch.Tensor:
        """``k`` of layer ``name``'s filters in its fixed order, as its selection takes them
        (a group of coupled convs in shares of its writer classes: ``groups.Layer.take``)."""
        layer = self.layers[name]
        take = getattr(layer, "take", None)
        return take(self.orders[name], k) if take else self.orders[name][:k]

    def floor(self) -> float:
        """What keeping ``round_to`` (one) filter per layer costs: no allocation goes lower."""
        return self.fraction({n: (0, f - self.keep[n]) for n, f in self.filters.items()})

    def _split(self, total: int) -> tuple[int, int]:
        first = count(total, self.first_share)
        return first, total - first

    def _closest(self, plans: list) -> tuple[int, float]:
        """Index and cost of the plan closest to the target among ``plans`` (callables, cost
        non-increasing along the list): bisection for the first one below the target."""
        goal, lo, hi = self.target.fraction, -1, len(plans)
        while hi - lo > 1:  # plans[..lo] cost ≥ goal, plans[hi..] < goal
            mid = (lo + hi) // 2
            if self.fraction(plans[mid]()) >= goal:
                lo = mid
            else:
                hi = mid
        near = [i for i in (lo, hi) if 0 <= i < len(plans)]
        best = min(near, key=lambda i: (abs(self.fraction(plans[i]()) - goal), i))
        return best, self.fraction(plans[best]())

    # -- the two allocations -------------------------------------------------------------------
    def uniform(self) -> Plan:
        """One rate for every layer; between the two rates around the target, the layers that
        step take the larger count one at a time (a monotone sequence, bisected). The two
        rates are kept in ``rates`` (every layer's counts are those of one of them)."""
        rates = [0.0, *self._breakpoints()]
        steps = [self._uniform_plan(rate) for rate in rates]
        sequence = []  # (step, k): step's plan with its first k differing layers from the next
        for i, (below, above) in enumerate(zip(steps, steps[1:])):
            differ = [n for n in self.filters if below[n] != above[n]]
            sequence += [(i, differ[:k]) for k in range(len(differ))]
        sequence = sequence[1:] + [(len(steps) - 1, [])]  # never the plan of nothing

        def plan(j):
            i, switched = sequence[j]
            return {**steps[i], **{n: steps[i + 1][n] for n in switched}}

        best, _ = self._closest([lambda j=j: plan(j) for j in range(len(sequence))])
        i = sequence[best][0]
        self.rates = (rates[i], rates[min(i + 1, len(rates) - 1)])
        self._check(plan(best), steps[-1])
        return plan(best)

    def global_(self, scores: dict[str, torch.Tensor]) -> Plan:
        """From every layer's scores of the criterion (lowest pruned first); the result is
        returned even when it misses the target by more than the tolerance (the caller says
        so: a run is under way)."""
        names = list(self.filters)
        values, owner = [], []
        for i, n in enumerate(names):
            cap = self.filters[n] - self.keep[n]
            values.append(torch.sort(normalised(scores[n]), stable=True).values[:cap])
            owner.append(torch.full((cap,), i, dtype=torch.long))
        ranked = torch.cat(owner)[torch.argsort(torch.cat(values), stable=True)]

        def prefix(j: int) -> Plan:
            taken = torch.bincount(ranked[:j], minlength=len(names)).tolist()
            return {n: self._split(round_selected(self.filters[n], k, self.round_to))
                    for n, k in zip(names, taken)}

        plans = [lambda j=j: prefix(j) for j in range(1, len(ranked) + 1)]
        if not plans:
            return {n: (0, 0) for n in names}
        best, _ = self._closest(plans)
        return plans[best]()

    def check_reachable(self) -> None:
        """Refuse a target below the floor (every layer at one filter, or ``round_to``)."""
        floor = self.floor()
        if self.target.fraction < floor - TOLERANCE:
            raise OptionError(self._range_message(floor))

    # -- helpers ---------------------------------------------------------------------------------
    def _uniform_plan(self, rate: float) -> Plan:
        q = self.first_share
        return {n: split_counts(f, q * rate, (1 - q) * rate, self.round_to)
                for n, f in self.filters.items()}

    def _breakpoints(self) -> list[float]:
        """The rates in (0, 1) at which some layer's count of either share steps."""
        shares = [s for s in (self.first_share, 1 - self.first_share) if s > 0]
        found = {j / (f * s) for f in set(self.filters.values()) for s in shares
                 for j in range(1, f + 1) if j / (f * s) < 1}
        return sorted(found)

    def _distance(self, plan: Plan) -> float:
        return abs(self.fraction(plan) - self.target.fraction)

    def _check(self, plan: Plan, lowest: Plan) -> None:
        if self._distance(plan) <= TOLERANCE:
            return
        if self.target.fraction < self.fraction(lowest):
            raise OptionError(self._range_message(self.fraction(lowest)))
        raise OptionError(f"{self.spelled} cannot be met within 1 % of the dense "
                          f"{self.target.unit} with one rate for every layer: the nearest plan "
                          f"keeps {self.fraction(plan):.3f}; give a target near it, or use "
                          "⟨allocation=global⟩ (counts per layer)")

    def _range_message(self, lowest: float) -> str:
        kept = "one filter" if self.round_to == 1 else f"{self.round_to} filters"
        return (f"{self.spelled} cannot be reached: the {self.target.allocation} allocation keeps "
                f"{lowest:.3f}–1 of the dense network's {self.target.unit} (at least {kept} per "
                "layer); give a target in that range")
