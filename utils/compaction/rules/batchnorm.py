"""BatchNorm: folded into the conv it follows (the pair discovery finds, ``tracing``), else kept
as a per-channel affine map. ``BatchNorm2d``, ``SyncBatchNorm`` and their subclasses; a
subclass that applies more (timm's ``BatchNormAct2d``) is traced into, its normalisation an
``F.batch_norm`` over the module's own statistics (``method.tracer``). A ``BatchNorm1d`` of
features (after a global pool: RepViT's head) is an affine map per feature."""
import torch
import torch.nn.functional as F
from torch import nn

from ...method.tracer import BATCHNORMS
from ..materialise import fold
from ..nodes import Op, Unsupported, refuse, shape_of
from ..state import Maps, Ref
from .registry import owned, register_rule
from .rule import Rule


@register_rule
class BatchNorm(Rule):
    """``bn``: y = scale·x + shift per channel, from the running statistics."""
    kind = "bn"
    modules = (*BATCHNORMS, nn.BatchNorm1d)
    functions = (F.batch_norm,)
    own_calls = {F.batch_norm: (("input", "running_mean", "running_var", "weight", "bias",
                                 "training", "momentum", "eps"),
                                ("running_mean", "running_var", "weight", "bias"))}
    channelwise = True
    emits = ("affine",)

    def classify(self, node, modules):
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.BatchNorm1d) and len(shape_of(node.args[0])) != 2:
                raise refuse(node, modules, " (a BatchNorm1d of a sequence, not of features)")
            return Op(self.kind, node, [node.args[0]], module=m)
        m = owned(node, modules, " (over other tensors than one module's own parameters and, "
                                 "in eval mode, statistics)")
        return Op(self.kind, node, [node.args[0]], module=m)

    def convert(self, cv, op):
        if op.node in cv.graph.folded:
            return cv.state(op.inputs[0])  # its conv computed it
        return _affine_bn(cv, op)

    def cost(self, node, hw):
        """A BatchNorm that no conv folds keeps γ and β; other per-channel scales (``affine``
        nodes of arithmetic and scaled channels) are derived, but for a learnable scale's own
        parameters (``params``)."""
        a = node["attrs"]
        return 0, affine_params(node["tensors"]["scale"]["shape"][1], a["bn"]) + \
            a.get("params", 0)


def affine_params(channels: int, bn: bool) -> int:
    return 2 * channels if bn else 0


def has_statistics(bn) -> bool:
    """Does ``bn`` normalise by running statistics in eval mode (a per-channel affine map)?"""
    return bn.track_running_stats and bn.running_var is not None


def fold_bn(bn, filters: int):
    """(scale, shift) in float64 of the BatchNorm ``bn`` (None: the identity)."""
    if bn is None:
        return torch.ones(filters, dtype=torch.float64), torch.zeros(filters, dtype=torch.float64)
    if not has_statistics(bn):
        raise Unsupported("cannot compact: a BatchNorm without running statistics "
                          "(track_running_stats=False) normalises each batch by its own")
    var, mean = bn.running_var.detach().double().cpu(), bn.running_mean.detach().double().cpu()
    gamma = bn.weight.detach().double().cpu() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double().cpu() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean


def _affine_bn(cv, op):
    """A BatchNorm that no conv folds (DenseNet's BN after a concatenation; a BatchNorm1d of
    pooled features)."""
    m = op.module
    x = fold(cv, cv.state(op.inputs[0]))
    cv.note("BatchNorm on its own")
    scale, shift = fold_bn(m, m.num_features)
    value = torch.where(x.uniform_mask(), scale * x.value + shift, torch.zeros_like(x.value))
    out = x.but(value=value if cv.exact else torch.zeros_like(value))
    if x.maps is not None:
        ids = x.maps.ids
        out = out.but(maps=Maps(ids, cv.b.affine(x.maps.expr, scale[ids], shift[ids],
                                                  x.spatial)))
    if not len(x.ids):
        return out
    shape = (1, -1, 1, 1) if x.spatial else (1, -1)
    node = cv.b.data("affine", [x.node], {"spatial": x.spatial, "bn": m.affine},
                     {"scale": scale[x.ids].view(shape).clone(),
                      "shift": shift[x.ids].view(shape).clone()})
    return out.but(node=node, ref=Ref(node) if x.spatial else x.ref)
