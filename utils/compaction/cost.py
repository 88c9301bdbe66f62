"""What a network costs: multiply-accumulates and parameters, counted from the graph walk.

One set of formulas (``conv_cost``, ``linear_cost``) serves every count: the converter
applies them to each node it builds, so ``network_cost`` gives the dense network (nothing
pruned), the network a mask gives at any epoch (``NetworkCost``, the per-epoch ``flops_eff``
and ``params_eff``) and the compact network; ``compact_cost`` applies them to a compact
network's own modules. FLOPs are multiply-accumulates of convs and linear layers — a grouped
conv's filters each read their group's inputs only, a depthwise one a single channel — the
unit of the pruning papers (CIFAR ResNet-56 = 125.5 M). Parameters count every folded conv as
conv + BatchNorm (γ and β per filter), so a compact and a dense count compare layer for layer.
"""
import torch
from torch import nn

from ..method.graph import unwrap
from .converter import DenseGraph, convert


def conv_cost(out_hw: int, filters: int, inputs_per_group: int, kernel, source_bias: bool,
              bn: bool, scaled: int = 0) -> tuple[int, int]:
    """(MACs, parameters) of one conv: ``scaled`` channels enter as a per-sample bias (a
    matrix of filters × scaled)."""
    taps = int(kernel[0]) * int(kernel[1])
    weights = filters * inputs_per_group * taps
    macs = out_hw * weights + filters * scaled
    params = weights + filters * (int(source_bias) + 2 * int(bn)) + filters * scaled
    return macs, params


def linear_cost(features: int, outputs: int, bias: bool, scaled: int = 0) -> tuple[int, int]:
    macs = outputs * (features + scaled)
    return macs, macs + outputs * int(bias)


def affine_params(channels: int, bn: bool) -> int:
    """A BatchNorm that no conv folds keeps γ and β; other per-channel scales are derived."""
    return 2 * channels if bn else 0


def node_cost(node: dict, hw: int | None) -> tuple[int, int]:
    """(MACs, parameters) of one node of a compact graph (``hw``: a conv's output pixels)."""
    a, op = node["attrs"], node["op"]
    if op == "conv":
        return conv_cost(hw, a["out"], a["in"] // a["groups"], a["kernel"], a["source_bias"],
                         a["bn"], a["sbias"])
    if op == "linear":
        return linear_cost(a["in"], a["out"], a["source_bias"], a["sbias"])
    if op == "affine":
        return 0, affine_params(node["tensors"]["scale"]["shape"][1], a["bn"])
    if op == "opaque":
        return 0, a["params"]
    if op == "tensor":  # a 1-D conv across the channels has MACs and weights; reshapes none
        return a.get("macs", 0), a.get("params", 0)
    return 0, 0


def graph_cost(cv) -> tuple[int, int]:
    """(MACs, parameters) of the compact graph a conversion built (its live nodes)."""
    total = [0, 0]
    for node in cv.b.live(cv.output):
        macs, params = node_cost(node, cv.b.hw.get(node["name"]))
        total[0] += macs
        total[1] += params
    return total[0], total[1]


def network_cost(model: nn.Module, input_shape, pruned: dict | None = None,
                 exact: bool = True) -> tuple[int, int]:
    """(MACs, parameters) for one image of ``input_shape`` (C, H, W) with ``pruned``
    ({conv: filter indices}) removed; nothing pruned: the dense network."""
    return NetworkCost(model, input_shape)(pruned or {}, exact)


class NetworkCost:
    """The cost of a model under changing masks: traced once, walked per call. Ops the
    compactor does not understand are counted as full-width (and cost nothing themselves),
    so a run can count FLOPs of a network it cannot compact."""

    def __init__(self, model: nn.Module, input_shape):
        self.graph = DenseGraph(unwrap(model), input_shape, lenient=True)

    def __call__(self, pruned: dict, exact: bool = True) -> tuple[int, int]:
        return graph_cost(convert(self.graph, pruned, exact=exact, check=False, emit=False))


@torch.no_grad()
def compact_cost(compact: nn.Module, input_shape) -> tuple[int, int]:
    """(MACs, parameters) of a compact network's own modules for one image of ``input_shape``."""
    from .layers import FoldedConv, Linear
    from .modules import Affine, TensorOp

    total, handles = [0, 0], []

    def add(cost):
        total[0] += cost[0]
        total[1] += cost[1]

    def on_conv(m, inputs, out):
        c = m.conv
        scaled = m.smat.shape[1] if m.smat is not None else 0
        add(conv_cost(out.shape[2] * out.shape[3], c.out_channels, c.in_channels // c.groups,
                      c.kernel_size, m.source_bias, m.bn, scaled))

    def on_linear(m, inputs, out):
        scaled = m.smat.shape[1] if m.smat is not None else 0
        add(linear_cost(m.linear.in_features, m.linear.out_features, m.source_bias, scaled))

    def on_affine(m, inputs, out):
        add((0, affine_params(out.shape[1], m.bn)))

    def on_tensor(m, inputs, out):
        add((m.a.get("macs", 0), m.a.get("params", 0)))

    hooks = {FoldedConv: on_conv, Linear: on_linear, Affine: on_affine, TensorOp: on_tensor}
    for m in compact.modules():
        if type(m) in hooks:
            handles.append(m.register_forward_hook(hooks[type(m)]))
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
