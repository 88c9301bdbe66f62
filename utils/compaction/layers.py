"""The compact network's convs and linear layers.

A ``FoldedConv`` is a conv with its BatchNorm folded in, over the kept filters and kept
input channels, and what the removed channels contribute: a border map (``map``: a
``ConstMap``, once per image size in eager mode) and the per-sample bias of scaled channels
(``smat`` over their factors, which the second input holds at ``spos``). An activation that
only reads the conv is applied in the same module, in place.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .constmaps import ConstMap
from .modules import MODE, activate_, activation, register, take_channels


def _own(specs: dict) -> dict:
    """The specs of a module's own buffers (not those of its layer or its map)."""
    return {k: v for k, v in specs.items() if not k.startswith(("map.", "conv.", "linear."))}


class FoldedConv(nn.Module):
    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.conv = nn.Conv2d(a["in"], a["out"], tuple(a["kernel"]), tuple(a["stride"]),
                              tuple(a["padding"]), tuple(a["dilation"]), a["groups"], bias=True)
        for key in ("index", "smat", "spos"):
            self.register_buffer(key, None)
        register(self, _own(specs))
        self.map = ConstMap(a["map"], specs) if a.get("map") else None
        self.source_bias, self.bn = bool(a["source_bias"]), bool(a["bn"])
        self.fixed = bool(a.get("fixed", False))  # weights of buffers (a blur), not learnt
        act = a.get("act")
        self.act = act["fn"] if act else None
        self.act_kw = dict(act["kw"]) if act else {}
        self.f = activation(act["fn"], self.act_kw) if act else None
        # plain attributes: the forward reads no buffer or submodule it does not need
        self.gathers, self.scaled = bool(a["gather"]), bool(a["sbias"])
        self.extras = bool(a.get("map")) or self.scaled or act is not None
        c = self.conv
        self.geometry = (c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor, *rest) -> torch.Tensor:
        if self.gathers:  # the input laid out in the compact groups
            x = take_channels(x, self.index)
        y = F.conv2d(x, self.conv.weight, self.conv.bias, *self.geometry)
        if not self.extras:
            return y
        pure = not MODE.eager
        refs = rest[1:] if self.scaled else rest
        if self.map is not None:
            m = self.map.get(refs)
            if m.dtype != y.dtype:
                m = m.to(y.dtype)  # under autocast
            y = y + m if pure else y.add_(m)
        if self.scaled:
            extra = (take_channels(rest[0], self.spos).flatten(1) @ self.smat.t()).view(
                y.shape[0], -1, 1, 1)
            y = y + extra if pure else y.add_(extra)
        if self.act is not None:
            y = self.f(y) if pure else activate_(self.act, self.act_kw, y)
        return y


class Linear(nn.Module):
    """A linear layer over the kept features; ``smat``/``spos`` as in ``FoldedConv``."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.linear = nn.Linear(a["in"], a["out"])
        for key in ("smat", "spos"):
            self.register_buffer(key, None)
        register(self, _own(specs))
        self.source_bias = bool(a["source_bias"])

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        y = self.linear(x)
        if self.smat is not None and s is not None:
            y = y + take_channels(s, self.spos).flatten(1) @ self.smat.t()
        return y
