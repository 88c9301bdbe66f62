"""Pools, resizing and padding, which act on each channel alone: max, average (padded or not),
adaptive, a mean over the image (``x.mean((2, 3))``), a global ``avg_pool2d``, nearest and
bilinear upsampling (a constant channel stays the same constant: bilinear weights sum to 1) —
by a factor, to a size, or to the size of another tensor (``size=(y.shape[-2],
y.shape[-1])``: GhostNetV2's attention) — and ``F.pad`` of the image.

A padded average counts the zero padding, so a uniform channel becomes a map there; so does a
constant padding other than the channel's own value. Reflection, replication and circular
padding keep a uniform channel uniform.
"""
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..materialise import fold
from ..nodes import Op, Unsupported, bind, plain, refuse, shape_of
from ..state import Maps, Ref, T
from .registry import register_rule
from .rule import Rule

_RESIZE = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
           "recompute_scale_factor": None, "antialias": False}
_MAX = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
        "divisor_override")
_ADAPTIVE = {F.adaptive_avg_pool2d: "adaptive_avg", F.adaptive_max_pool2d: "adaptive_max"}


@register_rule
class Pool(Rule):
    """``pool``: its ``type`` and the window's attributes, as the manifest's pools hold them."""
    kind = "pool"
    modules = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Upsample)
    functions = (F.max_pool2d, F.avg_pool2d, *_ADAPTIVE, F.interpolate, torch.mean)
    methods = ("mean",)
    channelwise = True

    def classify(self, node, modules):
        if node.op == "call_module":
            return self._module(node, modules, modules[node.target])
        if node.target is F.interpolate:
            return _resize(node, modules, bind(node, ("input", "size", "scale_factor", "mode",
                                                      "align_corners", "recompute_scale_factor",
                                                      "antialias"), _RESIZE))
        if node.target in (torch.mean, "mean"):
            return _spatial_mean(node)
        return _function(node, modules)

    def passes_channels(self, node, modules):
        return node.target not in (torch.mean, "mean")  # a mean may be across the channels

    def _module(self, node, modules, m) -> Op:
        x = node.args[0]
        if isinstance(m, nn.Upsample):
            return _resize(node, modules, {**_RESIZE, "size": m.size,
                                           "scale_factor": m.scale_factor, "mode": m.mode,
                                           "align_corners": m.align_corners,
                                           "recompute_scale_factor": m.recompute_scale_factor})
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise refuse(node, modules, " (max-pool returning indices)")
            attrs = {"type": "max", "kernel": m.kernel_size, "stride": m.stride,
                     "padding": m.padding, "dilation": m.dilation, "ceil_mode": m.ceil_mode}
        elif isinstance(m, nn.AvgPool2d):
            attrs = {"type": "avg", "kernel": m.kernel_size, "stride": m.stride,
                     "padding": m.padding, "ceil_mode": m.ceil_mode,
                     "count_include_pad": m.count_include_pad,
                     "divisor_override": m.divisor_override}
        else:
            if getattr(m, "return_indices", False):
                raise refuse(node, modules, " (adaptive max-pool returning indices)")
            kind = "adaptive_avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "adaptive_max"
            attrs = {"type": kind, "size": m.output_size}
        return Op(self.kind, node, [x], attrs, module=m)

    def convert(self, cv, op):
        return convert_pool(cv, op)


def _spatial_mean(node) -> Op | None:
    """``x.mean((2, 3))`` of an image is a pool; any other mean is a reduction (``reduce``)."""
    a = bind(node, ("input", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False,
                                                           "dtype": None})
    x = node.args[0]
    if a["dim"] is None or a["dtype"] is not None or len(shape_of(x)) != 4:
        return None
    dims = list(a["dim"]) if isinstance(a["dim"], (list, tuple)) else [a["dim"]]
    if sorted(d % 4 for d in dims) != [2, 3]:
        return None
    return Op("pool", node, [x], {"type": "mean", "keepdim": bool(a["keepdim"])})


