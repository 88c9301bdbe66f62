"""Modules of a compacted ResNet, built from a plain-data spec (no pickled code).

``utils.compact`` derives the spec and the weights from a soft-pruned network; ``load_compact``
rebuilds the same modules from the spec stored in ``model_compact.pt``. Every structural choice
(widths, which constants exist) is in the spec, so ``load_state_dict(strict=True)`` checks the
file. Names used below:

* a *narrow* tensor holds only the kept channels of a full-width one; the removed channels are
  constants (a pruned filter outputs 0, its BN turns that into a constant, ReLU keeps it one);
* a *join* is a residual add whose operands may be narrow: it rebuilds the full-width stream by
  adding each operand at its channel indices, plus what the removed channels contribute.

Every BatchNorm is folded into its conv (weight × scale, bias). What the removed input channels
of a zero-padded conv contribute is a fixed per-pixel map (the border pixels see less of the
constant than the inner ones): ``conv2d(ones, taps)``, added behind the conv. It depends only on
the input size, so eager mode computes it once per size and caches it; a graph recorded by
``torch.onnx.export`` (static image size) gets it as a constant, one recorded by
``torch.jit.trace``/``torch.jit.script`` recomputes it from the input's size (any size works).
The last conv of a block needs no add of its own: its map and the join's constants are summed
into one full-width map, added once at the join.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.resnet_cifar import GlobalAvgPool

# aten's fused in-place add + ReLU (one pass over the stream instead of two); private, hence
# looked up, with add_ + relu_ where it is missing. CPU, float32/64, no autograd only.
_ADD_RELU = getattr(torch, "_add_relu_", None)
_ADD_RELU_DTYPES = (torch.float32, torch.float64)


def _graph_mode() -> bool:
    """True while torch.jit.trace / torch.export / torch.compile record the forward: caches
    are Python state they cannot see. (Not called from scripted code.)"""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _ones(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A 1×1×H×W image of ones of ``x``'s size: from ``x`` itself under tracing (so the traced
    graph follows the input size), from plain ints otherwise (an exported graph folds it)."""
    if torch.jit.is_tracing():
        return torch.ones_like(x[:1, :1], dtype=w.dtype)
    return torch.ones(1, 1, x.shape[2], x.shape[3], dtype=w.dtype, device=w.device)


class _Cached(nn.Module):
    """A module with a constant map for the last input size seen (eager mode). It is dropped
    whenever the weights may change: ``load_state_dict`` and ``.to()``/``.cuda()``/``.half()``
    (``_apply``). After editing buffers in place by hand, call ``CompactResNet.clear_cache()``.
    """

    __jit_ignored_attributes__ = ["_cache"]  # scripted code recomputes the maps

    def __init__(self):
        super().__init__()
        self._cache: tuple = ((), None)

    def _apply(self, fn, recurse=True):
        self._cache = ((), None)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = ((), None)
        super()._load_from_state_dict(*args, **kwargs)

    def _cached(self, x: torch.Tensor, make, *args) -> torch.Tensor:
        """``make(*args)`` for ``x``'s size and memory layout, computed once. (The maps are
        made of the module's own buffers, whose dtype and device ``_apply`` watches.)"""
        cl = x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
        key = (x.shape[-2], x.shape[-1], cl)
        if self._cache[0] != key:
            m = make(*args)
            if cl and m.shape[-1] > 1:
                m = m.contiguous(memory_format=torch.channels_last)
            self._cache = (key, m)
        return self._cache[1]


