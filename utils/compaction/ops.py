"""Channel-wise and arithmetic ops in the compact graph: activations, residual adds,
products (squeeze-excitation), additions and products with numbers.

Each takes the states of its inputs (``state.T``) and returns its output's: uniform values go
through an op in float64, maps through the same op in the constant graph, and only computed
channels reach a data node.
"""
import torch

from .materialise import fold, gather, join, realise, settle
from .modules import activation
from .state import Maps, Ref, Scaled, T, positions
from .tracing import refuse, shape_of


def _value_op(fn, value: torch.Tensor, spatial: bool) -> torch.Tensor:
    shape = (1, -1, 1, 1) if spatial else (1, -1)
    return fn(value.view(shape)).flatten()


def convert_act(cv, op) -> T:
    x = cv.state(op.inputs[0])
    slopes = _slopes(op, x.width)
    conv = cv.conv_to_extend(op.inputs[0], x) if slopes is None else None
    x = fold(cv, x)
    uniform = x.uniform_mask()
    if slopes is None:
        values = _value_op(activation(op.attrs["fn"], op.attrs["kw"]), x.value, x.spatial)
    else:  # PReLU: a slope per channel
        values = torch.where(x.value >= 0, x.value, slopes * x.value)
    out = x.but(value=torch.where(uniform, values, torch.zeros_like(x.value)))
    if x.maps is not None:
        tensors = {"weight": slopes[x.maps.ids]} if slopes is not None else None
        out = out.but(maps=Maps(x.maps.ids, cv.b.const("act", [x.maps.expr], op.attrs,
                                                        tensors)))
    if conv is not None:  # computed inside the conv
        conv["attrs"]["act"] = dict(op.attrs)
    elif len(x.ids):
        tensors = {"weight": slopes[x.ids].float()} if slopes is not None else None
        node = cv.b.data("act", [x.node], {**op.attrs, "spatial": x.spatial}, tensors)
        out = out.but(node=node, ref=Ref(node) if x.spatial else x.ref)
    return out


def _slopes(op, width: int) -> torch.Tensor | None:
    """PReLU's negative slopes, one per channel (float64), or None for other activations."""
    if op.attrs["fn"] != "prelu":
        return None
    w = op.module.weight.detach().double().cpu().flatten()
    return w.expand(width).clone() if len(w) == 1 else w


def convert_add(cv, op) -> T:
    if op.attrs["number"] is not None:
        return _add_number(cv, cv.state(op.inputs[0]), float(op.attrs["number"]))
    a, b = (fold(cv, cv.state(n), None) if cv.state(n).scaled is not None else cv.state(n)
            for n in op.inputs)
    if a.width != b.width or a.spatial != b.spatial:
        raise refuse(op.node, cv.modules, " (an add of tensors of different widths)")
    relu = cv.fusable_relu(op.node)
    out = _sum(cv, a, b, relu is not None)
    if relu is not None:
        cv.fused[relu.node] = out
    return out


def _union_order(a: T, b: T) -> torch.Tensor:
    """The sum's computed channels. An operand that covers every channel gives its order (the
    other is added into it, in place). Otherwise, once the operands together cover half the
    channels, the sum is completed to full width, constants filled in: the next residual add
    can then take it in place, which on CPUs beats the narrower convs a narrower stream gives
    (oneDNN computes channels in blocks of 8 or 16 anyway; measured on ResNets and
    MobileNetV2)."""
    am, bm = a.mask(a.ids), b.mask(b.ids)
    if bool(am.all()):
        return a.ids
    if bool(bm.all()):
        return b.ids
    union = am | bm
    if int(union.sum()) * 2 >= a.width:
        return torch.arange(a.width)
    return union.nonzero()[:, 0]


def _sum(cv, a: T, b: T, relu: bool) -> T:
    bld, spatial = cv.b, a.spatial
    order = _union_order(a, b)
    inside = a.mask(order)
    operands, terms = [], []
    values = torch.zeros(len(order), dtype=torch.float64)
    for x in (a, b):
        if len(x.ids):
            pos = positions(x.ids, order)
            operands.append((x.node, pos))
            if x.pending is not None:
                terms.append(bld.widen(x.pending, len(order), pos, spatial))
        # x's constants at the sum's computed channels that x does not compute
        missing = inside & ~x.mask(x.ids)
        if x.maps is not None and bool(missing[x.maps.ids].any()):
            keep = missing[x.maps.ids]
            expr = bld.select(x.maps.expr, keep.nonzero()[:, 0])
            terms.append(bld.widen(expr, len(order), positions(x.maps.ids[keep], order),
                                   spatial))
        uniform = (missing & x.uniform_mask())[order]
        values += torch.where(uniform, x.value[order], torch.zeros_like(values))
    value = torch.where(a.uniform_mask(), a.value, 0) + torch.where(b.uniform_mask(), b.value, 0)
    maps = _constant_maps(cv, a, b, inside)
    value = torch.where(inside | a.mask(maps.ids if maps else None), torch.zeros_like(value),
                        value)
    ref = a.ref
    node = None
    if len(operands) == 2 and not torch.equal(a.ids, b.ids):
        cv.note("residual add of narrow tensors")
    if len(order):
        node = join(cv, operands, terms, values, len(order), spatial, relu)
        ref = Ref(node) if spatial else a.ref
    out = T(a.width, order, node, value, ref, spatial, maps=maps)
    if relu:
        out = out.but(value=value.clamp(min=0))
        if maps is not None:
            out = out.but(maps=Maps(maps.ids, bld.const("act", [maps.expr],
                                                        {"fn": "relu", "kw": {}})))
    return out


