"""Linear layers (and subclasses: timm's, traced into as ``F.linear`` over their own tensors).

The input's computed features are read through the kept columns; uniform features fold into
the bias (in float64, a few rows at a time: a classifier can hold 100 M weights), map features
become a pending map, scaled ones a per-sample bias.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..materialise import fold
from ..nodes import Op, Unsupported
from ..state import Maps, Ref, T
from .registry import owned, register_rule
from .rule import Rule, bias64


@register_rule
class Linear(Rule):
    """``linear``: ``nn.Linear``, every input feature it reads."""
    kind = "linear"
    modules = (nn.Linear,)
    functions = (F.linear,)
    own_calls = {F.linear: (("input", "weight", "bias"), ("weight", "bias"))}
    emits = ("linear",)

    def classify(self, node, modules):
        m = modules[node.target] if node.op == "call_module" else owned(
            node, modules, " (over other tensors than the module's own weight and bias)")
        return Op(self.kind, node, [node.args[0]], module=m)

    def convert(self, cv, op):
        return convert_linear(cv, op)

    def cost(self, node, hw):
        a = node["attrs"]
        return linear_cost(a["in"], a["out"], a["source_bias"], a["sbias"])


def linear_cost(features: int, outputs: int, bias: bool, scaled: int = 0) -> tuple[int, int]:
    macs = outputs * (features + scaled)
    return macs, macs + outputs * int(bias)


def convert_linear(cv, op) -> T:
    m = op.module
    x = cv.state(op.inputs[0])
    if x.spatial:
        raise Unsupported(f"cannot compact: linear layer '{op.node.target}' reads a 4-D "
                          "tensor")
    if x.pending is not None or (not len(x.ids) and x.scaled is not None):
        x = fold(cv, x)
    w = m.weight.detach().cpu()  # not in float64: a classifier can hold 100 M weights
    bias = bias64(m, m.out_features)
    if not len(x.ids):  # a constant input: a constant output
        return _constant_linear(cv, x, w.double(), bias)
    every = len(x.ids) == w.shape[1] and torch.equal(x.ids, torch.arange(w.shape[1]))
    if not cv.emit:  # only counting: the shape is enough
        kept = torch.empty((w.shape[0], len(x.ids)), device="meta")
    else:
        kept = w if every else w.index_select(1, x.ids)
    tensors = {"linear.weight": kept}
    inputs, pending, extra = [x.node], None, 0
    if cv.exact:
        uniform = x.uniform_mask()
        if bool(x.value[uniform].count_nonzero()):
            cv.note("constant features into a linear bias")
            bias = bias + _matvec64(w, torch.where(uniform, x.value, 0))
        if x.maps is not None:
            pending = cv.b.const("linear", [x.maps.expr], {},
                                 {"weight": w[:, x.maps.ids].double()})
        if x.scaled is not None:
            tensors["smat"] = w[:, x.scaled.ids].double() * x.scaled.value.view(1, -1)
            tensors["spos"] = x.scaled.pos.clone()
            inputs.append(x.scaled.source)
            extra = len(x.scaled.ids)
            cv.note("scaled into a per-sample bias")
    tensors["linear.bias"] = bias
    k, o = len(x.ids), m.out_features
    attrs = {"in": k, "out": o, "sbias": extra, "source_bias": m.bias is not None}
    node = cv.b.data("linear", inputs, attrs, tensors)
    return T(o, torch.arange(o), node, torch.zeros(o, dtype=torch.float64), Ref(node),
             spatial=False, pending=pending)


def _matvec64(w: torch.Tensor, v: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """w @ v in float64, a few rows at a time (no float64 copy of a big classifier)."""
    return torch.cat([w[i:i + rows].double() @ v for i in range(0, w.shape[0], rows)])


def _constant_linear(cv, x: T, w, bias) -> T:
    out = T.uniform(bias + w @ x.value if cv.exact else torch.zeros_like(bias), x.ref, False)
    if x.maps is not None and cv.exact:
        expr = cv.b.const("linear", [x.maps.expr], {}, {"weight": w[:, x.maps.ids]})
        ids = torch.arange(len(bias))
        return out.but(value=torch.zeros_like(bias), maps=Maps(
            ids, cv.b.affine(expr, torch.ones_like(bias), out.value, False)))
    return out
