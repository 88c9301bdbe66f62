"""Ops that move channels around in the compact graph: concatenation, channel splits and
slices, channel shuffles (views that regroup the channels: renamed, no data node), spatial
slices, pools, flatten into a classifier, zeros, and the network's output.
"""
import torch

from . import fullwidth
from ..errors import UserError
from .materialise import fold, gather, realise
from .state import ChannelView, Maps, Ref, Scaled, T
from .tracing import permutation, refuse, shape_of


def convert_cat(cv, op) -> T:
    return concatenate(cv, [cv.state(n) for n in op.inputs])


def concatenate(cv, parts: list) -> T:
    """The tensors ``parts`` one after the other along the channels."""
    parts = [fold(cv, p) for p in parts]
    spatial = parts[0].spatial
    ids, nodes, values, offset = [], [], [], 0
    map_parts = []
    for p in parts:
        ids.append(p.ids + offset)
        if len(p.ids):
            nodes.append(p.node)
        values.append(p.value)
        if p.maps is not None:
            map_parts.append((p.maps, offset))
        offset += p.width
    width = offset
    maps = None
    if map_parts:
        map_ids = torch.cat([m.ids + off for m, off in map_parts])
        if len(map_parts) == 1:
            expr = map_parts[0][0].expr
        else:
            expr = cv.b.const("cat", [m.expr for m, _ in map_parts])
        maps = Maps(map_ids, expr)
    if len(nodes) > 1:
        cv.note("concatenation")
    node = nodes[0] if len(nodes) == 1 else (cv.b.data("cat", nodes, {}) if nodes else None)
    ref = Ref(node) if node is not None and spatial else parts[0].ref
    return T(width, torch.cat(ids), node, torch.cat(values), ref, spatial, maps=maps)


def channel_range(cv, x: T, start: int, stop: int) -> T:
    """Channels start…stop−1 of ``x`` (a split's part, or a slice)."""
    inside = (x.ids >= start) & (x.ids < stop)
    cv.note("channel split")
    if x.pending is not None and not bool(inside.all()):
        x = fold(cv, x)
        inside = (x.ids >= start) & (x.ids < stop)
    ids = x.ids[inside]
    node = None
    if len(ids):
        pos = inside.nonzero()[:, 0]
        node = x.node if len(ids) == len(x.ids) else gather(cv, x.node, pos, x.spatial)
    maps = scaled = None
    if x.maps is not None:
        keep = (x.maps.ids >= start) & (x.maps.ids < stop)
        if bool(keep.any()):
            maps = Maps(x.maps.ids[keep] - start, cv.b.select(x.maps.expr, keep.nonzero()[:, 0]))
    if x.scaled is not None:
        keep = (x.scaled.ids >= start) & (x.scaled.ids < stop)
        if bool(keep.any()):
            s = x.scaled
            scaled = Scaled(s.ids[keep] - start, s.value[keep], s.source, s.pos[keep])
    ref = Ref(node) if node is not None and x.spatial else x.ref
    return T(stop - start, ids - start, node, x.value[start:stop].clone(), ref, x.spatial, maps,
             scaled, x.pending)


def convert_setitem(cv, op) -> T:
    """``x[:, a:b] = v``: x's new state, channels a…b−1 taken from v (every later reader of x
    reads it); refused when a view taken of x before is read after it."""
    target, value = op.inputs
    order = cv.graph.position
    for view in target.users:
        if order[view] < order[op.node] and cv.graph.op_of[view].kind in _VIEWS and \
                any(order[u] > order[op.node] for u in view.users):
            raise refuse(op.node, cv.modules, f" (fx node {view.name} views the tensor it "
                                              "changes and is read afterwards)")
    x, start, stop = cv.state(target), op.attrs["start"], op.attrs["stop"]
    parts = [channel_range(cv, x, 0, start)] if start else []
    parts.append(cv.state(value))
    if stop < x.width:
        parts.append(channel_range(cv, x, stop, x.width))
    return concatenate(cv, parts)


_VIEWS = {"slice", "reshape", "flatten", "identity", "split"}


def convert_split(cv, op) -> tuple:
    x, start, parts = cv.state(op.inputs[0]), 0, []
    for size in op.attrs["sizes"]:
        parts.append(channel_range(cv, x, start, start + size))
        start += size
    return tuple(parts)


