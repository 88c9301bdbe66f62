"""The FSDP mask: which filters are selected, their attenuation, and gradient scaling (SPEC §4).

Per update (epoch 0 before training, then after training epochs): the ⌊F·θ_cs⌋ filters with
the lowest class-separability score are selected, then ⌊F·θ_gm⌋ more by the geometric median
among the rest; selected filters' weights are multiplied by ζ, and during the next epoch their
gradients are multiplied by ζ too. At the last epoch ζ = 0: the selected filters become zero.
"""
from typing import Callable

import torch
from torch import nn

from .criteria import geometric_median_select
from .graph import PrunableConv
from .schedule import Schedule, count

# ranker(model, epoch) -> {conv name: score per filter}; low score = pruned first
Ranker = Callable[[nn.Module, int], dict[str, torch.Tensor]]


class Mask:
    def __init__(self, convs: list[PrunableConv], schedule: Schedule, ranker: Ranker,
                 cs_every: int = 2):
        if cs_every < 1:
            raise ValueError(f"epoch_apply_cs must be ≥ 1 (got {cs_every})")
        self.convs = convs
        self.schedule = schedule
        self.ranker = ranker
        self.cs_every = cs_every
        empty = torch.zeros(0, dtype=torch.long)
        self.scores: dict[str, torch.Tensor] = {}
        self.order: dict[str, torch.Tensor] = {}     # filters by ascending CS score
        self.selected_cs = {c.name: empty for c in convs}
        self.selected_gm = {c.name: empty for c in convs}
        self.zeta = 1.0
        self.epoch = -1                               # last epoch whose update was applied
        self._grads: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- per-epoch update ------------------------------------------------------------------
    def needs_scores(self, epoch: int) -> bool:
        return not self.order or epoch % self.cs_every == 0

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        if self.needs_scores(epoch):
            self.scores = {k: v.double().cpu() for k, v in self.ranker(model, epoch).items()}
            self.order = {k: torch.argsort(v, stable=True) for k, v in self.scores.items()}
        sched = self.schedule.at(epoch)
        self.zeta = sched["zeta"]
        for c in self.convs:
            n_cs = count(c.filters, sched["theta_cs"])
            n_gm = count(c.filters, sched["theta_gm"])
            order = self.order[c.name]
            self.selected_cs[c.name] = order[:n_cs].clone()
            self.selected_gm[c.name] = geometric_median_select(c.conv.weight, order[n_cs:], n_gm)
            scale = self._filter_scale(c)
            if scale is not None:  # elementwise, hence deterministic on every device
                c.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.epoch = epoch
        self._build_grad_scales()

    def _build_grad_scales(self) -> None:
        """Full-shape scale tensors, so scaling is one fused ``_foreach_mul_`` per step."""
        self._grads = []
        if self.zeta == 1.0:
            return
        for c in self.convs:
            scale = self._filter_scale(c)
            if scale is not None:
                w = c.conv.weight
                self._grads.append((w, scale.view(-1, 1, 1, 1).expand_as(w).contiguous()))

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
        return torch.cat([self.selected_cs[name], self.selected_gm[name]])

    def selected_counts(self) -> dict[str, int]:
        return {c.name: len(self.selected(c.name)) for c in self.convs}

    def total_selected(self) -> int:
        return sum(self.selected_counts().values())

    def total_filters(self) -> int:
        return sum(c.filters for c in self.convs)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors, numbers and strings only: loadable with ``torch.load(weights_only=True)``."""
        return {"epoch": self.epoch, "zeta": self.zeta, "cs_every": self.cs_every,
                "scores": dict(self.scores), "order": dict(self.order),
                "selected_cs": dict(self.selected_cs), "selected_gm": dict(self.selected_gm),
                "selected": {c.name: self.selected(c.name) for c in self.convs}}

    def load_state_dict(self, state: dict) -> None:
        names = {c.name for c in self.convs}
        if set(state["selected_cs"]) != names:
            raise ValueError("the checkpoint's mask covers other layers than this model's "
                             "prunable convs (another architecture or layer selection)")
        self.epoch, self.zeta = int(state["epoch"]), float(state["zeta"])
        self.scores = {k: v.double() for k, v in state["scores"].items()}
        self.order = {k: v.long() for k, v in state["order"].items()}
        self.selected_cs = {k: v.long() for k, v in state["selected_cs"].items()}
        self.selected_gm = {k: v.long() for k, v in state["selected_gm"].items()}
        self._build_grad_scales()