def _constant_maps(cv, a: T, b: T, inside: torch.Tensor) -> Maps | None:
    """The sum's map channels: channels computed by neither operand that either has a map in
    (the other adds its map or uniform value)."""
    bld = cv.b
    is_map = (a.mask(a.map_ids) | b.mask(b.map_ids)) & ~inside
    ids = is_map.nonzero()[:, 0]
    if not len(ids):
        return None
    terms, values = [], torch.zeros(len(ids), dtype=torch.float64)
    for x in (a, b):
        if x.maps is not None:
            keep = is_map[x.maps.ids]
            if bool(keep.any()):
                expr = bld.select(x.maps.expr, keep.nonzero()[:, 0])
                terms.append(bld.widen(expr, len(ids), positions(x.maps.ids[keep], ids),
                                       a.spatial))
        values += torch.where(x.uniform_mask()[ids], x.value[ids], torch.zeros_like(values))
    if bool(values.count_nonzero()):
        terms.append(bld.vector(values, a.spatial))
    return Maps(ids, bld.add(terms))


def _add_number(cv, x: T, number: float) -> T:
    ones = torch.ones(x.width, dtype=torch.float64)
    return _affine(cv, x, ones, ones * number)


def _affine(cv, x: T, scale: torch.Tensor, shift: torch.Tensor) -> T:
    """y = scale·x + shift per channel."""
    x = fold(cv, x)
    value = torch.where(x.uniform_mask(), scale * x.value + shift, torch.zeros_like(x.value))
    out = x.but(value=value)
    if x.maps is not None:
        ids = x.maps.ids
        out = out.but(maps=Maps(ids, cv.b.affine(x.maps.expr, scale[ids], shift[ids],
                                                  x.spatial)))
    if len(x.ids):
        shape = (1, -1, 1, 1) if x.spatial else (1, -1)
        node = cv.b.data("affine", [x.node], {"spatial": x.spatial, "bn": False},
                         {"scale": scale[x.ids].reshape(shape).clone(),
                          "shift": shift[x.ids].reshape(shape).clone()})
        out = out.but(node=node)
    return out


def convert_mul(cv, op) -> T:
    if op.attrs["number"] is not None:
        x = cv.state(op.inputs[0])
        return _affine(cv, x, torch.full((x.width,), float(op.attrs["number"]),
                                         dtype=torch.float64), torch.zeros(x.width,
                                                                           dtype=torch.float64))
    p, q = op.inputs
    out = tuple(shape_of(op.node))
    for x, s in ((p, q), (q, p)):
        if tuple(shape_of(x)) == out and len(out) == 4 and tuple(shape_of(s)) == out[:2] + (1, 1) \
                and out[2:] != (1, 1):
            return _scale(cv, op, cv.state(x), cv.state(s))
    if tuple(shape_of(p)) == tuple(shape_of(q)) == out:
        return _product(cv, cv.state(p), cv.state(q))
    raise refuse(op.node, cv.modules, " (a product other than a per-channel scale)")


def _product(cv, x: T, y: T) -> T:
    """x · y channel by channel, both of the same shape (an excitation on 1×1 maps)."""
    cv.note("product of tensors")
    x, y = fold(cv, x, x.map_ids), fold(cv, y, y.map_ids)
    union = x.mask(x.ids) | y.mask(y.ids)
    value = torch.where(union, torch.zeros_like(x.value), x.value * y.value)
    if not bool(union.any()):
        return T.uniform(value, x.ref, x.spatial)
    order = torch.cat([x.ids, (union & ~x.mask(x.ids)).nonzero()[:, 0]])
    node = cv.b.data("mul", [realise(cv, x, order), realise(cv, y, order)], {})
    return T(x.width, order, node, value, Ref(node) if x.spatial else x.ref, x.spatial)


def _scale(cv, op, x: T, s: T) -> T:
    """x (N, C, H, W) times a per-sample, per-channel scale s (N, C, 1, 1): squeeze-excitation.
    A uniform channel of x times a computed factor is no constant: it stays a product
    (``Scaled``) until a conv takes it in; a map channel times a factor is computed."""
    x = fold(cv, x)
    if not len(s.ids):  # the scale itself is constant: a per-channel affine map of x
        if s.maps is not None:
            s = fold(cv, s, s.map_ids)
        else:
            return _affine(cv, x, s.value, torch.zeros_like(s.value))
    s = s if (torch.equal(s.ids, torch.arange(s.width)) and s.pending is None) else \
        settle(cv, s, torch.arange(s.width), realise(cv, s, torch.arange(s.width)))
    x = fold(cv, x, x.map_ids)
    uniform = x.uniform_mask()
    scaled_ids = (uniform & (x.value != 0)).nonzero()[:, 0] if cv.exact else x.ids[:0]
    value = torch.zeros_like(x.value)
    out = T(x.width, x.ids, None, value, x.ref, True)
    if len(scaled_ids):
        cv.note("constant times an excitation")
        out = out.but(scaled=Scaled(scaled_ids, x.value[scaled_ids], s.node, scaled_ids.clone()))
    if len(x.ids):
        factors = gather(cv, s.node, x.ids, True)
        node = cv.b.data("mul", [x.node, factors], {})
        out = out.but(node=node, ref=Ref(node))
    return out
