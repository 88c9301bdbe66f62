"""Views: ``view``/``reshape``/``transpose``/``permute`` that only regroup the channels (a
channel shuffle: the compact channels are renamed, no data node), ``flatten`` (or
``view(N, -1)``) of a map into a classifier's features; any other view runs at full width
(``fullwidth``: a split attention's radix dims)."""
import math

import torch
from torch import nn

from .. import fullwidth
from ..materialise import fold
from ..nodes import Op, bind, permutation, refuse, shape_of, target_name
from ..state import ChannelView, Maps, Scaled, T
from .registry import register_rule
from .rule import Rule


class _View(Rule):
    keeps_views = True
    full_width = True

    def full_width_attrs(self, cv, op):
        return full_width_attrs(cv, op)


@register_rule
class Reshape(_View):
    """``reshape``: a view, reshape, transpose or permute, or an ``unsqueeze`` (GCNet's: a
    reshape that inserts a dim of size 1)."""
    kind = "reshape"
    functions = (torch.transpose, torch.permute, torch.reshape, torch.unsqueeze)
    methods = ("view", "reshape", "transpose", "permute", "unsqueeze")

    def classify(self, node, modules):
        if target_name(node) == "unsqueeze":
            # traced at batch 1, a new first dim would look like a new second one
            dim = bind(node, ("input", "dim"), {})["dim"]
            if dim % (len(shape_of(node.args[0])) + 1) == 0:
                raise refuse(node, modules, " (a new dim before the batch dim)")
        return super().classify(node, modules)

    def convert(self, cv, op):
        return convert_reshape(cv, op)


@register_rule
class Flatten(_View):
    """``flatten`` from ``start`` to ``end``."""
    kind = "flatten"
    modules = (nn.Flatten,)
    functions = (torch.flatten,)
    methods = ("flatten",)

    def classify(self, node, modules):
        if node.op == "call_module":
            m = modules[node.target]
            return Op(self.kind, node, [node.args[0]], {"start": m.start_dim, "end": m.end_dim})
        a = bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return Op(self.kind, node, [node.args[0]], {"start": a["start_dim"], "end": a["end_dim"]})

    def needs(self, op, out, live):
        """A map flattened into features: a channel is needed when any of its features is."""
        x = op.inputs[0]
        if len(shape_of(op.node)) == 2 and len(shape_of(x)) == 4:
            live.add(x, out.view(shape_of(x)[1], -1).any(1))
        else:
            super().needs(op, out, live)

    def convert(self, cv, op):
        return convert_flatten(cv, op)


def full_width_attrs(cv, op) -> dict:
    """A reshape keeps the batch dim, and the image's height and width as its last dims or
    merges only dims of size 1 (a pooled attention vector), which no image size changes; a
    transpose or permute keeps the batch dim."""
    node, out = op.node, list(shape_of(op.node))
    if op.kind == "reshape" and target_name(node) in ("transpose", "permute"):
        dims = permutation(node, len(shape_of(op.inputs[0])))
        if dims[0] != 0:
            raise refuse(node, cv.modules, " (a transpose of the batch dim)")
        return {"fn": "permute", "dims": dims}
    shape_in = list(shape_of(op.inputs[0]))
    if out[0] != shape_in[0]:
        raise refuse(node, cv.modules, " (a reshape of the batch dim)")
    keep = len(shape_in) >= 3 and len(out) >= 3 and shape_in[-2:] == out[-2:] and \
        math.prod(shape_in[-2:]) > 1
    if not keep and len(shape_in) >= 4 and math.prod(shape_in[2:]) > 1:
        raise refuse(node, cv.modules, " (a reshape that mixes the channels with the image's "
                                       "height and width)")
    if fullwidth.sized(cv, op.inputs[0]):
        raise refuse(node, cv.modules, " (a reshape of a value that may hold the image's "
                                       "height and width in its dims)")
    return {"fn": "reshape", "dims": out[1:-2] if keep else out[1:], "spatial": keep}


def convert_flatten(cv, op) -> T | ChannelView:
    x = cv.state(op.inputs[0])
    in_shape, out_shape = shape_of(op.inputs[0]), shape_of(op.node)
    if isinstance(x, T) and x.spatial and len(out_shape) == 2 and len(in_shape) == 4:
        return _features(cv, x, in_shape[2] * in_shape[3])
    return convert_reshape(cv, op)


def _features(cv, x: T, hw: int) -> T:
    """(N, C, H, W) → (N, C·H·W): feature c·HW + p is channel c at pixel p."""
    if hw == 1:
        out = x.but(spatial=False)
        if x.maps is not None:
            out = out.but(maps=Maps(x.maps.ids, cv.b.const("flatten", [x.maps.expr])))
    else:
        x = fold(cv, x)
        expand = lambda ids: (ids.view(-1, 1) * hw + torch.arange(hw)).flatten()  # noqa: E731
        out = T(x.width * hw, expand(x.ids), x.node, x.value.repeat_interleave(hw), x.ref,
                False)
        if x.maps is not None:
            out = out.but(maps=Maps(expand(x.maps.ids), cv.b.const("flatten", [x.maps.expr])))
    if len(out.ids):
        node = cv.b.data("flatten", [out.node], {})
        out = out.but(node=node)
    if out.pending is not None:
        out = out.but(pending=cv.b.const("flatten", [out.pending]))
    return out


def convert_reshape(cv, op) -> T | ChannelView:
    """Views that only regroup the channel dim (a channel shuffle): no data node, the
    compact channels are renamed."""
    x = cv.state(op.inputs[0])
    in_shape, out_shape = list(shape_of(op.inputs[0])), list(shape_of(op.node))
    if isinstance(x, T) and x.spatial and len(in_shape) == 4 and len(out_shape) == 2 and \
            in_shape[0] == out_shape[0]:  # x.view(N, -1): a flatten
        return _features(cv, x, in_shape[2] * in_shape[3])
    name = target_name(op.node)
    if in_shape == out_shape and name not in ("transpose", "permute"):
        return x
    view = x if isinstance(x, ChannelView) else ChannelView(x, torch.arange(x.width)) \
        if isinstance(x, T) and x.spatial else None
    if view is None or in_shape[0] != out_shape[0] or in_shape[-2:] != out_shape[-2:]:
        return fullwidth.compute(cv, op, full_width_attrs(cv, op))  # regrouped with other dims
    index = view.index
    if name in ("transpose", "permute"):
        dims = permutation(op.node, len(in_shape))
        if dims[0] != 0 or dims[-2:] != [len(in_shape) - 2, len(in_shape) - 1]:
            return fullwidth.compute(cv, op, full_width_attrs(cv, op))  # batch or image dims move
        index = index.permute([d - 1 for d in dims[1:-2]])
    else:
        index = index.reshape(out_shape[1:-2])
    if index.dim() > 1:
        return ChannelView(view.base, index)
    cv.note("channel shuffle")
    return _renamed(view.base, index.flatten())


def _renamed(base: T, index: torch.Tensor) -> T:  # a channel shuffle
    """Channel k of the result is channel ``index[k]`` of ``base``."""
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(len(index))
    maps = Maps(inverse[base.maps.ids], base.maps.expr) if base.maps is not None else None
    scaled = None
    if base.scaled is not None:
        s = base.scaled
        scaled = Scaled(inverse[s.ids], s.value, s.source, s.pos)
    return base.but(ids=inverse[base.ids], value=base.value[index], maps=maps, scaled=scaled)
