"""BatchNorm: folded into the conv it follows (the pair discovery finds, ``tracing``), else kept
as a per-channel affine map. ``BatchNorm2d``, ``SyncBatchNorm`` and their subclasses; a
subclass that applies more (timm's ``BatchNormAct2d``) is traced into, its normalisation an
``F.batch_norm`` over the module's own statistics (``method.tracer``)."""
import torch
import torch.nn.functional as F

from ...errors import UserError
from ...method.tracer import BATCHNORMS
from ..materialise import fold
from ..nodes import Op
from ..state import Maps, Ref
from .registry import owned, register_rule
from .rule import Rule


@register_rule
class BatchNorm(Rule):
    """``bn``: y = scale·x + shift per channel, from the running statistics."""
    kind = "bn"
    modules = BATCHNORMS
    functions = (F.batch_norm,)
    own_calls = {F.batch_norm: (("input", "running_mean", "running_var", "weight", "bias",
                                 "training", "momentum", "eps"),
                                ("running_mean", "running_var", "weight", "bias"))}
    channelwise = True
    emits = ("affine",)

    def classify(self, node, modules):
        if node.op == "call_module":
            return Op(self.kind, node, [node.args[0]], module=modules[node.target])
        m = owned(node, modules, " (over other tensors than one module's own parameters and, "
                                 "in eval mode, statistics)")
        return Op(self.kind, node, [node.args[0]], module=m)

    def convert(self, cv, op):
        if op.node in cv.graph.folded:
            return cv.state(op.inputs[0])  # its conv computed it
        return _affine_bn(cv, op)

    def cost(self, node, hw):
        """A BatchNorm that no conv folds keeps γ and β; other per-channel scales (``affine``
        nodes of arithmetic and scaled channels) are derived."""
        return 0, affine_params(node["tensors"]["scale"]["shape"][1], node["attrs"]["bn"])


def affine_params(channels: int, bn: bool) -> int:
    return 2 * channels if bn else 0


def fold_bn(bn, filters: int):
    """(scale, shift) in float64 of the BatchNorm ``bn`` (None: the identity)."""
    if bn is None:
        return torch.ones(filters, dtype=torch.float64), torch.zeros(filters, dtype=torch.float64)
    if not bn.track_running_stats or bn.running_var is None:
        raise UserError("cannot compact: the BatchNorm after a conv has no running "
                        "statistics (track_running_stats=False), so it cannot be folded")
    var, mean = bn.running_var.detach().double().cpu(), bn.running_mean.detach().double().cpu()
    gamma = bn.weight.detach().double().cpu() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double().cpu() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean


def _affine_bn(cv, op):
    """A BatchNorm that no conv folds (DenseNet's BN after a concatenation)."""
    m = op.module
    x = fold(cv, cv.state(op.inputs[0]))
    cv.note("BatchNorm on its own")
    scale, shift = fold_bn(m, m.num_features)
    value = torch.where(x.uniform_mask(), scale * x.value + shift, torch.zeros_like(x.value))
    out = x.but(value=value if cv.exact else torch.zeros_like(value))
    if x.maps is not None:
        ids = x.maps.ids
        out = out.but(maps=Maps(ids, cv.b.affine(x.maps.expr, scale[ids], shift[ids], True)))
    if not len(x.ids):
        return out
    node = cv.b.data("affine", [x.node], {"spatial": True, "bn": m.affine},
                     {"scale": scale[x.ids].view(1, -1, 1, 1).clone(),
                      "shift": shift[x.ids].view(1, -1, 1, 1).clone()})
    return out.but(node=node, ref=Ref(node))
