"""Activations — modules, functions or methods, and PReLU with one slope or one per channel.

Channel-wise: a uniform channel becomes its activation's value (in float64), a map goes through
the same activation in the constant graph, and only computed channels reach a data node (or
run inside the conv that computes them, when nothing else reads the conv).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..materialise import fold
from ..modules import activation
from ..nodes import Op, bind, refuse
from ..state import Maps, Ref
from .registry import owned, register_rule
from .rule import Rule

# module type -> (function name, the keyword arguments read from the module)
MODULES = {
    nn.ReLU: ("relu", ()), nn.ReLU6: ("relu6", ()), nn.SiLU: ("silu", ()),
    nn.Hardswish: ("hardswish", ()), nn.Hardsigmoid: ("hardsigmoid", ()),
    nn.Sigmoid: ("sigmoid", ()), nn.Tanh: ("tanh", ()), nn.Mish: ("mish", ()),
    nn.GELU: ("gelu", ("approximate",)), nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
    nn.ELU: ("elu", ("alpha",)), nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
}
FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
             F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
             torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
             F.tanh: "tanh", F.gelu: "gelu", F.mish: "mish", F.leaky_relu: "leaky_relu",
             F.elu: "elu", F.hardtanh: "hardtanh"}
KEYWORDS = {"gelu": {"approximate": "none"}, "leaky_relu": {"negative_slope": 0.01},
            "elu": {"alpha": 1.0}, "hardtanh": {"min_val": -1.0, "max_val": 1.0}}
METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
           "tanh": "tanh", "tanh_": "tanh"}
PRELU = {"fn": "prelu", "kw": {}}


@register_rule
class Activation(Rule):
    """``act``: an elementwise activation (``fn`` and its keyword arguments ``kw``)."""
    kind = "act"
    modules = (*MODULES, nn.PReLU)
    functions = (*FUNCTIONS, F.prelu)
    methods = tuple(METHODS)
    own_calls = {F.prelu: (("input", "weight"), ("weight",))}
    channelwise = True
    full_width = True

    def classify(self, node, modules):
        x = node.args[0]
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.PReLU):
                return Op(self.kind, node, [x], dict(PRELU, kw={}), module=m)
            fn, keys = next(MODULES[t] for t in type(m).__mro__ if t in MODULES)
            return Op(self.kind, node, [x], {"fn": fn, "kw": {k: getattr(m, k) for k in keys}})
        if node.op == "call_method":
            return Op(self.kind, node, [x], {"fn": METHODS[node.target], "kw": {}})
        if node.target is F.prelu:  # a traced-into subclass's own PReLU
            m = owned(node, modules, " (over other tensors than the module's own slopes)")
            return Op(self.kind, node, [x], dict(PRELU, kw={}), module=m)
        fn = FUNCTIONS[node.target]
        defaults = KEYWORDS.get(fn, {})
        kw = bind(node, ("input",) + tuple(defaults), defaults)
        return Op(self.kind, node, [x], {"fn": fn, "kw": {k: kw[k] for k in defaults}})

    def convert(self, cv, op):
        x = cv.state(op.inputs[0])
        slopes = _slopes(op, x.width)
        conv = cv.conv_to_extend(op.inputs[0], x) if slopes is None else None
        x = fold(cv, x)
        uniform = x.uniform_mask()
        if slopes is None:
            values = _value_op(activation(op.attrs["fn"], op.attrs["kw"]), x.value, x.spatial)
        else:  # PReLU: a slope per channel
            values = torch.where(x.value >= 0, x.value, slopes * x.value)
        out = x.but(value=torch.where(uniform, values, torch.zeros_like(x.value)))
        if x.maps is not None:
            tensors = {"weight": slopes[x.maps.ids]} if slopes is not None else None
            out = out.but(maps=Maps(x.maps.ids, cv.b.const("act", [x.maps.expr], op.attrs,
                                                            tensors)))
        if conv is not None:  # computed inside the conv
            conv["attrs"]["act"] = dict(op.attrs)
        elif len(x.ids):
            tensors = {"weight": slopes[x.ids].float()} if slopes is not None else None
            node = cv.b.data("act", [x.node], {**op.attrs, "spatial": x.spatial}, tensors)
            out = out.but(node=node, ref=Ref(node) if x.spatial else x.ref)
        return out

    def full_width_attrs(self, cv, op):
        if op.attrs["fn"] == "prelu":
            raise refuse(op.node, cv.modules, " (a PReLU on a regrouped view of the channels)")
        return {"fn": "act", "act": op.attrs["fn"], "kw": dict(op.attrs["kw"])}


def _value_op(fn, value: torch.Tensor, spatial: bool) -> torch.Tensor:
    shape = (1, -1, 1, 1) if spatial else (1, -1)
    return fn(value.view(shape)).flatten()


def _slopes(op, width: int) -> torch.Tensor | None:
    """PReLU's negative slopes, one per channel (float64), or None for other activations."""
    if op.attrs["fn"] != "prelu":
        return None
    w = op.module.weight.detach().double().cpu().flatten()
    return w.expand(width).clone() if len(w) == 1 else w
