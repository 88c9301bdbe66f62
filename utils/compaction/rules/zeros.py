"""``new_zeros`` and ``zero_``: a tensor of zeros, every channel a uniform 0 (GhostNet's
partial residuals build on one)."""
import torch

from ..nodes import Op, refuse, shape_of
from ..state import Ref, T
from .registry import register_rule
from .rule import Rule


@register_rule
class Zeros(Rule):
    """``zeros`` of an image of its source's size."""
    kind = "zeros"
    methods = ("new_zeros", "zero_")

    def classify(self, node, modules):
        return Op(self.kind, node)

    def convert(self, cv, op):
        source = op.node.args[0]
        shape = shape_of(op.node)
        if len(shape) != 4 or tuple(shape_of(source)[2:]) != tuple(shape[2:]):
            raise refuse(op.node, cv.modules, " (zeros of another image size than their source)")
        ref = cv.state(source).ref if isinstance(cv.state(source), T) else Ref(cv.input_node)
        return T.uniform(torch.zeros(shape[1], dtype=torch.float64), ref)
