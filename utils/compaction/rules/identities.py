"""Ops that are the identity in eval mode (dropout, stochastic depth) or always (``Identity``,
``contiguous``): the compact graph holds their input as their output."""
import torch.nn.functional as F
from torch import nn

from ..nodes import Op, bind
from .registry import register_rule
from .rule import Rule


@register_rule
class Identity(Rule):
    """``identity``: the output is the input."""
    kind = "identity"
    modules = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
    methods = ("contiguous", "clone", "detach")
    functions = (F.dropout,)
    function_names = ("stochastic_depth",)  # torchvision's, fx-wrapped
    channelwise = True
    keeps_views = True

    def classify(self, node, modules):
        if node.op == "call_function" and not _evaluating(node):
            return None  # dropout in training mode: not an identity
        return Op(self.kind, node, [node.args[0]])

    def passes_channels(self, node, modules):
        return node.op != "call_function" or _evaluating(node)

    def convert(self, cv, op):
        return cv.state(op.inputs[0])


def _evaluating(node) -> bool:
    """Was the dropout or stochastic depth traced in eval mode (``training=False``)?"""
    names = ("input", "p", "training") if node.target is F.dropout else \
        ("input", "p", "mode", "training")
    return bind(node, names, {"training": True})["training"] is False
