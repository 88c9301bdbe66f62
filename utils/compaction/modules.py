"""The modules the compact network is made of, built from plain-data attributes.

Eager mode takes the fast paths: constant maps computed once per image size and cached,
in-place adds into tensors nobody reads afterwards (``Join``: the narrow operand is added at
its channels with ``index_add_``, on the pixels × channels view in channels_last), the
fused add + ReLU of aten. A recorded graph (``torch.jit.trace``, ``torch.export`` and so
``torch.onnx.export(dynamo=True)``) gets pure ops instead: gathers, no caches, no in-place
writes (a graph for ONNX folds the constant maps, whose size is static there).
"""
import threading

import torch
import torch.nn.functional as F
from torch import nn

# aten's fused in-place add + ReLU (one pass over the stream instead of two); private, hence
# looked up, with add_ + relu_ where it is missing. CPU, float32/64, no autograd only.
_ADD_RELU = getattr(torch, "_add_relu_", None)
_ADD_RELU_DTYPES = (torch.float32, torch.float64)

_ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish,
                "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                "gelu": F.gelu, "mish": F.mish, "leaky_relu": F.leaky_relu, "elu": F.elu,
                "hardtanh": F.hardtanh}
_IN_PLACE = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_}
_IN_PLACE_KW = {"relu6", "silu", "hardswish", "hardsigmoid", "mish", "leaky_relu", "elu",
                "hardtanh"}  # take inplace=True


def graph_mode() -> bool:
    """True while torch.jit.trace / torch.export / torch.compile record the forward: caches
    and in-place writes are Python-side tricks a recorded graph must not bake in."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class Mode(threading.local):
    """How the current forward of a compact network runs, decided once per forward (by
    ``CompactNet.forward``) instead of by every module: ``recorded`` (``graph_mode``), and
    ``eager`` — neither recorded nor under autograd, so in-place writes are allowed. A module
    called outside a compact network's forward sees the safe defaults."""
    recorded: bool = True
    eager: bool = False


MODE = Mode()


def activation(fn: str, kw: dict):
    f = _ACTIVATIONS[fn]
    return (lambda x: f(x, **kw)) if kw else f


def activate_(fn: str, kw: dict, x: torch.Tensor) -> torch.Tensor:
    """The activation ``fn`` written into ``x`` where torch has an in-place form."""
    if fn in _IN_PLACE:
        return _IN_PLACE[fn](x)
    if fn in _IN_PLACE_KW:
        return _ACTIVATIONS[fn](x, inplace=True, **kw)
    return activation(fn, kw)(x)


def take_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(1, index)`` in ``x``'s memory layout (channels_last stays so): on the
    pixels × channels matrix, ~10× faster than along dim 3 of the permuted 4-D view."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view, no copy
        return flat.index_select(1, index).view(n, h, w, -1).permute(0, 3, 1, 2)
    return x.index_select(1, index)


