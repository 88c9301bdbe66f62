"""How much of a selected channel still reaches the network while it trains (issue: soft pruning
and BatchNorm).

The mask multiplies a selected filter by ζ, but in train mode the BatchNorm behind it divides by
the batch std, so the channel's output barely changes until ζσ nears √ε. The *effective
attenuation* measures what arrives: the train-mode std of the selected channels' BN output on a
fixed probe batch, relative to the same channels' std just before they were selected (their
current streak of selections), averaged over the selected channels. ≈ 1: the attenuation does
not reach training (BN undoes it, or the filters regrew); ζ-like or 0: it does.

The probe is a side measurement: one forward in train mode with the BN running statistics, the
RNG states and the module modes put back afterwards, so the run itself is bit-identical.
"""
import contextlib

import torch
from torch import nn

from .graph import PrunableConv, bn_normalised


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device):
    """Train mode for one forward; BN buffers, modes and RNG states as they were afterwards
    (the CUDA generator of ``device`` only: a CPU run never starts CUDA)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in bn.named_buffers(recurse=False) if b is not None}
             for bn in bns]
    modes = {m: m.training for m in model.modules()}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.train()
        try:
            yield
        finally:
            for bn, buffers in zip(bns, saved):
                for k, b in buffers.items():
                    getattr(bn, k).copy_(b)
            for m, training in modes.items():
                m.training = training


@torch.no_grad()
def channel_stds(model: nn.Module, convs: list[PrunableConv], x) -> dict[str, torch.Tensor]:
    """Train-mode std over (N, H, W) of every channel of each prunable conv's BN output, float64
    on the CPU, for input ``x``; the model and its statistics are left as they were."""
    out, handles = {}, []
    for c in convs:
        def hook(module, inputs, output, name=c.name):
            output = bn_normalised(module, inputs, output)
            out[name] = output.detach().transpose(0, 1).flatten(1).double().std(1, correction=0)
        handles.append(c.bn.register_forward_hook(hook))
    try:
        with _untouched(model, next(model.parameters()).device):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: v.cpu() for k, v in out.items()}


class AttenuationProbe:
    """Measures the effective attenuation at the end of every epoch (``observe``) and records
    the reference std of newly selected channels after every mask update (``selected``)."""

    def __init__(self, convs: list[PrunableConv], probe_batch):
        self.convs, self.x = convs, probe_batch
        self.reference: dict[str, torch.Tensor] = {}  # per conv: std before selection, NaN if not
        self._last: dict[str, torch.Tensor] = {}

    def observe(self, model: nn.Module, selected: dict[str, torch.Tensor]) -> float | None:
        """The effective attenuation of ``selected`` ({conv: filter indices}, the selection the
        epoch trained with) now; None when nothing is selected. Also remembers the stds as the
        reference for channels the next update selects."""
        self._last = channel_stds(model, self.convs, self.x)
        ratios = []
        for name, idx in selected.items():
            ref = self.reference.get(name)
            if ref is None or not len(idx):
                continue
            now, before = self._last[name][idx], ref[idx]
            ok = before > 0  # a channel silent before selection has no ratio
            ratios.append(now[ok] / before[ok])
        ratios = torch.cat(ratios) if ratios else torch.zeros(0)
        return float(ratios.mean()) if len(ratios) else None

    def selected(self, selected: dict[str, torch.Tensor]) -> None:
        """After a mask update: channels that stay selected keep their reference; new ones take
        the std that ``observe`` measured just before the update."""
        if not self._last:
            raise RuntimeError("observe() must measure the network before the mask update")
        for c in self.convs:
            old = self.reference.get(c.name, torch.full((c.filters,), float("nan"),
                                                        dtype=torch.float64))
            new = torch.full_like(old, float("nan"))
            idx = selected.get(c.name, torch.zeros(0, dtype=torch.long))
            keep = old[idx]
            new[idx] = torch.where(keep.isnan(), self._last[c.name][idx], keep)
            self.reference[c.name] = new
        self._last = {}

    def state_dict(self) -> dict:
        return {"reference": dict(self.reference)}

    def load_state_dict(self, state: dict) -> None:
        self.reference = {k: v.double() for k, v in state["reference"].items()}