def _resize(node, modules, a: dict) -> Op:
    """Nearest and bilinear upsampling act per channel, and a constant channel stays the same
    constant (bilinear weights sum to 1): a pool, for the compactor. A size read off another
    tensor makes it a resize to that tensor's size (``resize_like``)."""
    if a["mode"] not in ("nearest", "bilinear") or a["antialias"] or \
            len(shape_of(node.args[0])) != 4:
        raise refuse(node, modules, f" (resizing in mode {a['mode']!r}; nearest and bilinear "
                                    "without antialias are understood)")
    if _computed(a["size"]) or _computed(a["scale_factor"]):
        like = _size_source(a["size"])
        if like is None or a["scale_factor"] is not None:
            raise refuse(node, modules, " (to a size computed otherwise than as another "
                                        "tensor's height and width)")
        return Op("pool", node, [node.args[0], like], {
            "type": "resize_like", "mode": a["mode"], "align_corners": a["align_corners"]})
    return Op("pool", node, [node.args[0]], {
        "type": "resize", "size": plain(a["size"]), "scale_factor": plain(a["scale_factor"]),
        "mode": a["mode"], "align_corners": a["align_corners"],
        "recompute_scale_factor": a["recompute_scale_factor"]})


def _computed(value) -> bool:
    """Does an argument hold an fx node (a value computed while the forward runs)?"""
    if isinstance(value, (list, tuple)):
        return any(_computed(v) for v in value)
    return isinstance(value, fx.Node)


def _size_source(size) -> fx.Node | None:
    """The tensor whose height and width ``size`` reads (``y.shape[-2:]``, ``(y.shape[-2],
    y.shape[-1])``, ``y.size()[2:]``, ``(y.size(2), y.size(3))``), or None."""
    parts = size if isinstance(size, (list, tuple)) else [size]
    found = [_dims_read(p) for p in parts]
    if any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None
    tensor, dims = found[0][0], [d for f in found for d in f[1]]
    if len(shape_of(tensor) or ()) != 4 or [d % 4 for d in dims] != [2, 3]:
        return None
    return tensor