def widen(x: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """Channel k of the result is channel ``gather[k]`` of ``x`` with a zero channel appended."""
    pad = (0, 0, 0, 0, 0, 1) if x.dim() == 4 else (0, 1)
    return torch.index_select(F.pad(x, pad), 1, gather)


def register(module: nn.Module, specs: dict, prefix: str = "") -> None:
    """Zero buffers of the shapes the manifest gives (``load_state_dict`` fills them)."""
    for key, spec in specs.items():
        if not key.startswith(prefix) or "." in key[len(prefix):]:
            continue
        dtype = torch.long if spec["index"] else torch.float32
        module.register_buffer(key[len(prefix):], torch.zeros(spec["shape"], dtype=dtype))


class Cached(nn.Module):
    """A module holding a value for the last input size seen (eager mode). It is dropped
    whenever its tensors may change: ``load_state_dict`` and ``.to()``/``.half()``
    (``_apply``); after editing buffers in place by hand, call ``CompactNet.clear_cache()``."""

    def __init__(self):
        super().__init__()
        self._cache: tuple = ((), None)

    def _apply(self, fn, recurse=True):
        self._cache = ((), None)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = ((), None)
        super()._load_from_state_dict(*args, **kwargs)


class Act(nn.Module):
    """An activation; PReLU's slopes, one per channel, are its ``weight``."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.fn, self.kw = a["fn"], dict(a.get("kw", {}))
        self.f = activation(self.fn, self.kw) if self.fn != "prelu" else None
        self.register_buffer("weight", None)
        register(self, specs)
        self.inplace = False  # set by the network: nobody reads the input afterwards

    def forward(self, x):
        if self.f is None:
            return F.prelu(x, self.weight)
        if self.inplace and MODE.eager:
            return activate_(self.fn, self.kw, x)
        return self.f(x)


class Affine(nn.Module):
    """x · scale + shift per channel (a BatchNorm no conv folds; a scaled channel's value)."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.register_buffer("shift", None)
        register(self, specs)
        self.spatial, self.bn = bool(a["spatial"]), bool(a["bn"])
        self.params = int(a.get("params", 0))  # a learnable scale's own parameters

    def forward(self, x):
        if self.shift is None:
            return x * self.scale
        if self.spatial and x.dim() == 4:  # one fused pass (BN's kernel), either layout
            zeros = torch.zeros_like(self.shift.flatten())
            return F.batch_norm(x, zeros, torch.ones_like(zeros), self.scale.flatten(),
                                self.shift.flatten(), False, 0.0, 0.0)
        return torch.addcmul(self.shift, x, self.scale)


class Mul(nn.Module):
    def __init__(self, a: dict, specs: dict):
        super().__init__()

    def forward(self, x, s):
        return x * s


class Take(nn.Module):
    """Some channels of a tensor: a slice (a view) when they are one run, else a gather."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.start, self.width = int(a["start"]), int(a["width"])
        self.register_buffer("index", None)
        register(self, specs)

    def forward(self, x):
        if self.index is None:
            return x[:, self.start:self.start + self.width]
        return take_channels(x, self.index)


class Pool(nn.Module):
    """A pool or a resize; ``resize_like`` resizes to the height and width of its second
    input."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.a = dict(a)
        self.type = a["type"]

    def forward(self, x, *like):
        if like:
            return resize_to(x, like[0], self.a)
        return pool(x, self.a)


def resize_to(x: torch.Tensor, like: torch.Tensor, a: dict) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode=a["mode"],
                         align_corners=a["align_corners"])


class Pad(nn.Module):
    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.a = dict(a)

    def forward(self, x):
        return pad(x, self.a)


def pad(x: torch.Tensor, a: dict) -> torch.Tensor:
    """``F.pad`` of the height and width; the value only where the mode takes one."""
    value = a["value"] if a["mode"] == "constant" else None
    return F.pad(x, a["pad"], a["mode"], value)


def pool(x: torch.Tensor, a: dict) -> torch.Tensor:
    kind = a["type"]
    if kind == "max":
        return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"],
                            a["ceil_mode"])
    if kind == "avg":
        return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                            a["count_include_pad"], a["divisor_override"])
    if kind == "adaptive_avg":
        return F.adaptive_avg_pool2d(x, a["size"])
    if kind == "adaptive_max":
        return F.adaptive_max_pool2d(x, a["size"])
    if kind == "resize":
        return F.interpolate(x, a["size"], a["scale_factor"], a["mode"], a["align_corners"],
                             a["recompute_scale_factor"])
    if kind == "global_avg":  # the authors' AvgPool2d(8) on 8×8 maps: their summation order
        return F.avg_pool2d(x, x.shape[-2:])
    return x.mean((2, 3), keepdim=bool(a["keepdim"]))  # "mean"


class SpatialSlice(nn.Module):
    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.slices = [slice(*s) for s in a["slices"]]

    def forward(self, x):
        return x[:, :, self.slices[0], self.slices[1]]


class TensorOp(nn.Module):
    """An op on tensors held at full width, as the dense network computes it (``fullwidth``):
    reshape (the batch dim, then ``dims``, then the input's height and width if ``spatial``),
    permute, sum, mean, softmax, stack, add, sub, mul (of two tensors or by a number), an
    activation, a 1-D conv across the channels."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.fn, self.a = a["fn"], dict(a)
        self.f = activation(a["act"], a["kw"]) if self.fn == "act" else None
        for key in ("weight", "bias"):  # a 1-D conv's
            self.register_buffer(key, None)
        register(self, specs)

    def forward(self, x, *others):
        fn, a = self.fn, self.a
        if fn == "stack":
            return torch.stack((x, *others), a["dims"][0])
        if fn == "conv1d":
            return F.conv1d(x, self.weight, self.bias, a["stride"], a["padding"], a["dilation"],
                            a["groups"])
        if fn == "reshape":
            return x.reshape(x.shape[0], *a["dims"], *(x.shape[-2:] if a["spatial"] else ()))
        if fn == "permute":
            return x.permute(a["dims"])
        if fn in ("sum", "mean"):
            return getattr(x, fn)(a["dims"], keepdim=a["keepdim"])
        if fn == "softmax":
            return torch.softmax(x, a["dims"][0])
        if fn == "act":
            return self.f(x)
        other = others[0] if others else a["number"]
        if fn == "sub":
            return x - other
        return x + other if fn == "add" else x * other


class Held(nn.Module):
    """A part of the dense network kept whole (``kept``): its piece of the dense graph, over
    the model's own modules (copied). No manifest describes it: a network built in memory
    gets it from ``CompactNet.hold``; a file never holds one (``storage.save_compact``)."""

    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.piece: nn.Module | None = None
        self.copies = False  # an in-place op: it gets copies of its inputs

    def set_piece(self, piece: nn.Module, copies: bool = False) -> None:
        self.piece, self.copies = piece, copies

    def forward(self, *xs):
        if self.copies:
            xs = tuple(x.clone() for x in xs)
        return self.piece(*xs)
