"""Modules of a compacted ResNet, built from a plain-data spec (no pickled code).

``utils.compact`` derives the spec and the weights from a soft-pruned network; ``load_compact``
rebuilds the same modules from the spec stored in ``model_compact.pt``. Every structural choice
(widths, which corrections exist) is in the spec, so ``load_state_dict(strict=True)`` checks the
file. Names used below:

* a *narrow* tensor holds only the kept channels of a full-width one; the removed channels are
  constants (a pruned filter outputs 0, its BN turns that into a constant, ReLU keeps it one);
* a *join* is a residual add whose operands may be narrow: it rebuilds the full-width stream by
  adding each operand at its channel indices, plus the removed channels' constants.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _building_graph() -> bool:
    """True while torch.jit.trace / torch.export / torch.compile record the forward: the cache
    below is Python state they cannot see, so the correction is recomputed as graph ops."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class ConvBN(nn.Module):
    """Conv (kept filters × kept input channels) + BN (kept channels).

    Removed input channels carry constants. Through a conv without zero padding their
    contribution is the same at every pixel and is folded into ``bn.running_mean``. With zero
    padding it is smaller at the borders, so it is ``conv2d(ones, pad_const)``: an exact
    per-pixel map that depends only on the input size, hence computed once per size and cached.
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.conv = nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), tuple(spec["stride"]),
                              tuple(spec["padding"]), tuple(spec["dilation"]), bias=spec["bias"])
        self.bn = nn.BatchNorm2d(spec["out"], eps=spec["eps"], momentum=spec["momentum"])
        self.has_pad_const = bool(spec["pad_const"])
        if self.has_pad_const:
            self.register_buffer("pad_const", torch.zeros(spec["out"], 1, *spec["kernel"]))
        self._cache: dict = {}

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if _building_graph():  # ones_like keeps the recorded graph valid for any input size
            return F.conv2d(torch.ones_like(x[:1, :1]), self.pad_const, None, c.stride, c.padding,
                            c.dilation)
        # _version changes when load_state_dict/copy_ rewrites the buffer in place
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype, self.pad_const._version)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = F.conv2d(x.new_ones(1, 1, *x.shape[-2:]), self.pad_const, None,
                                        c.stride, c.padding, c.dilation)
        return self._cache[key]

    def forward(self, x):
        y = self.conv(x)
        if self.has_pad_const:
            y.add_(self.correction(x))  # in place: conv's backward does not need its output
        return self.bn(y)


class Join(nn.Module):
    """Residual add of the main path and the shortcut, either of which may be narrow.

    ``index_add`` writes a narrow operand at its channels of the full-width stream; ``const``
    holds the removed channels' constants of both operands (zero elsewhere).
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.channels = spec["channels"]
        self.main_narrow, self.short_narrow = spec["main_narrow"], spec["short_narrow"]
        self.has_const = spec["const"]
        if self.main_narrow:
            self.register_buffer("main_index", torch.zeros(spec["main_width"], dtype=torch.long))
        if self.short_narrow:
            self.register_buffer("short_index", torch.zeros(spec["short_width"], dtype=torch.long))
        if self.has_const:
            self.register_buffer("const", torch.zeros(1, spec["channels"], 1, 1))

    def forward(self, main, short, inplace: bool = False):
        """``main`` is the block's own tensor and always reused; ``inplace``: ``short`` may be
        overwritten too, which saves a copy of the stream."""
        if not self.main_narrow and not self.short_narrow:
            out = main.add_(short)
        elif not self.short_narrow:
            out = short.index_add_(1, self.main_index, main) if inplace else \
                torch.index_add(short, 1, self.main_index, main)
        elif not self.main_narrow:
            out = main.index_add_(1, self.short_index, short)
        else:
            shape = (main.shape[0], self.channels, main.shape[2], main.shape[3])
            out = (self.const.expand(shape).contiguous() if self.has_const
                   else main.new_zeros(shape))
            return out.index_add_(1, self.main_index, main).index_add_(1, self.short_index, short)
        return out.add_(self.const) if self.has_const else out


class Block(nn.Module):
    """A residual block: ConvBN (ReLU ConvBN)*, a shortcut, a join, a ReLU.

    Covers the CIFAR BasicBlock (shortcut ``identity`` or ``option_a``: subsample by 2, new
    channels zero) and torchvision's BasicBlock and Bottleneck (shortcut ``identity`` or
    ``conv``: the 1×1 downsample conv + BN).
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.convs = nn.ModuleList(ConvBN(s) for s in spec["convs"])
        self.shortcut = spec["shortcut"]
        self.downsample = ConvBN(spec["downsample"]) if self.shortcut == "conv" else None
        self.join = Join(spec["join"])

    def forward(self, x):
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = conv(F.relu_(out))
        # Without autograd the block input is needed no more once the convs have read it, so
        # an identity shortcut can take the join in place (a traced graph must stay pure).
        inplace = False
        if self.downsample is not None:
            short = self.downsample(x)
        elif self.shortcut == "option_a":
            short = x[:, :, ::2, ::2]
        else:
            short = x
            inplace = not (torch.is_grad_enabled() or _building_graph())
        return F.relu_(self.join(out, short, inplace))


class CompactResNet(nn.Module):
    """Stem ConvBN, ReLU, optional max-pool, blocks, global average pool, linear classifier.

    ``manifest`` is the plain-data description it was built from; ``save_compact`` stores it.
    """

    def __init__(self, manifest: dict):
        super().__init__()
        net = manifest["net"]
        self.manifest = manifest
        self.stem = ConvBN(net["stem"])
        mp = net["maxpool"]
        self.maxpool = nn.MaxPool2d(mp[0], mp[1], mp[2]) if mp else None
        self.blocks = nn.Sequential(*(Block(b) for b in net["blocks"]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(*net["classifier"])

    def forward(self, x):
        x = F.relu_(self.stem(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.blocks(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))
