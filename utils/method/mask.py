"""The mask: which filters are selected, what happens to their weights and gradients
(docs/method.md).

Per update (epoch 0 before training, then after training epochs), for every prunable conv:
1. the method's first criterion ranks all filters and selects its share — a criterion from
   data (CS): the lowest-scoring filters of its last pass; one from the weights (L2/L1 norm):
   the lowest-scoring filters now;
2. the second criterion (GM) selects its share among that ranking from position
   ⌊F·θ_first(e)⌋ on;
3. the selected filters' weights are multiplied by ζ(e) (0 for the baselines), and until the
   next update their gradients too, when the method says so. With the method's
   ``attenuate="bn"`` their BN's γ and β (and those gradients) get the same factor: train-mode
   BN divides by the batch std, so scaling the filter alone barely reaches the network while
   it trains (docs/soft-pruning-and-batchnorm.md).

The CS list at epochs without a CS pass is the authors' rule: the *list* of the last CS epoch is
reused as it is (its length that epoch's count), while the GM candidates start at the *current*
count of the stored ranking; filters ranked in between are neither selected nor candidates.
"""

import torch
from torch import nn

from ..errors import OptionError
from .budget import PlanMaker
from .criteria import criterion
from .criteria import ScorePass
from .graph import PrunableConv
from .groups import Group, Layer, layers_of
from .methods import Method
from .schedule import Schedule, count, round_selected, split_counts


