"""Ops that route channels: concatenation, channel splits (and their items), slices of the
channels or of the image, and ``x[:, a:b] = v`` (a partial in-place residual).

None computes anything of its own: the compact graph takes, renames or joins the narrow
tensors, and a constant channel stays where it is routed.
"""
import operator

import torch

from ..materialise import fold, gather
from ..nodes import Op, bind, refuse, shape_of
from ..state import Maps, Ref, Scaled, T
from .registry import register_rule
from .rule import Rule

VIEWS = {"slice", "reshape", "flatten", "identity", "split"}  # results that share storage


@register_rule
class Cat(Rule):
    """``cat``: ``torch.cat`` along the channels."""
    kind = "cat"
    functions = (torch.cat, torch.concat)

    def classify(self, node, modules):
        a = bind(node, ("tensors", "dim"), {"dim": 0})
        if a["dim"] % len(shape_of(node)) != 1:
            raise refuse(node, modules, " (concatenation along another dim than the channels)")
        return Op(self.kind, node, list(a["tensors"]))

    def needs(self, op, out, live):
        start = 0
        for x in op.inputs:
            width = shape_of(x)[1]
            live.add(x, out[start:start + width])
            start += width

    def convert(self, cv, op):
        return concatenate(cv, [cv.state(n) for n in op.inputs])


@register_rule
class Split(Rule):
    """``split``: ``chunk``/``split`` of the channels into a tuple (read by ``item``)."""
    kind = "split"
    functions = (torch.chunk, torch.split)
    methods = ("chunk", "split")

    def classify(self, node, modules):
        dim = bind(node, ("input", "n", "dim"), {"dim": 0})["dim"]
        if dim % len(shape_of(node.args[0])) != 1:
            raise refuse(node, modules, " (a split along another dim than the channels)")
        return Op(self.kind, node, [node.args[0]], {"sizes": [s[1] for s in shape_of(node)]})

    def convert(self, cv, op):
        x, start, parts = cv.state(op.inputs[0]), 0, []
        for size in op.attrs["sizes"]:
            parts.append(channel_range(cv, x, start, start + size))
            start += size
        return tuple(parts)


@register_rule
class Item(Rule):
    """``item``: one part of a split's tuple."""
    kind = "item"
    functions = (operator.getitem,)

    def classify(self, node, modules):
        source, index = node.args
        if not isinstance(shape_of(source), list):
            return None  # a slice of a tensor (``slice``)
        return Op(self.kind, node, [source], {"index": index})

    def needs(self, op, out, live):
        """The item's channels of the split's input (the split itself routes nothing)."""
        split = op.inputs[0]
        sizes = [s[1] for s in shape_of(split)]
        start = sum(sizes[:op.attrs["index"]])
        mask = torch.zeros(sum(sizes), dtype=torch.bool)
        mask[start:start + sizes[op.attrs["index"]]] = out
        live.add(split.args[0], mask)

    def convert(self, cv, op):
        return cv.state(op.inputs[0])[op.attrs["index"]]


@register_rule
class Slice(Rule):
    """``slice``: ``x[:, a:b]`` (a run of channels) and ``x[:, :, ::2, ::2]`` (the image)."""
    kind = "slice"
    functions = (operator.getitem,)

    def classify(self, node, modules):
        source, index = node.args
        index = index if isinstance(index, tuple) else (index,)
        rank = len(shape_of(source))
        if all(isinstance(s, slice) for s in index) and len(index) <= rank and index and \
                index[0] == slice(None):
            slices = list(index) + [slice(None)] * (rank - len(index))
            return Op(self.kind, node, [source],
                      {"slices": [(s.start, s.stop, s.step) for s in slices]})
        raise refuse(node, modules, " (indexing other than slices)")

    def needs(self, op, out, live):
        x = op.inputs[0]
        slices = op.attrs["slices"]
        if tuple(slices[1]) == (None, None, None):  # the image only: channel-wise
            live.add(x, out if len(shape_of(x)) > 1 and shape_of(x)[1] == len(out)
                     else live.full(x))
            return
        run = _channel_slice(op)
        if run is None:
            if bool(out.any()):
                live.add(x, live.full(x))
            return
        mask = torch.zeros(shape_of(x)[1], dtype=torch.bool)
        mask[run[0]:run[1]] = out
        live.add(x, mask)

    def convert(self, cv, op):
        return convert_slice(cv, op)


@register_rule
class Setitem(Rule):
    """``setitem``: ``x[:, a:b] = v`` (and ``+=``): channels a…b−1 of x become v's, for every
    later reader of x."""
    kind = "setitem"
    functions = (operator.setitem,)
    shapeless = True
    live_without_readers = True
    opaque_when_refused = False

    def classify(self, node, modules):
        x, index, value = node.args
        run = _channel_run(index, len(shape_of(x))) if shape_of(x) is not None else None
        if run is None or not isinstance(value, torch.fx.Node) or shape_of(value) is None:
            raise refuse(node, modules, " (an assignment other than to a run of channels)")
        start, stop, step = run.indices(shape_of(x)[1])
        if step != 1 or list(shape_of(value)) != [shape_of(x)[0], stop - start,
                                                  *shape_of(x)[2:]]:
            raise refuse(node, modules, " (an assignment of another shape, or to strided "
                                        "channels)")
        return Op(self.kind, node, [x, value], {"start": start, "stop": stop})

    def needs(self, op, out, live):
        """What x's later readers need of channels a…b−1, v provides."""
        target, value = op.inputs
        later = live.of(target)
        if later is None:
            later = torch.zeros(shape_of(target)[1], dtype=torch.bool)
        live.add(value, later[op.attrs["start"]:op.attrs["stop"]])

    def convert(self, cv, op):
        """x's new state (every later reader of x reads it); no value of its own."""
        cv.states[op.inputs[0]] = convert_setitem(cv, op)


def _channel_run(index, rank: int):
    """The channel slice of an index that takes channels only (``x[:, a:b]``), else None."""
    if not isinstance(index, tuple):
        index = (index,)
    if not index or len(index) > rank or index[0] != slice(None) or \
            not all(isinstance(s, slice) for s in index) or \
            any(s != slice(None) for s in index[2:]):
        return None
    return index[1] if len(index) > 1 else slice(None)


def _channel_slice(op):
    """(start, stop) of a slice that takes a run of channels and whole spatial dims."""
    slices = op.attrs["slices"]
    if any(tuple(s) != (None, None, None) for i, s in enumerate(slices) if i != 1):
        return None
    width = shape_of(op.inputs[0])[1]
    start, stop, step = slice(*slices[1]).indices(width)
    return (start, stop) if step == 1 else None


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
        if order[view] < order[op.node] and cv.graph.op_of[view].kind in VIEWS and \
                any(order[u] > order[op.node] for u in view.users):
            raise refuse(op.node, cv.modules, f" (fx node {view.name} views the tensor it "
                                              "changes and is read afterwards)")
    x, start, stop = cv.state(target), op.attrs["start"], op.attrs["stop"]
    parts = [channel_range(cv, x, 0, start)] if start else []
    parts.append(cv.state(value))
    if stop < x.width:
        parts.append(channel_range(cv, x, stop, x.width))
    return concatenate(cv, parts)




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
