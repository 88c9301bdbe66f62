"""What a network costs: multiply-accumulates and parameters, counted from the graph walk.

One set of formulas (``conv_cost``, ``linear_cost``, ``affine_params``: each with the rule of
its layer, ``rules``) serves every count: the converter applies them to each node it builds,
so ``network_cost`` gives the dense network (nothing pruned), the network a mask gives at any
epoch (``NetworkCost``, the per-epoch ``flops_eff`` and ``params_eff``) and the compact
network; ``compact_cost`` applies them to a compact
network's own modules. FLOPs are multiply-accumulates of convs and linear layers — a grouped
conv's filters each read their group's inputs only, a depthwise one a single channel — the
unit of the pruning papers (CIFAR ResNet-56 = 125.5 M). Parameters count every folded conv as
conv + BatchNorm (γ and β per filter), so a compact and a dense count compare layer for layer.
"""
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .converter import convert
from .rules import COSTS
from .rules.batchnorm import affine_params
from .rules.convolution import conv_cost
from .rules.linear import linear_cost
from .tracing import as_graph


def node_cost(node: dict, hw: int | None) -> tuple[int, int]:
    """(MACs, parameters) of one node of a compact graph (``hw``: a conv's output pixels), as
    the rule that emits it counts it."""
    rule = COSTS.get(node["op"])
    return rule.cost(node, hw) if rule is not None else (0, 0)


def graph_cost(cv) -> tuple[int, int]:
    """(MACs, parameters) of the compact graph a conversion built (its live nodes)."""
    total = [0, 0]
    for node in cv.b.live(cv.output):
        macs, params = node_cost(node, cv.b.hw.get(node["name"]))
        total[0] += macs
        total[1] += params
    return total[0], total[1]


def network_cost(model, input_shape, pruned: dict | None = None,
                 exact: bool = True) -> tuple[int, int]:
    """(MACs, parameters) for one image of ``input_shape`` (C, H, W) with ``pruned``
    ({conv: filter indices}) removed; nothing pruned: the dense network. ``model``: an
    ``nn.Module`` or its ``ModelGraph``."""
    return NetworkCost(model, input_shape)(pruned or {}, exact)


class NetworkCost:
    """The cost of a model under changing masks: traced once, walked per call. A part kept
    whole counts what the dense network computes of it (its MACs measured once, as torch's
    FLOP counter counts them), so a run counts FLOPs of any network it trains."""

    def __init__(self, model, input_shape):
        """``model``: an ``nn.Module``, or its ``ModelGraph`` (reused, shaped if need be)."""
        self.graph = as_graph(model, input_shape)

    def __call__(self, pruned: dict, exact: bool = True) -> tuple[int, int]:
        return graph_cost(convert(self.graph, pruned, exact=exact, check=False, emit=False,
                                  strict=False))


@torch.no_grad()
def compact_cost(compact: nn.Module, input_shape) -> tuple[int, int]:
    """(MACs, parameters) of a compact network's own modules for one image of ``input_shape``."""
    from .layers import FoldedConv, Linear
    from .modules import Affine, Held, TensorOp

    total, handles = [0, 0], []

    def add(cost):
        total[0] += cost[0]
        total[1] += cost[1]

    def on_conv(m, inputs, out):
        c = m.conv
        scaled = m.smat.shape[1] if m.smat is not None else 0
        add(conv_cost(out.shape[2] * out.shape[3], c.out_channels, c.in_channels // c.groups,
                      c.kernel_size, m.source_bias, m.bn, scaled, m.fixed))

    def on_linear(m, inputs, out):
        scaled = m.smat.shape[1] if m.smat is not None else 0
        add(linear_cost(m.linear.in_features, m.linear.out_features, m.source_bias, scaled))

    def on_affine(m, inputs, out):
        add((0, affine_params(out.shape[1], m.bn) + m.params))

    def on_tensor(m, inputs, out):
        add((m.a.get("macs", 0), m.a.get("params", 0)))

    counting: list = []

    def before_held(m, inputs):  # a part kept whole: what torch counts of it, as the walk did
        counting.append(FlopCounterMode(display=False))
        counting[-1].__enter__()

    def on_held(m, inputs, out):
        counter = counting.pop()
        counter.__exit__(None, None, None)
        add((counter.get_total_flops() // 2, sum(p.numel() for p in m.piece.parameters())))

    hooks = {FoldedConv: on_conv, Linear: on_linear, Affine: on_affine, TensorOp: on_tensor,
             Held: on_held}
    for m in compact.modules():
        if type(m) in hooks:
            handles.append(m.register_forward_hook(hooks[type(m)]))
        if type(m) is Held:
            handles.append(m.register_forward_pre_hook(before_held))
    was = compact.training
    p = next(compact.parameters())
    try:
        compact.eval()
        compact(torch.zeros((1,) + tuple(input_shape)[-3:], dtype=p.dtype, device=p.device))
    finally:
        compact.train(was)
        for h in handles:
            h.remove()
    return total[0], total[1]