class FoldedConv(_Cached):
    """Conv (kept filters × kept input channels) with its BN folded in (weight and bias).

    ``taps`` (when the spec's ``border``): what the removed input channels' constants add per
    kernel tap, already scaled by the BN. Through a conv without zero padding every output
    pixel sees all taps, so their sum is in the bias; with zero padding it varies at the
    border and is ``conv2d(ones, taps)``, a per-pixel map.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.conv = nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), tuple(spec["stride"]),
                              tuple(spec["padding"]), tuple(spec["dilation"]), bias=True)
        self.border = bool(spec["border"])
        self.source_bias = int(bool(spec["bias"]))  # the source conv had a bias (for counting)
        self.register_buffer("taps", torch.zeros(spec["out"], 1, *spec["kernel"]) if self.border
                             else None)

    def border_map(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel map (1 × out × H' × W') for input ``x``'s size (``taps`` present)."""
        taps = self.taps
        assert taps is not None
        c = self.conv
        return F.conv2d(_ones(x, taps), taps, None, c.stride, c.padding, c.dilation)

    def cached_map(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.border_map(x)
        else:
            if _graph_mode():
                return self.border_map(x)
            return self._cached(x, self.border_map, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.taps is not None:
            y = y.add_(self.cached_map(x))  # in place: conv's backward does not need its output
        return y


class Join(nn.Module):
    """Residual add of the main path and the shortcut, either of which may be narrow.

    A narrow operand is added at its channels of the full-width stream (``*_index``). Eager
    mode does it in place with ``index_add_`` (in channels_last on the pixels × channels view,
    where it is ~15× faster than along dim 1); a recorded graph gets a gather (``_gather_add``).
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.channels = int(spec["channels"])
        for side in ("main", "short"):
            narrow = bool(spec[f"{side}_narrow"])
            width = int(spec[f"{side}_width"])
            self.register_buffer(f"{side}_index", torch.zeros(width, dtype=torch.long)
                                 if narrow else None)
            # where each stream channel takes its value from: its operand channel, or ``width``
            # (the zero channel that ``_gather_add`` appends)
            self.register_buffer(f"{side}_gather", torch.zeros(self.channels, dtype=torch.long)
                                 if narrow else None, persistent=False)
            setattr(self, f"{side}_start", -1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.update_gather()

    @torch.no_grad()
    def update_gather(self) -> None:
        for side in ("main", "short"):
            index, gather = getattr(self, f"{side}_index"), getattr(self, f"{side}_gather")
            if index is not None and gather is not None:
                gather.fill_(len(index))
                gather[index] = torch.arange(len(index), device=index.device)
                # once here, not per forward: reading a CUDA tensor's values waits for the GPU
                first, last = int(index[0]), int(index[-1])
                run = last - first == len(index) - 1 and bool((index.diff() == 1).all())
                setattr(self, f"{side}_start", first if run else -1)

    @staticmethod
    def _index_add_(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor,
                    start: int) -> torch.Tensor:
        if start >= 0:  # the channels are one run (option A's shortcut): a slice
            out[:, start:start + src.shape[1]].add_(src)
            return out
        if out.is_contiguous(memory_format=torch.channels_last) and out.shape[1] > 1 and \
                src.is_contiguous(memory_format=torch.channels_last):
            flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])  # a view, no copy
            flat.index_add_(1, index, src.permute(0, 2, 3, 1).reshape(-1, src.shape[1]))
            return out
        return out.index_add_(1, index, src)

    def forward(self, main: torch.Tensor, short: torch.Tensor, term: Optional[torch.Tensor],
                inplace: bool, eager: bool) -> torch.Tensor:
        """ReLU(main + short + term). ``main`` is the block's own tensor; ``inplace``: ``short``
        may be overwritten too; ``eager``: not a recorded graph (which gets pure ops).
        ``term``: the constants (1 × channels × H × W) or None."""
        if torch.jit.is_scripting():
            return F.relu(self._gather_add(main, short, term))
        else:
            if not eager:
                return F.relu(self._gather_add(main, short, term))
            out, term = self._eager(main, short, term, inplace)
            if term is None:
                return out.relu_()
            if _ADD_RELU is not None and out.is_cpu and out.dtype in _ADD_RELU_DTYPES and \
                    not torch.is_grad_enabled():
                return _ADD_RELU(out, term)  # one pass: the constants cost no extra one
            return out.add_(term).relu_()

    def _eager(self, main: torch.Tensor, short: torch.Tensor, term: Optional[torch.Tensor],
               inplace: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """main + short, in place where allowed, and the part of ``term`` not yet added."""
        mi, si = self.main_index, self.short_index
        if si is None:
            if mi is None:
                out = main.add_(short)
            else:
                if not inplace:  # a fresh tensor: with the term added, or a copy
                    short = short.clone() if term is None else short + term
                    term = None
                out = self._index_add_(short, mi, main, self.main_start)
        elif mi is None:
            out = self._index_add_(main, si, short, self.short_start)
        else:
            shape = [main.shape[0], self.channels, main.shape[2], main.shape[3]]
            # the stream keeps the operands' memory layout (channels_last stays so)
            cl = main.shape[1] > 1 and main.is_contiguous(memory_format=torch.channels_last)
            out = torch.empty(shape, dtype=main.dtype, device=main.device,
                              memory_format=torch.channels_last if cl else torch.contiguous_format)
            if term is None:
                out.zero_()
            else:
                out.copy_(term.expand(shape))
                term = None
            out = self._index_add_(out, mi, main, self.main_start)
            out = self._index_add_(out, si, short, self.short_start)
        return out, term

    def _gather_add(self, main: torch.Tensor, short: torch.Tensor,
                    term: Optional[torch.Tensor]) -> torch.Tensor:
        """Pure ops for recorded graphs: a narrow operand is widened by a gather from it with a
        zero channel appended (Pad + Gather in ONNX: plain copies in every runtime, where a
        scatter becomes transposes around ScatterND)."""
        mg, sg = self.main_gather, self.short_gather
        if mg is not None:
            main = torch.index_select(F.pad(main, (0, 0, 0, 0, 0, 1)), 1, mg)
        if sg is not None:
            short = torch.index_select(F.pad(short, (0, 0, 0, 0, 0, 1)), 1, sg)
        out = main + short
        return out if term is None else out + term


class Block(_Cached):
    """A residual block: FoldedConv (ReLU FoldedConv)*, a shortcut, a join, a ReLU.

    Covers the CIFAR BasicBlock (shortcut ``identity`` or ``option_a``: subsample by 2, new
    channels zero) and torchvision's BasicBlock and Bottleneck (shortcut ``identity`` or
    ``conv``: the 1×1 downsample conv). ``const`` (when the join spec's ``const``): the removed
    channels' constants of both operands, full width.
    """

    def __init__(self, spec: dict):
        super().__init__()
        convs = [FoldedConv(s) for s in spec["convs"]]
        self.first = nn.Sequential(*convs[:-1])  # each followed by ReLU
        self.last = convs[-1]
        self.option_a = spec["shortcut"] == "option_a"
        self.downsample = FoldedConv(spec["downsample"]) if spec["shortcut"] == "conv" else None
        self.join = Join(spec["join"])
        self.register_buffer("const", torch.zeros(1, spec["join"]["channels"], 1, 1)
                             if spec["join"]["const"] else None)
        self.has_term = bool(spec["join"]["const"]) or self.last.border or (
            self.downsample is not None and self.downsample.border)

    @staticmethod
    def _widen(m: torch.Tensor, gather: Optional[torch.Tensor]) -> torch.Tensor:
        if gather is None:
            return m
        return torch.index_select(F.pad(m, (0, 0, 0, 0, 0, 1)), 1, gather)

    def _term(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Everything constant that reaches the join, as one full-width map: the last conv's
        border map (its input is ``h``), the downsample conv's (input ``x``) and ``const``."""
        out = torch.zeros(1, self.join.channels, 1, 1, dtype=h.dtype, device=h.device)
        if self.const is not None:
            out = out + self.const
        if self.last.taps is not None:
            out = out + self._widen(self.last.border_map(h), self.join.main_gather)
        ds = self.downsample
        if ds is not None:
            if ds.taps is not None:
                out = out + self._widen(ds.border_map(x), self.join.short_gather)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.first:
            h = F.relu_(conv(h))
        main = self.last.conv(h)  # its border map is part of the join's term
        eager = False  # eager: cached maps, in-place ops; otherwise a pure recorded graph
        if not torch.jit.is_scripting():
            eager = not _graph_mode()
        term: Optional[torch.Tensor] = None
        if self.has_term:
            if torch.jit.is_scripting():
                term = self._term(x, h)
            else:
                term = self._cached(x, self._term, x, h) if eager else self._term(x, h)
            if term.dtype != main.dtype:  # under autocast: the operands' dtype
                term = term.to(main.dtype)
        ds = self.downsample
        if ds is not None:
            short = ds.conv(x)
        elif self.option_a:
            short = x[:, :, ::2, ::2]
        else:
            short = x
        # Without autograd the block input is needed no more once the convs have read it, so
        # an identity shortcut can take the join in place.
        inplace = eager and ds is None and not self.option_a and not torch.is_grad_enabled()
        return self.join(main, short, term, inplace, eager)


class CompactResNet(nn.Module):
    """Stem FoldedConv, ReLU, optional max-pool, blocks, global average pool, linear classifier.

    The CIFAR networks pool with ``models.resnet_cifar.GlobalAvgPool`` (the authors'
    ``AvgPool2d(8)`` on 8×8 maps), the torchvision ones with ``AdaptiveAvgPool2d(1)``, as the
    networks they come from. ``manifest`` is the plain-data description it was built from;
    ``save_compact`` stores it.
    """

    def __init__(self, manifest: dict):
        super().__init__()
        net = manifest["net"]
        self.manifest = manifest
        self.stem = FoldedConv(net["stem"])
        mp = net["maxpool"]
        self.maxpool = nn.MaxPool2d(mp[0], mp[1], mp[2]) if mp else None
        self.blocks = nn.Sequential(*(Block(b) for b in net["blocks"]))
        self.avgpool = GlobalAvgPool() if net["pool"] == "cifar" else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(*net["classifier"])

    def clear_cache(self) -> None:
        """Forget the cached constant maps (after editing buffers in place by hand)."""
        for m in self.modules():
            if isinstance(m, _Cached):
                m._cache = ((), None)

    def forward(self, x):
        x = F.relu_(self.stem(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.blocks(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))