def _dims_read(node):
    """(tensor, its dims) that a size node reads, or None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return node.args[0], list(range(4))
    if node.op == "call_method" and node.target == "size":
        return (node.args[0], list(range(4))) if len(node.args) == 1 else \
            (node.args[0], [node.args[1]]) if isinstance(node.args[1], int) else None
    if node.op == "call_function" and node.target is operator.getitem:
        whole = _dims_read(node.args[0])
        index = node.args[1]
        if whole is None or len(whole[1]) != 4 or not isinstance(index, (int, slice)):
            return None
        picked = whole[1][index]
        return whole[0], picked if isinstance(picked, list) else [picked]
    return None


def _function(node, modules) -> Op:
    f, x = node.target, node.args[0]
    if f is F.max_pool2d:
        a = bind(node, _MAX, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                              "return_indices": False})
        if a["return_indices"]:
            raise refuse(node, modules, " (max-pool returning indices)")
        return Op("pool", node, [x], {"type": "max", "kernel": a["kernel_size"],
                                      "stride": a["stride"] or a["kernel_size"],
                                      "padding": a["padding"], "dilation": a["dilation"],
                                      "ceil_mode": a["ceil_mode"]})
    if f is F.avg_pool2d:
        a = bind(node, _AVG, {"stride": None, "padding": 0, "ceil_mode": False,
                              "count_include_pad": True, "divisor_override": None})
        if isinstance(a["kernel_size"], fx.Node):  # the window is the input's size: global
            if a["stride"] is None and a["padding"] == 0 and tuple(shape_of(node)[2:]) == (1, 1):
                return Op("pool", node, [x], {"type": "global_avg"})
            raise refuse(node, modules, " (an average pool whose window is computed)")
        return Op("pool", node, [x], {"type": "avg", "kernel": a["kernel_size"],
                                      "stride": a["stride"] or a["kernel_size"],
                                      "padding": a["padding"], "ceil_mode": a["ceil_mode"],
                                      "count_include_pad": a["count_include_pad"],
                                      "divisor_override": a["divisor_override"]})
    a = bind(node, ("input", "output_size", "return_indices"), {"return_indices": False})
    if a["return_indices"]:
        raise refuse(node, modules, " (adaptive max-pool returning indices)")
    return Op("pool", node, [x], {"type": _ADAPTIVE[f], "size": a["output_size"]})


def convert_pool(cv, op) -> T:
    if op.attrs["type"] == "resize_like":
        return convert_resize_like(cv, op)
    x = fold(cv, cv.state(op.inputs[0]))
    attrs = {k: plain(v) for k, v in op.attrs.items()}
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


def _avg_keeps_uniform(attrs: dict) -> bool:
    padded = any(p for p in (attrs["padding"] if isinstance(attrs["padding"], list)
                             else [attrs["padding"]]))
    return attrs.get("divisor_override") is None and not (padded and attrs["count_include_pad"])


def convert_resize_like(cv, op) -> T:
    """Resized to another tensor's height and width: read off a data node of that size (the
    tensor's computed channels, or the node its size is read from); a map is resized to the
    size of ones of it."""
    x = fold(cv, cv.state(op.inputs[0]))
    like = cv.state(op.inputs[1])
    if not isinstance(like, T) or not like.spatial:
        raise Unsupported("cannot compact: a resize to the size of a regrouped view")
    sized = like.node if like.node is not None else \
        like.ref.node if not like.ref.replay else None
    if sized is None:
        raise Unsupported("cannot compact: a resize to the size of a constant tensor")
    attrs = dict(op.attrs)
    maps = None
    if x.maps is not None:
        maps = Maps(x.maps.ids, cv.b.const("resize_to", [x.maps.expr, cv.b.ones(like.ref)],
                                           {"mode": attrs["mode"],
                                            "align_corners": attrs["align_corners"]}))
    out = x.but(maps=maps, ref=like.ref)
    if len(x.ids):
        node = cv.b.data("pool", [x.node, sized], attrs)
        out = out.but(node=node, ref=Ref(node))
    return out


@register_rule
class Pad(Rule):
    """``pad``: ``F.pad`` of an image's height and width by numbers (constant, reflect,
    replicate or circular)."""
    kind = "pad"
    functions = (F.pad,)
    channelwise = True

    def classify(self, node, modules):
        a = bind(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        pad = a["pad"]
        if len(shape_of(node.args[0])) != 4 or not isinstance(pad, (list, tuple)) or \
                len(pad) not in (2, 4) or not all(isinstance(p, int) for p in pad) or \
                a["mode"] not in PAD_MODES or isinstance(a["value"], fx.Node):
            raise refuse(node, modules, " (padding other than of the height and width by "
                                        "numbers)")
        return Op(self.kind, node, [node.args[0]], {
            "pad": list(pad), "mode": a["mode"],
            "value": float(a["value"] or 0) if a["mode"] == "constant" else 0.0})

    def convert(self, cv, op):
        return convert_pad(cv, op)


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def convert_pad(cv, op) -> T:
    x = fold(cv, cv.state(op.inputs[0]))
    attrs, b = dict(op.attrs), cv.b
    maps = Maps(x.maps.ids, b.const("pad", [x.maps.expr], attrs)) if x.maps else None
    value, fill = x.value.clone(), attrs["value"]
    if attrs["mode"] == "constant" and cv.exact:
        # a uniform channel other than the fill: its value inside, the fill on the border
        ids = (x.uniform_mask() & (x.value != fill)).nonzero()[:, 0]
        if len(ids):
            inside = b.const("pad", [b.ones(x.ref)], {**attrs, "value": 0.0})
            new = Maps(ids, b.affine(inside, x.value[ids] - fill,
                                     torch.full((len(ids),), fill, dtype=torch.float64), True))
            value[ids] = 0
            maps = new if maps is None else Maps(torch.cat([maps.ids, new.ids]),
                                                 b.const("cat", [maps.expr, new.expr]))
    out = x.but(value=value, maps=maps, ref=x.ref.then(("pad", attrs)))
    if len(x.ids):
        node = b.data("pad", [x.node], attrs)
        out = out.but(node=node, ref=Ref(node))
    return out
