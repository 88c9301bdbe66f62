"""2-D convolutions (any groups, stride, dilation; numeric zero padding), their BatchNorm folded in.

A conv keeps the filters that are kept, needed (``liveness``) and read at least one computed
channel of their group. Its BatchNorm is folded in (weight × scale, bias). What the input's
other channels contribute is carried exactly: a uniform channel through a conv without zero
padding shifts every pixel alike (into the bias); with zero padding the border pixels see
less of it, a per-pixel map (``conv2d(ones, taps)``, pending behind the conv); maps go
through the conv as maps; scaled channels become a per-sample bias. A kept filter whose group
has no computed input is itself constant: uniform or a map. In a grouped conv every compact
group needs the same widths, so short groups get padding inputs (zero weights) and take
pruned filters of their own group as fillers (zero weights, their exact constant as bias).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...errors import UserError
from ..materialise import fold
from ..nodes import Op, bind, is_constant, refuse, shape_of
from ..state import Maps, Ref, T
from .batchnorm import fold_bn
from .registry import register_rule
from .rule import Rule, bias64


@register_rule
class Conv2d(Rule):
    """``conv``: ``nn.Conv2d``, the prunable layer when a BatchNorm alone reads it; also
    ``F.conv2d`` with a weight of the parameters (a blur pool's fixed filter)."""
    kind = "conv"
    modules = (nn.Conv2d,)
    functions = (F.conv2d,)
    emits = ("conv",)

    def classify(self, node, modules):
        if node.op == "call_function":
            return Op(self.kind, node, [node.args[0]], module=conv_call(node, modules))
        m = modules[node.target]
        if not understood_padding(m):
            raise refuse(node, modules, f" (it pads with {m.padding!r}/{m.padding_mode}; only "
                                        "numeric zero padding is understood)")
        return Op(self.kind, node, [node.args[0]], module=m)

    def needs(self, op, out, live):
        """A filter reads its group's input channels: the groups with a filter that is needed
        and kept need all of theirs; a group whose filters are all pruned needs none
        (MobileNet's expand conv skips the channels whose depthwise filter is pruned)."""
        m, active = op.module, out.clone()
        pruned = live.pruned.get(op.node.target)
        if pruned is not None:
            active &= ~pruned
        per_group = active.view(m.groups, -1).any(1)
        live.add(op.inputs[0], per_group.repeat_interleave(m.in_channels // m.groups))

    def convert(self, cv, op):
        if isinstance(op.module, ConvCall):
            op = Op(op.kind, op.node, op.inputs, op.attrs, op.module.resolved(cv.graph))
        return convert_conv(cv, op)

    def cost(self, node, hw):
        a = node["attrs"]
        return conv_cost(hw, a["out"], a["in"] // a["groups"], a["kernel"], a["source_bias"],
                         a["bn"], a["sbias"], a.get("fixed", False))


@dataclass
class ConvCall:
    """``F.conv2d`` over tensors of the parameters, as the conv conversion reads a module:
    its geometry from the call, its weight and bias when it converts (``resolved``)."""
    weight: object
    bias: object
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    in_channels: int
    out_channels: int
    kernel_size: tuple
    fixed: bool = False  # the weight is no parameter (a buffer: a blur's filter)

    def resolved(self, graph) -> "ConvCall":
        """With the weight and bias as they are now."""
        value = lambda n: None if n is None else graph.constant_value(n)  # noqa: E731
        return ConvCall(value(self.weight), value(self.bias), self.stride, self.padding,
                        self.dilation, self.groups, self.in_channels, self.out_channels,
                        self.kernel_size, graph.constant_params(self.weight) == 0)


def conv_call(node, modules) -> ConvCall:
    """The ``ConvCall`` of an ``F.conv2d`` node, or raise ``refuse``: its weight and bias
    must be tensors of the parameters, its geometry numbers."""
    a = bind(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
             {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    geometry = [a[k] for k in ("stride", "padding", "dilation", "groups")]
    if not is_constant(a["weight"]) or (a["bias"] is not None and not is_constant(a["bias"])) \
            or any(isinstance(g, (fx.Node, str)) or isinstance(g, (list, tuple)) and
                   any(not isinstance(v, int) for v in g) for g in geometry):
        raise refuse(node, modules, " (over other tensors than the parameters, or with a "
                                    "computed geometry)")
    pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    return ConvCall(a["weight"], a["bias"], pair(a["stride"]), pair(a["padding"]),
                    pair(a["dilation"]), a["groups"], shape_of(node.args[0])[1],
                    shape_of(node)[1], tuple(shape_of(a["weight"])[2:]))


def understood_padding(m: nn.Conv2d) -> bool:
    """Numeric zero padding (a string such as "same" is resolved per input size)."""
    return m.padding_mode == "zeros" and not isinstance(m.padding, str)


def conv_cost(out_hw: int, filters: int, inputs_per_group: int, kernel, source_bias: bool,
              bn: bool, scaled: int = 0, fixed: bool = False) -> tuple[int, int]:
    """(MACs, parameters) of one conv: ``scaled`` channels enter as a per-sample bias (a
    matrix of filters × scaled); a folded BatchNorm counts its γ and β per filter; ``fixed``
    weights (a blur's buffer) are no parameters."""
    taps = int(kernel[0]) * int(kernel[1])
    weights = filters * inputs_per_group * taps
    macs = out_hw * weights + filters * scaled
    params = weights * (not fixed) + filters * (int(source_bias) + 2 * int(bn)) + \
        filters * scaled
    return macs, params


def convert_conv(cv, op) -> T:
    """The conv's output state: constant filters, then the computed ones."""
    node, m = op.node, op.module
    x = cv.state(op.inputs[0])
    bn_node = cv.pairs.get(node)
    bn = cv.graph.op_of[bn_node].module if bn_node is not None else None
    groups, filters = m.groups, m.out_channels
    w, bias = m.weight.detach().double().cpu(), bias64(m, filters)
    scale, shift = fold_bn(bn, filters)
    pruned = cv.pruned_mask(node.target, filters)
    if cv.check and bool(pruned.any()) and bool(w[pruned].count_nonzero()):
        raise UserError(f"{node.target}: selected filters are not zero (ζ > 0: a snapshot from "
                        "before the last epoch); compact the final checkpoint")
    no_pad = not any(m.padding)
    if x.pending is not None or (x.scaled is not None and not (
            groups == 1 and no_pad and len(x.ids))):
        x = fold(cv, x)
    need = cv.needed(bn_node if bn_node is not None else node, filters)
    active = need & ~pruned
    if bool((~pruned & ~need).any()):
        cv.note("unneeded filters skipped")
    if groups > 1:
        cv.note("depthwise conv" if groups == m.in_channels == filters else "grouped conv")
    has_input = x.mask(x.ids).view(groups, -1).any(1).repeat_interleave(filters // groups)
    computed = active & has_input
    const_value = torch.where(pruned, scale * bias + shift, torch.zeros_like(bias))
    conv = _Conv(cv, op, m, x, w, bias, scale, shift, no_pad)
    out = conv.constant_filters(active & ~computed, const_value)
    if bool(computed.any()):
        out = conv.computed_filters(computed, out)
    return out


class _Conv:
    """One conv's conversion; ``value``/``maps`` of the output are filled in step by step."""

    def __init__(self, cv, op, m, x: T, w, bias, scale, shift, no_pad):
        self.cv, self.op, self.m, self.x = cv, op, m, x
        self.w, self.bias, self.scale, self.shift, self.no_pad = w, bias, scale, shift, no_pad
        self.groups, self.filters = m.groups, m.out_channels
        self.ig, self.og = m.in_channels // m.groups, m.out_channels // m.groups
        self.out_hw = shape_of(op.node)[2] * shape_of(op.node)[3]
        self.window = ["conv", list(m.kernel_size), list(m.stride), list(m.padding),
                       list(m.dilation)]
        self.out_node = cv.pairs.get(op.node, op.node)  # the fx node whose value this is
        self._all_taps = None  # ``_taps`` of every filter, once asked for

    def _taps(self, filters: torch.Tensor) -> torch.Tensor:
        """What the uniform inputs add to each of ``filters``, per kernel tap (filters × kh ×
        kw). Computed once for every filter of the conv (the conversion asks for several
        subsets), and not at all when no uniform input is nonzero, the common case: the
        product would read the whole weight for zeros."""
        if self._all_taps is None:
            v = torch.where(self.x.uniform_mask(), self.x.value, torch.zeros_like(self.x.value))
            if self.cv.exact and bool(v.any()):
                per_filter = v.view(self.groups, self.ig).repeat_interleave(self.og, 0)
                self._all_taps = torch.einsum("oihw,oi->ohw", self.w, per_filter)
            else:
                self._all_taps = self.w.new_zeros(self.filters, *self.w.shape[2:])
        return self._all_taps[filters]

    def _map_weight(self, filters: torch.Tensor) -> torch.Tensor | None:
        """The filters' weights over the map channels (zero across groups)."""
        maps = self.x.maps
        if maps is None or not self.cv.exact:
            return None
        group = maps.ids // self.ig
        same = (filters // self.og).view(-1, 1) == group.view(1, -1)
        w = self.w[filters][:, maps.ids % self.ig]
        return w * same.view(len(filters), -1, 1, 1)

    def _constant_part(self, filters: torch.Tensor, scale: torch.Tensor) -> str | None:
        """The map (1 × len(filters) × H' × W') the constant inputs give these filters, × scale,
        or None when it is uniform (then it is in ``_taps(filters).sum()``)."""
        b = self.cv.b
        taps = self._taps(filters) * scale.view(-1, 1, 1)
        terms = []
        if not self.no_pad and bool(taps.count_nonzero()):
            self.cv.note("border map")
            terms.append(b.const("conv", [b.ones(self.x.ref)], self._conv_attrs(),
                                 {"weight": taps.unsqueeze(1)}))
        wm = self._map_weight(filters)
        if wm is not None and bool(wm.count_nonzero()):
            self.cv.note("map through a conv")
            terms.append(b.const("conv", [self.x.maps.expr], self._conv_attrs(),
                                 {"weight": wm * scale.view(-1, 1, 1, 1)}))
        return b.add(terms)

    def _conv_attrs(self) -> dict:
        m = self.m
        return {"stride": list(m.stride), "padding": list(m.padding),
                "dilation": list(m.dilation)}

    def constant_filters(self, constant: torch.Tensor, value: torch.Tensor) -> T:
        """The output with only uniform and map channels: pruned filters (``value``), dead
        ones (0), and kept filters whose group has no computed input (``constant``)."""
        ref = self.x.ref.then(tuple(self.window))
        out = T(self.filters, torch.zeros(0, dtype=torch.long), None,
                value if self.cv.exact else torch.zeros_like(value), ref)
        ids = constant.nonzero()[:, 0]
        if not len(ids) or not self.cv.exact:
            return out
        scale = self.scale[ids]
        uniform = scale * (self.bias[ids] + self._taps(ids).sum((1, 2))) + self.shift[ids]
        expr = self._constant_part(ids, scale)
        if expr is None:
            out.value[ids] = uniform
            return out
        self.cv.note("constant map channel")
        shift = self.scale[ids] * self.bias[ids] + self.shift[ids]
        if self.no_pad:  # the uniform inputs' share is uniform: into the shift
            shift = uniform
        expr = self.cv.b.affine(expr, torch.ones_like(shift), shift, True)
        return out.but(maps=Maps(ids, expr))

    def computed_filters(self, computed: torch.Tensor, out: T) -> T:
        cv, x, m = self.cv, self.x, self.m
        slots_in, slots_out, width = self._layout(computed, out.value)
        ids = slots_out.flatten()
        real = computed[ids]  # False at fillers
        scale = self.scale[ids]
        weight = self._weight(slots_in, slots_out, width, real)
        bias = scale * self.bias[ids] + self.shift[ids]
        pending = None
        if cv.exact:
            if self.no_pad:
                extra = scale * self._taps(ids).sum((1, 2)) * real
                if bool(extra.count_nonzero()):
                    cv.note("constant into a bias")
                bias = bias + extra
            pending = self._constant_part(ids[real], scale[real])
            if pending is not None and not bool(real.all()):
                pending = cv.b.widen(pending, len(ids), real.nonzero()[:, 0], True)
        bias = torch.where(real, bias, out.value[ids])  # fillers: their exact constant
        inputs, tensors, sbias = self._inputs(slots_in, width, ids, real, scale)
        embedded = None
        if pending is not None and not cv.feeds_add(self.out_node):
            # nothing can take the map along (only a residual add can): add it in the conv
            embedded, map_tensors, refs = cv.b.embed(pending, x.node)
            tensors.update(map_tensors)
            inputs += refs
            pending = None
        tensors.update({"conv.weight": weight * scale.view(-1, 1, 1, 1) if cv.emit else weight,
                        "conv.bias": bias})
        attrs = {"in": width * len(slots_in), "out": len(ids), "kernel": list(m.kernel_size),
                 "stride": list(m.stride), "padding": list(m.padding),
                 "dilation": list(m.dilation), "groups": len(slots_in),
                 "gather": getattr(self, "gather", None), "sbias": sbias,
                 "source_bias": m.bias is not None,
                 "bn": self.op.node in cv.pairs, "map": embedded, "act": None}
        if getattr(m, "fixed", False):
            attrs["fixed"] = True
        node = cv.b.data("conv", inputs, attrs, tensors, hw=self.out_hw)
        cv.conv_output[self.out_node] = node
        value = out.value.clone()
        value[ids] = 0
        return out.but(ids=ids, node=node, value=value, ref=Ref(node), pending=pending)

    def _weight(self, slots_in, slots_out, width, real) -> torch.Tensor:
        """The compact filters over the compact groups' input slots (fillers and padding
        slots zero); only its shape when the conversion just counts."""
        rows, taps = slots_out.numel(), self.m.kernel_size
        if not self.cv.emit:
            return torch.empty(rows, width, *taps, device="meta")
        if self.groups == 1:  # one compact group: no padding slot, no filler
            return self.w.index_select(0, slots_out[0]).index_select(1, slots_in[0])
        # row r reads the input slots of its compact group, each a channel of the filter's group
        slots = slots_in.repeat_interleave(slots_out.shape[1], 0)
        index = (slots.clamp(min=0) % self.ig).view(rows, width, 1, 1).expand(-1, -1, *taps)
        weight = torch.gather(self.w[slots_out.flatten()], 1, index)
        return weight * ((slots >= 0) & real.view(-1, 1)).view(rows, width, 1, 1)

    def _layout(self, computed: torch.Tensor, values: torch.Tensor):
        """Per compact group (a row): its input channels (dense ids, in the narrow input's
        order; -1: a padding slot) and its filters (computed ones, then fillers); the common
        input width."""
        x = self.x
        if self.groups == 1:
            return x.ids.view(1, -1), computed.nonzero()[:, 0].view(1, -1), len(x.ids)
        ig, og = self.ig, self.og
        # the groups with a computed filter, as they first appear in the input
        group = x.ids // ig
        first = torch.full((self.groups,), len(group), dtype=torch.long)
        first.scatter_reduce_(0, group, torch.arange(len(group)), "amin")
        order = computed.view(self.groups, og).any(1).nonzero()[:, 0]
        order = order[torch.argsort(first[order], stable=True)]
        rank = torch.full((self.groups,), -1, dtype=torch.long)
        rank[order] = torch.arange(len(order))
        # inputs: grouped by their group's rank, each group in the input's order
        r = rank[group]
        taken = (r >= 0).nonzero()[:, 0]
        taken = taken[torch.argsort(r[taken], stable=True)]
        sizes = torch.bincount(r[taken], minlength=len(order))
        column = torch.arange(len(taken)) - (torch.cumsum(sizes, 0) - sizes)[r[taken]]
        computed_of = computed.view(self.groups, og)[order]
        # oneDNN's grouped kernels in NCHW want a multiple of 8 channels per group: rounding
        # both widths up made RegNetX-400MF's compact network 1.1× instead of 0.9× its
        # dense one there (channels_last: 1.35× instead of 1.6×); the padding slots have
        # zero weights, the fillers compute their own constants, read by the next conv
        width = _round8(int(sizes.max()), ig)
        count = _round8(int(computed_of.sum(1).max()), og)
        slots_in = torch.full((len(order), width), -1, dtype=torch.long)
        slots_in[r[taken], column] = x.ids[taken]
        # filters: the computed ones in order, then the others (fillers) up to ``count``
        key = (~computed_of).long() * og + torch.arange(og)
        slots_out = torch.argsort(key, 1)[:, :count] + order.view(-1, 1) * og
        if bool((computed_of.sum(1) < count).any()):
            self.cv.note("filler filters")
        return slots_in, slots_out, width

    def _inputs(self, slots_in, width, ids, real, scale):
        """The conv node's inputs and index tensors: the narrow input (gathered into the
        groups' layout when it is not already so), and the scaled channels' factors."""
        x, cv = self.x, self.cv
        tensors, inputs = {}, [x.node]
        laid_out = slots_in.flatten()
        if not torch.equal(laid_out, x.ids):
            # a padding slot has zero weights: it may read any channel (the first)
            where = torch.zeros(self.m.in_channels, dtype=torch.long)
            where[x.ids] = torch.arange(len(x.ids))
            tensors["index"] = torch.where(laid_out >= 0, where[laid_out.clamp(min=0)], 0)
            self.gather = "take"
            cv.note("grouped input gathered")
        sbias = 0
        s = x.scaled
        if s is not None and cv.exact:
            # Σ over taps of each filter's weight on each scaled channel, × its value
            mat = self.w[ids][:, s.ids].sum((2, 3)) * s.value.view(1, -1) * real.view(-1, 1)
            tensors["smat"] = mat * scale.view(-1, 1)
            tensors["spos"] = s.pos.clone()
            inputs.append(s.source)
            sbias = len(s.ids)
            cv.note("scaled into a per-sample bias")
        return inputs, tensors, sbias


def _round8(n: int, cap: int) -> int:
    return min(cap, -(-n // 8) * 8)