class Mask:
    """``data_pass``: the pass over data that a ``from_data`` first criterion scores with
    (its ``Criterion.data_pass``: the CS pass), recomputed at epochs divisible by
    ``pass_every``.

    Counts: by default every layer's are the schedule's rates times its width. With a ``plan``
    ({conv: (first, second)} final counts, a budget's allocation) or a ``plan_maker`` (the
    plan made from scores at the last update before anything is selected), each layer's count
    follows the schedule's progress θ(e)/θ3 towards its own final count.

    ``groups`` (``coupling="residual"``, ``groups.Group``): convs that select the same
    channels, each group one layer (``groups.Layer``) of the counts, the rankings, the plan
    and the checkpoint's selections; every other conv is a layer of its own. The selections
    per conv (``selected``) are each layer's mapped onto its members."""

    def __init__(self, convs: list[PrunableConv], method: Method, schedule: Schedule,
                 data_pass: ScorePass | None = None, pass_every: int = 2, round_to: int = 1,
                 plan: dict | None = None, plan_maker: PlanMaker | None = None,
                 groups: list[Group] | None = None):
        if isinstance(pass_every, bool) or not isinstance(pass_every, int) or pass_every < 1:
            raise OptionError(f"⟨cs_every⟩ must be a whole number ≥ 1 (got {pass_every!r})")
        self.first = criterion(method.first)
        self.second = criterion(method.second) if method.second else None
        if self.second is not None and self.second.from_data:
            raise ValueError(f"method {method.name}: a criterion from data ranks first only")
        if self.first.from_data and data_pass is None:
            raise ValueError(f"method {method.name} needs the pass over data of its "
                             f"{self.first.title} criterion")
        if method.attenuate == "bn":
            plain = [c.bn_name for c in convs if not c.bn.affine]
            if plain:
                raise OptionError(f"⟨attenuate=bn⟩ scales the BatchNorm's γ and β, and {plain[0]} "
                                  "has none (affine=False); use ⟨attenuate=weights⟩ for this "
                                  "model")
        self.convs, self.method, self.schedule = convs, method, schedule
        self.layers = layers_of(convs, groups)
        self._member_of = {m.conv.name: (layer, m) for layer in self.layers
                           for m in layer.members}
        self.data_pass, self.pass_every, self.round_to = data_pass, pass_every, round_to
        self.plan, self.plan_maker = plan, plan_maker
        empty = torch.zeros(0, dtype=torch.long)
        self.ranking: dict[str, torch.Tensor] = {}       # from data: the last pass's filters
        self.data_list = {c.name: empty for c in self.layers}  # the last pass's selection
        self.selected_first = {c.name: empty for c in self.layers}  # per layer, its channels
        self.selected_second = {c.name: empty for c in self.layers}
        self.zeta = 1.0
        self.epoch = -1                                # last epoch whose update was applied
        self._grads: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def active(self) -> bool:
        """False when nothing is ever selected (all rates 0): no CS pass, no GM, no mask work,
        so the run is a plain training loop."""
        return bool(self.convs) and self.schedule.peak > 0

    # -- counts ----------------------------------------------------------------------------
    def counts(self, filters: int, epoch: int) -> tuple[int, int]:
        """(first, second) selection counts of a layer of ``filters`` at ``epoch``; with
        ``round_to`` the second share gives up filters first, then the first share."""
        at = self.schedule.at(epoch)
        return split_counts(filters, at["first"], at["second"], self.round_to)

    def layer_counts(self, c: Layer, epoch: int) -> tuple[int, int]:
        """(first, second) counts of layer ``c`` at ``epoch``: the schedule's rates, or the
        plan's final count n moved as a rate moves it (the first criterion's share first,
        as the rates split it); none while a plan is still to be made.

        n stands for any rate in [n/F, (n + 1)/F); the middle one, (n + ½)/F, is taken:
        ⌊(n + ½)·θ(e)/θ3⌋ reaches n once θ(e)/θ3 ≥ n/(n + ½), before the last update, as a
        rate whose F·r is not whole does. ⌊n·θ(e)/θ3⌋ would reach it only at the last update
        (θ approaches θ3 asymptotically) and cut every layer's last filter with no training
        after it."""
        if self.plan is None:
            return (0, 0) if self.plan_maker is not None else self.counts(c.filters, epoch)
        first, second = self.plan[c.name]
        n = first + second
        total = round_selected(c.filters, min(n, count(n + 0.5, self.progress(epoch))),
                               self.round_to)
        return min(first, total), total - min(first, total)

    def progress(self, epoch: int) -> float:
        """θ(e)/θ3: 0 before anything is selected, 1 from the final count on."""
        final = self.schedule.final
        return self.schedule.at(epoch)["theta"] / final if final > 0 else 0.0

    def final_counts(self) -> dict[str, tuple[int, int]]:
        return {c.name: self.layer_counts(c, self.schedule.epochs - 1) for c in self.layers}

    def _plan_due(self, epoch: int, initial: bool) -> bool:
        """Is the plan made now? At the last update before anything is selected: this one
        selects, or (after training) the next epoch's does."""
        if self.plan is not None or self.plan_maker is None:
            return False
        following = min(epoch + (not initial), self.schedule.epochs - 1)
        return self.progress(epoch) > 0 or self.progress(following) > 0

    def _pass_needed(self, epoch: int, initial: bool) -> bool:
        """Is the ranking of a pass over data at ``epoch`` used before the next pass replaces it?
        The pass before training is replaced after epoch 0; the others last until the next
        multiple of ``pass_every``."""
        last = epoch if initial else min((epoch // self.pass_every + 1) * self.pass_every,
                                         self.schedule.epochs) - 1
        return any(self.layer_counts(c, e)[0] > 0
                   for e in range(epoch, last + 1) for c in self.layers)

    # -- per-epoch update ------------------------------------------------------------------
    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        if not self.active:
            return
        initial = self.epoch < 0
        due = self._plan_due(epoch, initial)
        if self.first.from_data:
            self._rank_from_data(model, epoch, initial, due)
        if due and self.plan is None:  # from the weights as they are now
            scorer = criterion(self.plan_maker.criterion)
            self.plan = self.plan_maker.make({c.name: self._scores(scorer, c,
                                                                   torch.arange(c.filters))
                                              for c in self.layers})
        self.zeta = self.schedule.at(epoch)["zeta"]
        for c in self.layers:
            self._select(c, epoch)
        for c in self.convs:
            scale = self._filter_scale(c)
            if scale is not None:  # elementwise, hence deterministic on every device
                for p, s in self._scaled(c, scale):
                    p.mul_(s)
        self.epoch = epoch
        self._build_grad_scales()

    def _select(self, c: Layer, epoch: int) -> None:
        """Layer ``c``'s selections at ``epoch``: the first criterion's, then the second's
        among the rest of its ranking."""
        n_first, n_second = self.layer_counts(c, epoch)
        if self.first.from_data:
            order = self.ranking.get(c.name, torch.arange(c.filters))
            if self.plan is not None and self.ranking:
                # a plan's count grows between two passes: the last pass's ranking cut at
                # today's count, so the last update selects the plan's count (the stored
                # list keeps its pass's lower count, and the budget would be missed)
                self.selected_first[c.name] = c.take(order, n_first)
            else:  # the authors' Mask attenuates its stored list while the count is > 0
                self.selected_first[c.name] = self.data_list[c.name] if n_first else order[:0]
        else:  # re-ranked among all filters at every update
            everyone = torch.arange(c.filters)
            order = torch.argsort(self._scores(self.first, c, everyone), stable=True)
            self.selected_first[c.name] = c.take(order, n_first)
        if self.second is not None:
            # the rest of the ranking; a group's first selection need not be its head (taken
            # in shares of its writer classes, groups.Layer.take)
            rest = order[n_first:] if c.whole else order[
                ~torch.isin(order, self.selected_first[c.name])]
            self.selected_second[c.name] = self._lowest(self.second, c, rest, n_second)

    def _scores(self, crit, c: Layer, candidates: torch.Tensor) -> torch.Tensor:
        """A criterion from the weights: one score per candidate channel of layer ``c`` (a
        group's combined score, ``groups.Layer.combined``)."""
        if not c.coupled:
            return crit.scores(c.members[0].conv.conv.weight, candidates)
        return c.combined(candidates, lambda conv, f: crit.scores(conv.conv.weight, f))

    def _lowest(self, crit, c: Layer, candidates: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` lowest-scoring ``candidates`` of layer ``c`` by ``crit``."""
        if not c.coupled:
            return crit.select(c.members[0].conv.conv.weight, candidates, n)
        if n <= 0 or len(candidates) == 0:
            return candidates[:0]
        order = candidates[torch.argsort(self._scores(crit, c, candidates), stable=True)]
        return c.take(order, n, self.selected_first[c.name])

    def _rank_from_data(self, model: nn.Module, epoch: int, initial: bool, due: bool) -> None:
        """The CS pass when it is due (and when a plan is made from its scores now): its
        ranking and its list (docs/method.md)."""
        for_plan = due and criterion(self.plan_maker.criterion).from_data
        if not (initial or epoch % self.pass_every == 0 or for_plan):
            return
        if for_plan or self._pass_needed(epoch, initial):
            scores = self._layer_scores(self.data_pass(model, epoch, initial))
            self.ranking = {k: torch.argsort(v.double().cpu(), stable=True)
                            for k, v in scores.items()}
            if for_plan:
                self.plan = self.plan_maker.make(scores)
        else:
            self.ranking = {}
        self.data_list = {c.name: c.take(self.ranking[c.name], self.layer_counts(c, epoch)[0])
                          if self.ranking else self.data_list[c.name][:0] for c in self.layers}

    def _layer_scores(self, scores: dict) -> dict:
        """{layer: score per channel} of a pass's {conv: score per filter}: a group's
        combined score (``groups.Layer.combined``), a lone conv's own."""
        out = dict(scores)
        for c in self.layers:
            if c.coupled:
                out[c.name] = c.combined(torch.arange(c.filters),
                                         lambda conv, f: scores[conv.name].double().cpu()[f])
                for m in c.members:
                    out.pop(m.conv.name, None)
        return out

    def _build_grad_scales(self) -> None:
        """Full-shape scale tensors, so scaling is one fused ``_foreach_mul_`` per step."""
        self._grads = []
        if not self.method.scale_grads or self.zeta == 1.0:
            return
        for c in self.convs:
            scale = self._filter_scale(c)
            if scale is not None:
                self._grads += [(p, s.expand_as(p).contiguous()) for p, s in self._scaled(c, scale)]

    def _scaled(self, c: PrunableConv, scale: torch.Tensor) -> list[tuple]:
        """(parameter, per-filter scale shaped to broadcast) pairs the factor applies to."""
        pairs = [(c.conv.weight, scale.view(-1, 1, 1, 1))]
        if self.method.attenuate == "bn":  # running statistics are left alone
            pairs += [(c.bn.weight, scale), (c.bn.bias, scale)]
        return pairs

    def _filter_scale(self, c: PrunableConv) -> torch.Tensor | None:
        """ζ for the selected filters, 1 for the others, on the weight's device; None if none."""
        sel = self.selected(c.name)
        if not len(sel):
            return None
        scale = torch.ones(c.filters, dtype=torch.float64)
        scale[sel] = self.zeta
        return scale.to(device=c.conv.weight.device, dtype=c.conv.weight.dtype)

    def scale_gradients(self) -> None:
        """Call after ``backward()`` and before ``optimizer.step()``."""
        pairs = [(w.grad, s) for w, s in self._grads if w.grad is not None]
        if pairs:
            grads, scales = zip(*pairs)
            torch._foreach_mul_(list(grads), list(scales))

    # -- reporting ---------------------------------------------------------------------------
    def selected(self, name: str) -> torch.Tensor:
        """The selected filters of conv ``name`` (its layer's channels, mapped onto it)."""
        layer, member = self._member_of[name]
        return layer.part(member, self.layer_selected(layer.name))

    def layer_selected(self, name: str) -> torch.Tensor:
        """The selected channels of layer ``name`` (a conv's own filters, or a group's)."""
        return torch.cat([self.selected_first[name], self.selected_second[name]])

    def selected_counts(self) -> dict[str, int]:
        """{conv name: filters selected}, every conv of every layer."""
        return {c.name: len(self.selected(c.name)) for c in self.convs}

    def total_selected(self) -> int:
        """Selected channels, a group counted once."""
        return sum(len(self.layer_selected(c.name)) for c in self.layers)

    def total_filters(self) -> int:
        """The layers' channels, a group counted once."""
        return sum(c.filters for c in self.layers)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors, numbers and strings only: loadable with ``torch.load(weights_only=True)``."""
        return {"method": self.method.name, "attenuate": self.method.attenuate, "epoch": self.epoch,
                "zeta": self.zeta,
                "ranking": dict(self.ranking),
                "cs_list": dict(self.data_list),  # its name in checkpoints since the start
                "selected_first": dict(self.selected_first),
                "selected_second": dict(self.selected_second),
                "selected": {c.name: self.selected(c.name) for c in self.convs},  # for readers
                **({"plan": {k: torch.tensor(v) for k, v in self.plan.items()}}
                   if self.plan is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        names = {c.name for c in self.layers}
        if set(state["selected_first"]) != names:
            raise ValueError("the checkpoint's mask covers other layers than this model's "
                             "prunable convs (another architecture or layer selection)")
        self.epoch, self.zeta = int(state["epoch"]), float(state["zeta"])
        self.ranking = {k: v.long() for k, v in state["ranking"].items()}
        self.data_list = {k: v.long() for k, v in state["cs_list"].items()}
        self.selected_first = {k: v.long() for k, v in state["selected_first"].items()}
        self.selected_second = {k: v.long() for k, v in state["selected_second"].items()}
        if "plan" in state:
            self.plan = {k: tuple(int(n) for n in v) for k, v in state["plan"].items()}
        self._build_grad_scales()
