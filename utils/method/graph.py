"""Which convolutions FSDP prunes: ``PrunableConv``, and the selection among the model's pairs.

A conv is prunable when its only consumer is a BatchNorm (``BatchNorm2d``, ``SyncBatchNorm`` or
a subclass such as timm's ``BatchNormAct2d``: ``tracer``): the BN output is what the CS
criterion scores (README.md: each filter's max response). The reference hard-coded parameter
indices per architecture; the pairs here come from the model's fx graph, the one the
compactor walks too (``utils.compaction.ModelGraph``), so a conv is pruned only where the
compact network can drop it; ``select_convs`` applies the module-name regexes and the
reference's index window.
"""
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tracer import adds_ops


@dataclass
class PrunableConv:
    name: str             # module path of the conv, e.g. "stage_1.0.conv_a"
    conv: nn.Conv2d
    bn_name: str
    bn: nn.BatchNorm2d    # or SyncBatchNorm, or a subclass of either
    param_index: int      # position of conv.weight in model.parameters() (reference indexing)
    source: str | None    # prunable conv whose BN output feeds this conv channel-wise, if any

    @property
    def filters(self) -> int:
        return self.conv.out_channels


def select_convs(model: nn.Module, pairs: dict, sources: dict, include: str | None = None,
                 exclude: str | None = None, layer_begin: int = 0, layer_end: int | None = None,
                 layer_inter: int | None = None) -> list[PrunableConv]:
    """The pairs ({conv name: BN name}, in forward order) kept by the module-name regexes and
    the reference's parameter-index window (``layer_begin ≤ index ≤ layer_end``, every
    ``layer_inter``-th); ``sources``: {conv name: the conv feeding it channel-wise, or None}."""
    modules = dict(model.named_modules())
    param_index = {id(p): i for i, p in enumerate(model.parameters())}
    found = []
    for name, bn_name in pairs.items():
        idx = param_index[id(modules[name].weight)]
        if idx < layer_begin or (layer_end is not None and idx > layer_end):
            continue
        if layer_inter and (idx - layer_begin) % layer_inter:
            continue
        if include and not re.search(include, name):
            continue
        if exclude and re.search(exclude, name):
            continue
        found.append(PrunableConv(name, modules[name], bn_name, modules[bn_name], idx,
                                  sources[name]))
    kept = {p.name for p in found}
    for p in found:  # a source outside the selection is never pruned, so it removes no inputs
        if p.source not in kept:
            p.source = None
    return found


def bn_normalised(bn: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """In a forward hook on a prunable conv's BN: the BN's normalised output. For a subclass
    that applies more afterwards (timm's ``BatchNormAct2d``: drop, then its activation) it is
    recomputed from the input with the module's own statistics — the running ones in eval
    mode, the batch's in train mode (this process's batch: a synchronised subclass's
    all-process statistics are not gathered again) — so every BN is scored alike, as the CS
    criterion's max of ReLU(BN(conv)) (README.md), wherever the activation lives."""
    if not adds_ops(bn):
        return output
    batch_stats = bn.training or bn.running_mean is None
    stats = (None, None) if batch_stats else (bn.running_mean, bn.running_var)
    return F.batch_norm(inputs[0], *stats, bn.weight, bn.bias, batch_stats, 0.0, bn.eps)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
