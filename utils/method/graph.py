"""Which convolutions FSDP can prune, discovered from the module graph (SPEC §1).

A conv is prunable when its only consumer is a BatchNorm (``BatchNorm2d``, ``SyncBatchNorm`` or a
subclass such as timm's ``BatchNormAct2d``: ``tracer``): the BN output is what the CS criterion
scores. The reference hard-coded parameter indices per architecture; tracing with ``torch.fx``
makes any torchvision- or timm-style CNN work. Models fx cannot trace fall back to module
registration order (a conv immediately followed by a BN of matching width).
"""
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .tracer import adds_ops, is_batchnorm, trace_model

# Channel-wise ops: channel c of the output depends on channel c of the input only, so a
# pruned channel stays the same channel through them.
_CHANNELWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity, nn.Dropout,
                        nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_CHANNELWISE_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6}
_CHANNELWISE_METHODS = {"relu", "relu_", "clamp", "clamp_min", "contiguous"}


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


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return trace_model(model)
    except Exception:  # dynamic control flow: use the registration-order fallback
        return None


def _pairs_from_graph(gm: fx.GraphModule, modules: dict) -> tuple[dict, dict]:
    """Return ({conv: bn}, {conv: source conv or None}) from a traced graph."""
    pairs, bn_node_to_conv = {}, {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and is_batchnorm(modules.get(node.target)):
            arg = node.args[0]
            if (isinstance(arg, fx.Node) and arg.op == "call_module"
                    and isinstance(modules.get(arg.target), nn.Conv2d) and len(arg.users) == 1):
                pairs[arg.target] = node.target
                bn_node_to_conv[node] = arg.target
    sources = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in pairs:
            sources[node.target] = _source_of(node.args[0], modules, bn_node_to_conv)
    return pairs, sources


def _source_of(node, modules, bn_node_to_conv):
    while isinstance(node, fx.Node):
        if node in bn_node_to_conv:
            return bn_node_to_conv[node]
        channelwise = (
            (node.op == "call_module" and isinstance(modules.get(node.target), _CHANNELWISE_MODULES))
            or (node.op == "call_function" and node.target in _CHANNELWISE_FUNCS)
            or (node.op == "call_method" and node.target in _CHANNELWISE_METHODS))
        if not channelwise:
            return None
        node = node.args[0]
    return None


def _pairs_from_order(model: nn.Module) -> tuple[dict, dict]:
    pairs, prev = {}, None
    for name, module in model.named_modules():
        if is_batchnorm(module) and prev is not None:
            pname, pmod = prev
            if isinstance(pmod, nn.Conv2d) and pmod.out_channels == module.num_features:
                pairs[pname] = name
        if not list(module.children()):
            prev = (name, module)
    return pairs, {name: None for name in pairs}


def find_prunable_convs(model: nn.Module, include: str | None = None, exclude: str | None = None,
                        layer_begin: int = 0, layer_end: int | None = None,
                        layer_inter: int | None = None) -> list[PrunableConv]:
    """Prunable convs in forward order, filtered by module-name regexes and by the reference's
    parameter-index window (``layer_begin ≤ index ≤ layer_end``, every ``layer_inter``-th)."""
    modules = dict(model.named_modules())
    gm = _trace(model)
    pairs, sources = _pairs_from_graph(gm, modules) if gm is not None else _pairs_from_order(model)
    param_index = {id(p): i for i, p in enumerate(model.parameters())}
    found = []
    for name in pairs:
        idx = param_index[id(modules[name].weight)]
        if idx < layer_begin or (layer_end is not None and idx > layer_end):
            continue
        if layer_inter and (idx - layer_begin) % layer_inter:
            continue
        if include and not re.search(include, name):
            continue
        if exclude and re.search(exclude, name):
            continue
        found.append(PrunableConv(name, modules[name], pairs[name], modules[pairs[name]], idx,
                                  sources[name]))
    kept = {p.name for p in found}
    for p in found:  # a source outside the selection is never pruned, so it removes no inputs
        if p.source not in kept:
            p.source = None
    return found


def normalised(bn: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """In a forward hook on a prunable conv's BN: the BN's normalised output. For a subclass
    that applies more afterwards (timm's ``BatchNormAct2d``: drop, then its activation) it is
    recomputed from the input with the module's own statistics — the running ones in eval
    mode, the batch's in train mode (this process's batch: a synchronised subclass's
    all-process statistics are not gathered again) — so every BN is scored alike, as SPEC §3's
    ReLU(BN(conv)), wherever the activation lives."""
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
