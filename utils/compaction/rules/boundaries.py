"""The graph's ends and the nodes the compact graph holds no value of: the input, the output,
``meta`` (sizes read off a tensor, an ``expand_as`` before a product) and ``constant`` (a
tensor computed from the model's parameters alone: a module's own parameters, a learnable
scale, a position table)."""
import torch

from ...errors import UserError
from ..materialise import realise
from ..nodes import Op, shape_of
from ..state import Ref, T
from .registry import claimants, register_rule
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
    shapes), ``y.expand_as(x)`` read by products and sums (they read ``y``, which broadcasts
    alike)."""
    kind = "meta"
    methods = ("expand", "expand_as")

    def classify(self, node, modules):
        if node.op == "call_method" and node.target in self.methods:
            if node.users and all(any(r.reads_through_expand(u) for r in claimants(u, modules))
                                  for u in node.users):
                return Op(self.kind, node)
            return None
        return Op(self.kind, node)

    def convert(self, cv, op):
        return None


@register_rule
class Constant(Rule):
    """A tensor of the parameters alone (``nodes.is_constant``): the ops that read one take
    its value when they convert (``tracing.ModelGraph.constant_value``: a learnable scale
    into an affine map) or recompute it in a part kept whole; the compact graph holds none.
    The graph gives its nodes this kind; it claims none itself."""
    kind = "constant"

    def classify(self, node, modules):
        return None

    def convert(self, cv, op):
        return None
