"""Turning a tensor's state into a narrow tensor that holds given channels.

``realise`` is the one way the compact graph widens, reorders or completes a tensor: the
computed channels are gathered or added at their places, and what is not computed (uniform
values, maps, scaled channels, a pending map) is added as one term (``Join``). Ops that are
not linear in their input (activations, pools, products) first ``fold`` the pending map and
the scaled channels into the computed ones.
"""
import torch

from .state import Maps, T, member, positions, run_start


def gather(cv, node: str, pos: torch.Tensor, spatial: bool) -> str:
    """Channels ``pos`` of a data node: a slice when they are one run, else a gather."""
    start = run_start(pos)
    if start >= 0:
        return cv.b.data("take", [node], {"start": start, "width": len(pos), "spatial": spatial})
    return cv.b.data("take", [node], {"start": -1, "width": len(pos), "spatial": spatial},
                     {"index": pos.clone()})


def realise(cv, t: T, target: torch.Tensor) -> str:
    """A data node holding exactly the dense channels ``target`` of ``t``, in that order."""
    key = (t.node, t.pending, t.scaled.source if t.scaled else None,
           t.maps.expr if t.maps else None, tuple(t.ids.tolist()), tuple(target.tolist()),
           t.value.numpy().tobytes())
    if key not in cv.realised:
        cv.realised[key] = _realise(cv, t, target)
    return cv.realised[key]


def _realise(cv, t: T, target: torch.Tensor) -> str:
    b, want = cv.b, t.mask(target)
    computed = t.mask(t.ids)
    if bool(computed[target].all()) and t.pending is None:
        if torch.equal(t.ids, target):
            return t.node
        return gather(cv, t.node, positions(target, t.ids), t.spatial)
    a, a_ids, pending = t.node, member(t.ids, want), t.pending
    if len(a_ids) < len(t.ids):  # drop the computed channels not asked for
        pos = positions(a_ids, t.ids)
        a = gather(cv, t.node, pos, t.spatial) if len(a_ids) else None
        pending = b.select(t.pending, pos) if t.pending and len(a_ids) else None
    operands, terms = [], []
    if a is not None:
        pos_a = positions(a_ids, target)
        operands.append((a, pos_a))
        if pending is not None:
            terms.append(b.widen(pending, len(target), pos_a, t.spatial))
    scaled = _scaled_operand(cv, t, want)
    if scaled is not None:
        operands.append((scaled[0], positions(scaled[1], target)))
    if t.maps is not None and bool(want[t.maps.ids].any()):
        keep = want[t.maps.ids]
        expr = t.maps.expr if bool(keep.all()) else b.select(t.maps.expr, keep.nonzero()[:, 0])
        terms.append(b.widen(expr, len(target), positions(t.maps.ids[keep], target), t.spatial))
    uniform = t.uniform_mask()[target]
    values = torch.where(uniform, t.value[target], torch.zeros(len(target), dtype=torch.float64))
    return join(cv, operands, terms, values, len(target), t.spatial)


def _scaled_operand(cv, t: T, want: torch.Tensor):
    """(data node, ids) of the scaled channels asked for: their factors times their values."""
    s = t.scaled
    if s is None or not bool(want[s.ids].any()):
        return None
    keep = want[s.ids]
    factors = gather(cv, s.source, s.pos[keep], t.spatial)
    node = cv.b.data("affine", [factors], {"spatial": t.spatial, "bn": False},
                     {"scale": _shape(s.value[keep], t.spatial), "shift": None})
    return node, s.ids[keep]


def _shape(v: torch.Tensor, spatial: bool) -> torch.Tensor:
    return v.reshape((1, -1, 1, 1) if spatial else (1, -1))


def join(cv, operands: list, terms: list, values: torch.Tensor | None, width: int,
         spatial: bool, relu: bool = False) -> str:
    """Σ operands (each at its positions) + Σ const terms + uniform ``values``, then ReLU."""
    b = cv.b
    has_values = values is not None and bool(values.count_nonzero())
    term_expr, term_vector = None, None
    if terms:
        if has_values:
            terms = terms + [b.vector(values, spatial)]
        term_expr = b.add(terms)
    elif has_values:
        term_vector = _shape(values, spatial).clone()
    ops = []
    inputs, tensors = [], {}
    for i, (node, pos) in enumerate(operands):
        inputs.append(node)
        identity = len(pos) == width and bool((pos == torch.arange(width)).all())
        ops.append({"width": len(pos), "start": 0 if identity else run_start(pos)})
        tensors[f"pos{i}"] = pos.clone()
    like = operands[0][0] if operands else cv.input_node
    attrs = {"width": width, "operands": ops, "relu": relu, "spatial": spatial,
             "term": "map" if term_expr else ("vector" if term_vector is not None else None)}
    if term_expr is not None:
        attrs["map"], map_tensors, refs = b.embed(term_expr, like)
        tensors.update(map_tensors)
        inputs += refs
    if not operands:
        inputs.append(cv.input_node)  # only for the batch size
    if term_vector is not None:
        tensors["vector"] = term_vector
    return b.data("join", inputs, attrs, tensors)


def fold(cv, t: T, also: torch.Tensor | None = None) -> T:
    """``t`` with its pending map and scaled channels (and the channels ``also``) computed."""
    extra = t.mask(t.scaled_ids)
    if also is not None:
        extra |= t.mask(also)
    extra &= ~t.mask(t.ids)
    if t.pending is None and not bool(extra.any()):
        return t
    target = torch.cat([t.ids, extra.nonzero()[:, 0]])
    node = realise(cv, t, target)
    return settle(cv, t, target, node)


def settle(cv, t: T, target: torch.Tensor, node: str) -> T:
    """``t`` once ``node`` computes the channels ``target`` (the rest keeps its state)."""
    now = t.mask(target)
    maps, scaled = t.maps, t.scaled
    if maps is not None and bool(now[maps.ids].any()):
        left = ~now[maps.ids]
        maps = None if not bool(left.any()) else Maps(
            maps.ids[left], cv.b.select(maps.expr, left.nonzero()[:, 0]))
    if scaled is not None and bool(now[scaled.ids].any()):
        left = ~now[scaled.ids]
        scaled = None if not bool(left.any()) else scaled.__class__(
            scaled.ids[left], scaled.value[left], scaled.source, scaled.pos[left])
    value = t.value.clone()
    value[target] = 0
    return t.but(ids=target, node=node, value=value, maps=maps, scaled=scaled, pending=None)
