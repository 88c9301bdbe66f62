"""``opaque``: a node no rule takes, kept in the graph as what it is — every input channel read,
every output channel computed — so that the network's cost can still be counted (``cost``:
the op at full width, its own work not counted). The compact network refuses it
(``ModelGraph.refusal``)."""
import torch

from ..materialise import realise
from ..nodes import shape_of
from ..state import ChannelView, Ref, T
from .registry import register_rule
from .rule import Rule


@register_rule
class Opaque(Rule):
    """Made by the graph for a node no rule takes (or by a conversion that refuses, when only
    counting); claims no node itself."""
    kind = "opaque"
    emits = ("opaque",)

    def classify(self, node, modules):
        return None

    def convert(self, cv, op):
        inputs = []
        for node in op.inputs:
            x = cv.state(node)
            x = x.base if isinstance(x, ChannelView) else x
            if isinstance(x, T):
                inputs.append(realise(cv, x, torch.arange(x.width)))
        module = cv.modules.get(op.node.target) if op.node.op == "call_module" else None
        params = sum(p.numel() for p in module.parameters()) if module is not None else 0
        node = cv.b.data("opaque", inputs, {"params": params})
        shape = shape_of(op.node)

        def full(s):
            width = s[1] if len(s) > 1 else 1
            return T(width, torch.arange(width), node, torch.zeros(width, dtype=torch.float64),
                     Ref(node), spatial=len(s) == 4)

        return tuple(full(s) for s in shape) if isinstance(shape, list) else full(shape)

    def cost(self, node, hw):
        return 0, node["attrs"]["params"]
