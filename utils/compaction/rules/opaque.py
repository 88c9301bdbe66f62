"""``opaque``: a node no rule takes (or whose conversion has no exact form), kept whole.

The compact graph computes it as the dense network does: its inputs at full width, the removed
channels' constants filled in (``fullwidth.dense_node``), then the original op itself — a
``held`` node running the node's piece of the dense graph (``tracing.ModelGraph.held``: the op,
the sizes and parameters it reads, over the model's own modules). Exact by construction; the
graph also keeps the convs feeding it unpruned (``kept``), so it reads no removed channel in
the first place. Its MACs are the dense op's own (measured once at the traced size), its
parameters those of the modules it runs.
"""
import torch

from ..fullwidth import dense_node
from ..nodes import shape_of
from ..state import Full, Ref, T
from .registry import register_rule
from .rule import Rule


@register_rule
class Opaque(Rule):
    """Made by the graph for a node no rule takes; claims no node itself."""
    kind = "opaque"
    emits = ("held",)
    any_rank = True
    opaque_when_refused = False

    def classify(self, node, modules):
        return None

    def convert(self, cv, op):
        held = cv.graph.held(op.node)
        inputs = [dense_node(cv, n) for n in held.inputs]
        node = cv.b.data("held", inputs, {"macs": held.macs, "params": held.params})
        if cv.emit:
            cv.held[node] = held
        return outputs(cv, node, shape_of(op.node))

    def cost(self, node, hw):
        return node["attrs"]["macs"], node["attrs"]["params"]


def outputs(cv, node: str, shape):
    """The state of a held node's value: a tensor of computed channels, as the dense network
    holds it; a value of another rank as it is (``Full``)."""
    if isinstance(shape, list):  # a tuple: its items are held nodes of their own
        return None
    if len(shape) in (2, 4):
        width = shape[1]
        return T(width, torch.arange(width), node, torch.zeros(width, dtype=torch.float64),
                 Ref(node), spatial=len(shape) == 4)
    return Full(node, tuple(shape), sized=True)
