"""The graph's ends and the nodes that compute no tensor: the input, the output, and ``meta``
(sizes read off a tensor, a module's own parameters, an ``expand_as`` before a product)."""
import torch

from ...errors import UserError
from ..materialise import realise
from ..nodes import Op, refuse, shape_of
from ..state import Ref, T
from .registry import claimants, owner, register_rule
from .rule import Rule


@register_rule
class Input(Rule):
    """The network's input: every channel computed."""
    kind = "input"
    node_ops = ("placeholder",)

    def classify(self, node, modules):
        return Op(self.kind, node)

    def convert(self, cv, op):
        width = shape_of(op.node)[1]
        return T(width, torch.arange(width), cv.input_node, torch.zeros(width, dtype=torch.float64),
                 Ref(cv.input_node))


@register_rule
class Output(Rule):
    """The network's output: every channel, realised (constants filled in)."""
    kind = "output"
    node_ops = ("output",)
    shapeless = True
    live_without_readers = True
    opaque_when_refused = False

    def classify(self, node, modules):
        return Op(self.kind, node, [node.args[0]])

    def needs(self, op, out, live):
        for x in op.inputs:
            live.add(x, live.full(x))

    def convert(self, cv, op):
        t = cv.state(op.inputs[0])
        if not isinstance(t, T):
            raise UserError("cannot compact: the network's output is not a single tensor")
        cv.output = realise(cv, t, torch.arange(t.width))


@register_rule
class Meta(Rule):
    """A node the compact graph needs no value of: sizes and arithmetic on them (read off the
    shapes), a parameter its module's own op reads, ``y.expand_as(x)`` read by products and
    sums (they read ``y``, which broadcasts alike)."""
    kind = "meta"
    node_ops = ("get_attr",)
    methods = ("expand", "expand_as")

    def classify(self, node, modules):
        if node.op == "get_attr":
            if all(owner(u, modules) is not None for u in node.users):
                return Op(self.kind, node)
            raise refuse(node, modules, " (a parameter used outside its module)")
        if node.op == "call_method" and node.target in self.methods:
            if node.users and all(any(r.reads_through_expand(u) for r in claimants(u, modules))
                                  for u in node.users):
                return Op(self.kind, node)
            return None
        return Op(self.kind, node)

    def convert(self, cv, op):
        return None
