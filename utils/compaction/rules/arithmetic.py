"""Arithmetic: residual adds and differences of two tensors, products (squeeze-excitation: a
per-channel scale), and additions, subtractions, products and divisions by a number or by a
per-channel tensor of the parameters (a learnable scale or shift: timm's layer scale, HGNet's
learnable affine block).

A sum keeps its operands' computed channels (completed to full width once they cover half of
them, so the next residual add can write into it, unless one operand covers the other's: a
coupled selection's narrow stream); constants add up in float64. A difference
is the sum with the second operand negated. A product by a per-sample scale leaves a uniform
channel as a ``Scaled`` one until a conv takes it in. A number or a per-channel parameter makes
an affine map per channel, its values read when the conversion runs.
"""
import operator

import torch

from ..materialise import fold, gather, join, realise, settle
from ..nodes import Op, is_constant, number, refuse, shape_of, tensors
from ..state import Maps, Ref, Scaled, T, positions
from .registry import register_rule
from .rule import Rule, same_width


class _Arithmetic(Rule):
    """Two tensors (broadcasting), or one and a number."""
    full_width = True

    def classify(self, node, modules):
        return _binary(self.kind, node, modules, node.args[:2])

    def reads_through_expand(self, node):
        return node.target is not operator.truediv

    def needs(self, op, out, live):
        for x in op.inputs:
            live.add(x, out if same_width(x, out) else live.full(x))

    def full_width_attrs(self, cv, op):
        n = op.attrs.get("number")
        if op.attrs.get("constant") is not None or op.attrs.get("reversed"):
            raise refuse(op.node, cv.modules, " (of a regrouped view of the channels)")
        if op.kind == "sub" and n is not None:
            return {"fn": "add", "number": -float(n)}
        return {"fn": op.kind, "number": None if n is None else float(n)}


@register_rule
class Add(_Arithmetic):
    """``add``: a residual add, or + a number or a per-channel parameter."""
    kind = "add"
    functions = (operator.add, operator.iadd, torch.add)
    methods = ("add", "add_")

    def convert(self, cv, op):
        return convert_add(cv, op)


@register_rule
class Sub(_Arithmetic):
    """``sub``: a difference of two tensors (FastViT's ``mixer(x) - norm(x)``), or − a number
    or a per-channel parameter, either way round."""
    kind = "sub"
    functions = (operator.sub, operator.isub, torch.sub)
    methods = ("sub", "sub_")

    def convert(self, cv, op):
        return convert_sub(cv, op)


@register_rule
class Mul(_Arithmetic):
    """``mul``: a per-channel scale or a product of equal shapes, × or / a number (timm's
    hard_sigmoid is relu6(x + 3) / 6)."""
    kind = "mul"
    functions = (operator.mul, operator.imul, torch.mul, operator.truediv)
    methods = ("mul", "mul_")

    def classify(self, node, modules):
        if node.target is not operator.truediv:
            return super().classify(node, modules)
        x, divisor = node.args[:2]
        if number(divisor) and divisor != 0:
            return Op(self.kind, node, [x], {"number": 1.0 / divisor})
        if is_constant(divisor) and not is_constant(x) and _per_channel(divisor, x, node):
            return Op(self.kind, node, [x], {"number": None, "constant": divisor,
                                             "inverse": True})
        return None

    def convert(self, cv, op):
        return convert_mul(cv, op)


def _unexpanded(value):
    """``y.expand_as(x)`` read by a product or a sum: ``y`` itself, which broadcasts alike."""
    if isinstance(value, torch.fx.Node) and value.op == "call_method" and \
            value.target in ("expand", "expand_as"):
        return value.args[0]
    return value


def _binary(kind, node, modules, operands) -> Op:
    """Two tensors, or one and a number, or one and a per-channel tensor of the parameters
    (``constant``); ``reversed``: the tensor is the second operand."""
    operands = [_unexpanded(v) for v in operands]
    constants = [v for v in operands if is_constant(v)]
    found = [v for v in tensors(operands) if not is_constant(v)]
    numbers = [v for v in operands if number(v)]
    other = numbers or constants
    if len(found) == 2 or (len(found) == 1 and len(other) == 1):
        attrs = {"number": numbers[0] if numbers else None, "reversed": operands[0] is not found[0]}
        if constants:
            if not _per_channel(constants[0], found[0], node):
                raise refuse(node, modules, " (by a tensor of the parameters that is not one "
                                            "value per channel)")
            attrs["constant"] = constants[0]
        return Op(kind, node, found, attrs)
    raise refuse(node, modules)


def _per_channel(constant, x, node) -> bool:
    """Does ``constant`` broadcast over ``x`` (an image or features) as one value per channel
    (or one for all), leaving ``x``'s shape as it is?"""
    c, shape = list(shape_of(constant)), list(shape_of(x))
    if len(shape) not in (2, 4) or len(c) > len(shape) or list(shape_of(node)) != shape:
        return False
    return all(d == 1 or (len(shape) - i == 1 and d == shape[1])
               for i, d in enumerate(reversed(c), start=1))


