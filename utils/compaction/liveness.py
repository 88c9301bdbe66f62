"""Which channels of each tensor the network's output depends on, given the pruned filters.

A depthwise (or grouped) conv reads channel c of its input only for its filters of c's group;
when those are all pruned, whatever computes channel c upstream is wasted work. Walking the
graph backwards from the output marks the channels each tensor must really provide, so a
conv computes only filters that are kept *and* needed (MobileNet's expand conv then skips the
channels whose depthwise filter is pruned). Ops this pass does not follow need every input
channel, which is always safe.
"""
import torch
from torch import fx

from .tracing import shape_of

_CHANNELWISE = {"bn", "act", "identity", "pool"}


def channels_needed(ops: list, pruned: dict) -> dict:
    """{fx node: bool per channel (dim 1) of its output}; nodes nobody reads are absent."""
    need: dict[fx.Node, torch.Tensor] = {}

    def add(node, mask):
        if isinstance(shape_of(node), list):  # a split's tuple: its items route their parts
            return
        need[node] = need[node] | mask if node in need else mask.clone()

    def full(node):
        shape = shape_of(node)
        return torch.ones(shape[1] if len(shape) > 1 else 1, dtype=torch.bool)

    for op in reversed(ops):
        node = op.node
        if op.kind == "output":
            for x in op.inputs:
                add(x, full(x))
            continue
        if op.kind == "setitem":  # x[:, a:b] = v: what x's later readers need of a…b−1
            target, value = op.inputs
            start, stop = op.attrs["start"], op.attrs["stop"]
            later = need.get(target, torch.zeros(shape_of(target)[1], dtype=torch.bool))
            add(value, later[start:stop])
            continue
        out = need.get(node)
        if out is None or op.kind in ("input", "meta", "zeros"):
            continue
        if op.kind == "conv":
            add(op.inputs[0], _conv_inputs(op, out, pruned.get(node.target)))
        elif op.kind in _CHANNELWISE or op.kind == "slice" and _spatial_only(op):
            add(op.inputs[0], out if _same_width(op.inputs[0], out) else full(op.inputs[0]))
        elif op.kind in ("add", "mul"):
            for x in op.inputs:
                add(x, out if _same_width(x, out) else full(x))
        elif op.kind == "slice" and _channel_slice(op) is not None:
            start, stop = _channel_slice(op)
            mask = torch.zeros(shape_of(op.inputs[0])[1], dtype=torch.bool)
            mask[start:stop] = out
            add(op.inputs[0], mask)
        elif op.kind == "cat":
            start = 0
            for x in op.inputs:
                width = shape_of(x)[1]
                add(x, out[start:start + width])
                start += width
        elif op.kind == "item":
            split = op.inputs[0]
            sizes = [s[1] for s in shape_of(split)]
            start = sum(sizes[:op.attrs["index"]])
            mask = torch.zeros(sum(sizes), dtype=torch.bool)
            mask[start:start + sizes[op.attrs["index"]]] = out
            add(split.args[0], mask)
        elif op.kind == "flatten" and len(shape_of(node)) == 2 and \
                len(shape_of(op.inputs[0])) == 4:
            add(op.inputs[0], out.view(shape_of(op.inputs[0])[1], -1).any(1))
        else:  # linear layers, reshapes, anything else: every input channel
            if bool(out.any()):
                for x in op.inputs:
                    add(x, full(x))
    return need


def _conv_inputs(op, out: torch.Tensor, pruned: torch.Tensor | None) -> torch.Tensor:
    m = op.module
    active = out.clone()
    if pruned is not None:
        active &= ~pruned
    groups = m.groups
    per_group = active.view(groups, -1).any(1)
    return per_group.repeat_interleave(m.in_channels // groups)


def _same_width(x, out) -> bool:
    shape = shape_of(x)
    return len(shape) > 1 and shape[1] == len(out)


def _spatial_only(op) -> bool:
    return tuple(op.attrs["slices"][1]) == (None, None, None)


def _channel_slice(op):
    """(start, stop) of a slice that takes a run of channels and whole spatial dims."""
    slices = op.attrs["slices"]
    if any(tuple(s) != (None, None, None) for i, s in enumerate(slices) if i != 1):
        return None
    width = shape_of(op.inputs[0])[1]
    start, stop, step = slice(*slices[1]).indices(width)
    return (start, stop) if step == 1 else None
