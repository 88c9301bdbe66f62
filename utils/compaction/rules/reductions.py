"""Ops across channel groups, computed at full width (``fullwidth``): sums and means over a
non-batch dim (a split attention's sum across its radix), softmax, stacking along a new dim
(selective kernels stack their branches). Every channel runs as in the dense network, the
removed channels' constants filled in: exact, and the convs before them stay pruned."""
import torch
import torch.nn.functional as F

from ..nodes import Op, bind, refuse, shape_of
from .registry import register_rule
from .rule import Rule


class _FullWidth(Rule):
    full_width = True
    always_full_width = True

    def full_width_attrs(self, cv, op):
        rank = len(shape_of(op.node if op.kind == "stack" else op.inputs[0]))
        dims = [d % rank for d in op.attrs["dims"]]
        if 0 in dims:
            raise refuse(op.node, cv.modules, " (a reduction over the batch dim)")
        return {"fn": op.attrs.get("fn", op.kind), "dims": dims,
                "keepdim": bool(op.attrs.get("keepdim", False))}


@register_rule
class Reduce(_FullWidth):
    """``reduce``: a sum or a mean over given dims (a mean over the image is a ``pool``)."""
    kind = "reduce"
    functions = (torch.mean, torch.sum)
    methods = ("mean", "sum")

    def classify(self, node, modules):
        fn = node.target if isinstance(node.target, str) else node.target.__name__
        a = bind(node, ("input", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False,
                                                               "dtype": None})
        if a["dim"] is None or a["dtype"] is not None:
            raise refuse(node, modules, f" (a {fn} over every dim, or into another dtype)")
        dims = list(a["dim"]) if isinstance(a["dim"], (list, tuple)) else [a["dim"]]
        return Op(self.kind, node, [node.args[0]], {"fn": fn, "dims": dims,
                                                    "keepdim": bool(a["keepdim"])})


@register_rule
class Softmax(_FullWidth):
    """``softmax`` over one explicit dim."""
    kind = "softmax"
    functions = (F.softmax, torch.softmax)
    methods = ("softmax",)

    def classify(self, node, modules):
        a = bind(node, ("input", "dim", "_stacklevel", "dtype"), {"dim": None, "dtype": None})
        if a["dim"] is None or a["dtype"] is not None:
            raise refuse(node, modules, " (a softmax without an explicit dim, or into a dtype)")
        return Op(self.kind, node, [node.args[0]], {"dims": [a["dim"]]})


@register_rule
class Stack(_FullWidth):
    """``stack`` of tensors along a new dim."""
    kind = "stack"
    functions = (torch.stack,)

    def classify(self, node, modules):
        a = bind(node, ("tensors", "dim"), {"dim": 0})
        return Op(self.kind, node, list(a["tensors"]), {"dims": [a["dim"]]})
