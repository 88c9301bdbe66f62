"""Ops the compact network computes at full width, exactly as the dense network does.

A split attention (ResNeSt) views its channels as (radix, C) and sums, weighs and softmaxes
across the radix dim: channels meet channels of other groups, so no narrow tensor holds the
result. Such an op takes its inputs at full width — the removed channels' constants filled in
(``realise``), a regrouped view gathered into its dense layout — and its result is the dense
network's tensor itself (``state.Full``): any shape, every channel computed; back in
(N, C, H, W) or (N, F) it is an ordinary tensor of computed channels again. Exact by
construction; only the convs before it are narrower.

The ops are plain data (``modules.TensorOp``): reshapes and views that keep the batch dim (and
the image's height and width, or merge dims of size 1), transposes and permutes that keep the
batch dim, sums and means, softmax, stacking along a new dim, products and sums with
broadcasting, numbers, activations, and a 1-D conv across the channels (ECA).
"""
import math

import torch

from .materialise import realise
from .state import ChannelView, Full, T
from .tracing import permutation, refuse, shape_of

KINDS = {"reshape", "flatten", "reduce", "softmax", "stack", "add", "mul", "act"}


def takes(cv, op) -> bool:
    """Must ``op`` run at full width: a reduction or softmax across channels (a split), or an
    input the narrow ops cannot read (a tensor of another rank, a regrouped view)?"""
    if op.kind in ("reduce", "softmax", "stack"):
        return True
    if op.kind in ("reshape", "flatten"):
        return any(isinstance(cv.states[n], Full) and len(cv.states[n].shape) not in (2, 4)
                   for n in op.inputs)
    return op.kind in KINDS and any(
        isinstance(cv.states[n], ChannelView) or (isinstance(cv.states[n], Full) and
                                                  len(cv.states[n].shape) not in (2, 4))
        for n in op.inputs)


def convert(cv, op) -> Full:
    if op.kind not in KINDS:
        raise refuse(op.node, cv.modules, " (on a regrouped view of the channels)")
    attrs = _attrs(cv, op)
    cv.note("computed at full width")
    inputs = [dense_node(cv, n) for n in op.inputs]
    node = cv.b.data("tensor", inputs, attrs)
    return Full(node, tuple(shape_of(op.node)))


def convert_conv1d(cv, op) -> Full:
    """A 1-D conv across the channels (ECA: the pooled channels as one sequence, each output
    a mix of its neighbours): every channel, the removed ones' constants filled in."""
    m, out = op.module, shape_of(op.node)
    cv.note("computed at full width")
    macs = out[-1] * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0]
    tensors = {"weight": m.weight.detach().double().cpu()}
    if m.bias is not None:
        tensors["bias"] = m.bias.detach().double().cpu()
    attrs = {"fn": "conv1d", "stride": list(m.stride), "padding": list(m.padding),
             "dilation": list(m.dilation), "groups": m.groups, "macs": macs,
             "params": sum(t.numel() for t in tensors.values())}
    node = cv.b.data("tensor", [dense_node(cv, op.inputs[0])], attrs, tensors)
    return Full(node, tuple(out))


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


def _attrs(cv, op) -> dict:
    node, name = op.node, _name(op.node)
    out = list(shape_of(node))
    if op.kind in ("reshape", "flatten") and name not in ("transpose", "permute"):
        return _reshape(cv, op, list(shape_of(op.inputs[0])), out)
    if op.kind == "reshape":
        rank = len(shape_of(op.inputs[0]))
        dims = permutation(node, rank)
        if dims[0] != 0:
            raise refuse(node, cv.modules, " (a transpose of the batch dim)")
        return {"fn": "permute", "dims": dims}
    if op.kind in ("reduce", "softmax", "stack"):
        rank = len(shape_of(op.node if op.kind == "stack" else op.inputs[0]))
        dims = [d % rank for d in op.attrs["dims"]]
        if 0 in dims:
            raise refuse(node, cv.modules, " (a reduction over the batch dim)")
        return {"fn": op.attrs.get("fn", op.kind), "dims": dims,
                "keepdim": bool(op.attrs.get("keepdim", False))}
    if op.kind == "act" and op.attrs["fn"] != "prelu":
        return {"fn": "act", "act": op.attrs["fn"], "kw": dict(op.attrs["kw"])}
    if op.kind == "act":
        raise refuse(node, cv.modules, " (a PReLU on a regrouped view of the channels)")
    number = op.attrs.get("number")
    return {"fn": op.kind, "number": None if number is None else float(number)}


def _reshape(cv, op, shape_in: list, out: list) -> dict:
    """A reshape keeps the batch dim; it keeps the image's height and width as its last dims,
    or merges only dims of size 1 (a pooled attention vector), which no image size changes."""
    if out[0] != shape_in[0]:
        raise refuse(op.node, cv.modules, " (a reshape of the batch dim)")
    keep = len(shape_in) >= 3 and len(out) >= 3 and shape_in[-2:] == out[-2:] and \
        math.prod(shape_in[-2:]) > 1
    if not keep and len(shape_in) >= 4 and math.prod(shape_in[2:]) > 1:
        raise refuse(op.node, cv.modules, " (a reshape that mixes the channels with the "
                                          "image's height and width)")
    return {"fn": "reshape", "dims": out[1:-2] if keep else out[1:], "spatial": keep}


def _name(node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__