def per_channel_values(cv, op, width: int) -> torch.Tensor:
    """The constant operand's values, one per channel (float64), as they are now."""
    value = cv.graph.constant_value(op.attrs["constant"]).detach().double().cpu()
    rank = len(shape_of(op.inputs[0]))
    return (value * torch.ones((1, width) + (1,) * (rank - 2), dtype=torch.float64)).flatten()


def _params(cv, op) -> int:
    """The parameters of the constant operand that no other node counts."""
    return cv.graph.constant_params(op.attrs["constant"], cv.params_counted)


def convert_add(cv, op) -> T:
    if op.attrs["number"] is not None:
        return _add_number(cv, cv.state(op.inputs[0]), float(op.attrs["number"]))
    if op.attrs.get("constant") is not None:
        x = cv.state(op.inputs[0])
        return _affine(cv, x, torch.ones(x.width, dtype=torch.float64),
                       per_channel_values(cv, op, x.width), _params(cv, op))
    a, b = (cv.state(n) for n in op.inputs)
    return add_states(cv, op, a, b)


def convert_sub(cv, op) -> T:
    """a − b: the sum with b negated; x − c and c − x: affine maps."""
    x = cv.state(op.inputs[0])
    ones = torch.ones(x.width, dtype=torch.float64)
    sign = -ones if op.attrs["reversed"] else ones
    if op.attrs["number"] is not None:
        return _affine(cv, x, sign, ones * float(op.attrs["number"]) * -sign)
    if op.attrs.get("constant") is not None:
        return _affine(cv, x, sign, per_channel_values(cv, op, x.width) * -sign,
                       _params(cv, op))
    b = cv.state(op.inputs[1])
    return add_states(cv, op, x, _affine(cv, b, -torch.ones(b.width, dtype=torch.float64),
                                         torch.zeros(b.width, dtype=torch.float64)))


def add_states(cv, op, a: T, b: T) -> T:
    """The residual add of two tensors' states (a ReLU that alone reads it fused in)."""
    a, b = (fold(cv, x, None) if x.scaled is not None else x for x in (a, b))
    if a.width != b.width or a.spatial != b.spatial:
        raise refuse(op.node, cv.modules, " (an add of tensors of different widths)")
    relu = cv.fusable_relu(op.node)
    out = _sum(cv, a, b, relu is not None)
    if relu is not None:
        cv.fused[relu.node] = out
    return out


def _union_order(a: T, b: T) -> torch.Tensor:
    """The sum's computed channels. An operand that covers every channel, or every channel
    the other computes, gives its order (the other is added into it, in place). Otherwise, once the operands together cover half the
    channels, the sum is completed to full width, constants filled in: the next residual add
    can then take it in place, which on CPUs beats the narrower convs a narrower stream gives
    (oneDNN computes channels in blocks of 8 or 16 anyway; measured on ResNets and
    MobileNetV2)."""
    am, bm = a.mask(a.ids), b.mask(b.ids)
    if bool(am.all()):
        return a.ids
    if bool(bm.all()):
        return b.ids
    # coupled operands (``coupling="residual"``) compute the same channels, or an option-A
    # shortcut some of them: the channels neither computes stay out, the stream narrow, and
    # the operand that covers the other is taken as it is (no pad, no gather)
    if not bool((bm & ~am).any()):
        return a.ids
    if not bool((am & ~bm).any()):
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


def _add_number(cv, x: T, value: float) -> T:
    ones = torch.ones(x.width, dtype=torch.float64)
    return _affine(cv, x, ones, ones * value)


def _affine(cv, x: T, scale: torch.Tensor, shift: torch.Tensor, params: int = 0) -> T:
    """y = scale·x + shift per channel; ``params``: the learnable parameters it stands for (a
    layer scale's), counted with it."""
    x = fold(cv, x)
    value = torch.where(x.uniform_mask(), scale * x.value + shift, torch.zeros_like(x.value))
    out = x.but(value=value)
    if x.maps is not None:
        ids = x.maps.ids
        out = out.but(maps=Maps(ids, cv.b.affine(x.maps.expr, scale[ids], shift[ids],
                                                  x.spatial)))
    if len(x.ids):
        shape = (1, -1, 1, 1) if x.spatial else (1, -1)
        attrs = {"spatial": x.spatial, "bn": False, **({"params": params} if params else {})}
        node = cv.b.data("affine", [x.node], attrs,
                         {"scale": scale[x.ids].reshape(shape).clone(),
                          "shift": shift[x.ids].reshape(shape).clone()})
        out = out.but(node=node)
    return out


def convert_mul(cv, op) -> T:
    if op.attrs["number"] is not None or op.attrs.get("constant") is not None:
        x = cv.state(op.inputs[0])
        zeros = torch.zeros(x.width, dtype=torch.float64)
        if op.attrs["number"] is not None:
            return _affine(cv, x, torch.full((x.width,), float(op.attrs["number"]),
                                             dtype=torch.float64), zeros)
        scale = per_channel_values(cv, op, x.width)
        return _affine(cv, x, 1 / scale if op.attrs.get("inverse") else scale, zeros,
                       _params(cv, op))
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
