"""Ops the compact network computes at full width, exactly as the dense network does.

A split attention (ResNeSt) views its channels as (radix, C) and sums, weighs and softmaxes
across the radix dim: channels meet channels of other groups, so no narrow tensor holds the
result. Such an op takes its inputs at full width — the removed channels' constants filled in
(``realise``), a regrouped view gathered into its dense layout — and its result is the dense
network's tensor itself (``state.Full``): any shape, every channel computed; back in
(N, C, H, W) or (N, F) it is an ordinary tensor of computed channels again. Exact by
construction; only the convs before it are narrower.

Which ops can (``Rule.full_width``) and what each computes (``Rule.full_width_attrs``: the
plain data of a ``modules.TensorOp``) is their rule's; here is when and how.
"""
import torch

from .materialise import realise
from .nodes import shape_of
from .state import ChannelView, Full, T


def takes(cv, op, rule) -> bool:
    """Must ``op`` run at full width: a reduction or softmax across channels (a split), or an
    input the narrow ops cannot read (a tensor of another rank, a regrouped view — which a
    view's own rule reads itself)?"""
    if not rule.full_width:
        return False
    if rule.always_full_width:
        return True
    return any(_odd_rank(cv.states[n]) or (not rule.keeps_views and
                                             isinstance(cv.states[n], ChannelView))
               for n in op.inputs)


def _odd_rank(s) -> bool:
    return isinstance(s, Full) and len(s.shape) not in (2, 4)


def compute(cv, op, attrs: dict) -> Full:
    """``op`` as a ``TensorOp`` of ``attrs`` on its inputs at full width."""
    cv.note("computed at full width")
    inputs = [dense_node(cv, n) for n in op.inputs]
    node = cv.b.data("tensor", inputs, attrs)
    return Full(node, tuple(shape_of(op.node)), any(sized(cv, n) for n in op.inputs))


def sized(cv, node) -> bool:
    """May ``node``'s value hold the image's size in a layout the ops cannot see (``Full``)?"""
    s = cv.states.get(node)
    return isinstance(s, Full) and s.sized


def dense_node(cv, node) -> str:
    """A data node holding ``node``'s value exactly as the dense network does."""
    s = cv.states[node]
    if isinstance(s, Full):
        return s.node
    if isinstance(s, T):
        return realise(cv, s, torch.arange(s.width))
    base = realise(cv, s.base, torch.arange(s.base.width))  # a regrouped view: gather, reshape
    order = s.index.flatten()
    if not torch.equal(order, torch.arange(len(order))):
        base = cv.b.data("take", [base], {"start": -1, "width": len(order), "spatial": True},
                         {"index": order.clone()})
    return cv.b.data("tensor", [base], {"fn": "reshape", "dims": list(s.index.shape),
                                        "spatial": True})
