"""Pools and resizing, which act on each channel alone: max, average (padded or not),
adaptive, a mean over the image (``x.mean((2, 3))``), a global ``avg_pool2d``, nearest and
bilinear upsampling (a constant channel stays the same constant: bilinear weights sum to 1).

A padded average counts the zero padding, so a uniform channel becomes a map there.
"""
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..materialise import fold
from ..nodes import Op, bind, plain, refuse, shape_of
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
    constant (bilinear weights sum to 1): a pool, for the compactor."""
    if a["mode"] not in ("nearest", "bilinear") or a["antialias"] or \
            len(shape_of(node.args[0])) != 4:
        raise refuse(node, modules, f" (resizing in mode {a['mode']!r}; nearest and bilinear "
                                    "without antialias are understood)")
    return Op("pool", node, [node.args[0]], {
        "type": "resize", "size": plain(a["size"]), "scale_factor": plain(a["scale_factor"]),
        "mode": a["mode"], "align_corners": a["align_corners"],
        "recompute_scale_factor": a["recompute_scale_factor"]})


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
