"""A 1-D conv across the channels (ECA: the pooled channels as one sequence, each output a mix
of its neighbours): computed at full width, the removed channels' constants filled in."""
from torch import nn

from ..fullwidth import dense_node
from ..nodes import Op, refuse, shape_of
from ..state import Full
from .registry import register_rule
from .rule import Rule


@register_rule
class Conv1d(Rule):
    """``conv1d``: ``nn.Conv1d`` with numeric zero padding."""
    kind = "conv1d"
    modules = (nn.Conv1d,)
    emits = ("tensor",)
    any_rank = True

    def classify(self, node, modules):
        m = modules[node.target]
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise refuse(node, modules, " (padding other than numeric zeros)")
        return Op(self.kind, node, [node.args[0]], module=m)

    def convert(self, cv, op):
        m, out = op.module, shape_of(op.node)
        cv.note("computed at full width")
        macs = out[-1] * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0]
        tensors = {"weight": m.weight.detach().double().cpu()}
        if m.bias is not None:
            tensors["bias"] = m.bias.detach().double().cpu()
        attrs = {"fn": "conv1d", "stride": list(m.stride), "padding": list(m.padding),
                 "dilation": list(m.dilation), "groups": m.groups, "macs": macs,
                 "params": sum(t.numel() for t in tensors.values())}
        node = cv.b.data("tensor", [dense_node(cv, op.inputs[0])], attrs, tensors)
        return Full(node, tuple(out))

    def cost(self, node, hw):
        """A full-width ``tensor`` node: this conv's MACs and weights; reshapes and the other
        full-width ops carry none."""
        a = node["attrs"]
        return a.get("macs", 0), a.get("params", 0)