def convert_slice(cv, op) -> T:
    x = cv.state(op.inputs[0])
    slices = [slice(*s) for s in op.attrs["slices"]]
    if not isinstance(x, T) or (not x.spatial and len(slices) > 2):
        raise refuse(op.node, cv.modules, " (slicing a regrouped channel view)")
    start, stop, step = slices[1].indices(x.width)
    if step != 1:
        raise refuse(op.node, cv.modules, " (a strided channel slice)")
    if (start, stop) != (0, x.width):
        x = channel_range(cv, x, start, stop)
    spatial = [(s.start, s.stop, s.step) for s in slices[2:]]
    if all(s == (None, None, None) for s in spatial):
        return x
    return _spatial_slice(cv, x, spatial)


def _spatial_slice(cv, x: T, spatial: list) -> T:
    x = fold(cv, x)
    attrs = {"slices": [list(s) for s in spatial]}
    out = x.but(ref=x.ref.then(("slice", attrs["slices"])))
    if x.maps is not None:
        out = out.but(maps=Maps(x.maps.ids, cv.b.const("slice", [x.maps.expr], attrs)))
    if len(x.ids):
        node = cv.b.data("slice", [x.node], attrs)
        out = out.but(node=node, ref=Ref(node))
    return out


def convert_pool(cv, op) -> T:
    x = fold(cv, cv.state(op.inputs[0]))
    attrs = _plain(op.attrs)
    spatial_out = len(shape_of(op.node)) == 4
    maps = Maps(x.maps.ids, cv.b.const("pool", [x.maps.expr], attrs)) if x.maps else None
    value = x.value
    if attrs["type"] == "avg" and not _avg_keeps_uniform(attrs) and cv.exact:
        # a padded average counts the zero padding: uniform channels become maps
        uniform = x.uniform_mask() & (x.value != 0)
        ids = uniform.nonzero()[:, 0]
        if len(ids):
            cv.note("padded average of a constant")
            pooled = cv.b.const("pool", [cv.b.ones(x.ref)], attrs)
            new = Maps(ids, cv.b.affine(pooled, x.value[ids], torch.zeros(len(ids),
                                                                        dtype=torch.float64), True))
            value = torch.where(uniform, torch.zeros_like(value), value)
            maps = new if maps is None else Maps(torch.cat([maps.ids, new.ids]),
                                                 cv.b.const("cat", [maps.expr, new.expr]))
    out = x.but(value=value, maps=maps, spatial=spatial_out,
                ref=x.ref.then(("pool", attrs)) if spatial_out else x.ref)
    if len(x.ids):
        node = cv.b.data("pool", [x.node], attrs)
        out = out.but(node=node, ref=Ref(node) if spatial_out else x.ref)
    return out


def _plain(attrs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def _avg_keeps_uniform(attrs: dict) -> bool:
    padded = any(p for p in (attrs["padding"] if isinstance(attrs["padding"], list)
                             else [attrs["padding"]]))
    return attrs.get("divisor_override") is None and not (padded and attrs["count_include_pad"])


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
    name = op.node.target if isinstance(op.node.target, str) else op.node.target.__name__
    if in_shape == out_shape and name not in ("transpose", "permute"):
        return x
    view = x if isinstance(x, ChannelView) else ChannelView(x, torch.arange(x.width)) \
        if isinstance(x, T) and x.spatial else None
    if view is None or in_shape[0] != out_shape[0] or in_shape[-2:] != out_shape[-2:]:
        return fullwidth.convert(cv, op)  # channels regrouped with other dims
    index = view.index
    if name in ("transpose", "permute"):
        dims = permutation(op.node, len(in_shape))
        if dims[0] != 0 or dims[-2:] != [len(in_shape) - 2, len(in_shape) - 1]:
            return fullwidth.convert(cv, op)  # the batch or spatial dims move
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


def convert_zeros(cv, op) -> T:
    source = op.node.args[0]
    shape = shape_of(op.node)
    if len(shape) != 4 or tuple(shape_of(source)[2:]) != tuple(shape[2:]):
        raise refuse(op.node, cv.modules, " (zeros of another image size than their source)")
    ref = cv.state(source).ref if isinstance(cv.state(source), T) else Ref(cv.input_node)
    return T.uniform(torch.zeros(shape[1], dtype=torch.float64), ref)


def convert_output(cv, t) -> str:
    if not isinstance(t, T):
        raise UserError("cannot compact: the network's output is not a single tensor")
    return realise(cv, t, torch.arange(t.width))
