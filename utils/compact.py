"""Compaction: a soft-pruned ResNet → a smaller dense ResNet with the same eval-mode outputs.

In the soft-pruned network a pruned filter's weights are zero, but its channel is not silent: its
BN maps the zero output to the constant ``beta - gamma * mean / sqrt(var + eps)`` (then ReLU, if
any), and that constant flows on. The compact network drops the filter, its BN channel and the
matching input channels of the next conv, folds every BN into its conv, and carries the
constant exactly:

* into the next conv: through a conv without zero padding it shifts every pixel alike, which
  the folded bias absorbs; with zero padding the border pixels see less of it, so it becomes a
  per-pixel map behind the conv (``FoldedConv.taps``);
* into a residual add: the stream keeps its full width; narrow operands are added at their
  channel indices, the constants of the removed channels are added with the last conv's map
  as one full-width map, in the same pass as the ReLU (``Block``, ``Join``).

Weights, constants and corrections are computed in float64 from the soft-pruned weights. FLOPs
here follow the pruning papers' convention: one multiply-accumulate (MAC) = one FLOP,
convolutions and linear layers only (FPGM's ResNet-56 = 125 M).
"""
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from models.resnet_cifar import BasicBlock as CifarBlock, CifarResNet, ShortcutA

from .checkpoint import atomic_save, safe_load
from .compact_modules import CompactResNet, FoldedConv
from .errors import UserError
from .fpgm_flops import fpgm_flops_reduction
from .graph import unwrap

FORMAT = "fsdp-compact"
FORMAT_VERSION = 2  # 1: BN kept beside each conv (still loads: folded on loading)


# -- channel bookkeeping ---------------------------------------------------------------------
@dataclass
class _Channels:
    """A full-width tensor as the compact network holds it: the computed channels, and the
    value of every removed one (float64, full width, zero at kept channels)."""
    kept: torch.Tensor | None  # sorted indices of computed channels; None: all of them
    const: torch.Tensor

    @staticmethod
    def full(width: int) -> "_Channels":
        return _Channels(None, torch.zeros(width, dtype=torch.float64))

    def relu(self) -> "_Channels":
        return _Channels(self.kept, self.const.clamp(min=0))


def _complement(indices: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().flatten()


def _pruned_indices(pruned: dict, name: str, filters: int) -> torch.Tensor:
    idx = torch.as_tensor(pruned.get(name, []), dtype=torch.long).cpu().flatten().unique()
    if len(idx) and (idx.min() < 0 or idx.max() >= filters):
        raise UserError(f"pruned filters of {name} must lie in 0..{filters - 1}, got "
                        f"{idx.tolist()}; pass the mask of this very model")
    if len(idx) == filters:
        raise UserError(f"all {filters} filters of {name} are pruned; keep at least one per "
                        "layer (lower the pruning rate)")
    return idx


# -- conversion of one conv + BN -------------------------------------------------------------
class _Converter:
    """Walks a supported ResNet, collecting the compact spec and its state dict (float64).

    ``exact=False`` drops every constant a removed channel carries: the inexact network a
    pruner that ignores them builds, with the same widths (the latency floor, for the bench).
    """

    def __init__(self, pruned: dict, exact: bool = True):
        self.pruned = {str(k): v for k, v in pruned.items()}
        self.exact = exact
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def conv_bn(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, inp: _Channels,
                prefix: str) -> tuple[dict, _Channels]:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError(f"{name}: only ungrouped convs with numeric zero padding can be "
                            "compacted; use a plain ResNet")
        if not (bn.affine and bn.track_running_stats):
            raise UserError(f"{name}: its BatchNorm needs affine=True and running statistics")
        self.used.add(name)
        w = conv.weight.detach().cpu()
        filters = w.shape[0]
        drop = _pruned_indices(self.pruned, name, filters)
        if len(drop) and w[drop].count_nonzero():
            raise UserError(f"{name}: selected filters are not zero (ζ > 0: a snapshot from "
                            "before the last epoch); compact the final checkpoint")
        keep = _complement(drop, filters)
        w = w[keep].double() if len(drop) else w.double()
        bias = (conv.bias.detach().double().cpu() if conv.bias is not None
                else torch.zeros(filters, dtype=torch.float64))
        gamma, beta = bn.weight.detach().double().cpu(), bn.bias.detach().double().cpu()
        mean, var = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
        scale = gamma / torch.sqrt(var + bn.eps)  # BN(y) = scale·y + shift
        shift = beta - scale * mean
        w_out, b_out, taps = w, (scale * bias + shift)[keep], None
        if inp.kept is not None:
            removed = _complement(inp.kept, w.shape[1])
            # what the removed input channels' constants add to each kept filter, per tap
            t = torch.einsum("oihw,i->ohw", w_out[:, removed], inp.const[removed])
            w_out = w_out[:, inp.kept]
            if self.exact and t.count_nonzero():
                t = t * scale[keep].view(-1, 1, 1)
                if any(conv.padding):  # the border sees less of it: a per-pixel map
                    taps = t.unsqueeze(1)
                else:  # every output pixel sees every tap: a constant, into the bias
                    b_out = b_out + t.sum((1, 2))
        const = torch.zeros(filters, dtype=torch.float64)
        if self.exact:  # a dropped filter outputs its bias (0 without one); BN maps that on
            const[drop] = scale[drop] * bias[drop] + shift[drop]

        self.state.update({f"{prefix}.conv.weight": w_out * scale[keep].view(-1, 1, 1, 1),
                           f"{prefix}.conv.bias": b_out})
        if taps is not None:
            self.state[f"{prefix}.taps"] = taps
        spec = {"in": w_out.shape[1], "out": len(keep), "kernel": list(conv.kernel_size),
                "stride": list(conv.stride), "padding": list(conv.padding),
                "dilation": list(conv.dilation), "border": taps is not None,
                "bias": conv.bias is not None}  # the source conv's own bias, for counting
        return spec, _Channels(keep if len(drop) else None, const)

    # -- a residual block ---------------------------------------------------------------------
    def block(self, convs: list, shortcut: str, downsample, channels: int, inp: _Channels,
              prefix: str) -> dict:
        """``convs``: [(name, conv, bn)] of the main path, ReLU between them; ``downsample``:
        (name, conv, bn) when ``shortcut == 'conv'``."""
        specs, x = [], inp
        for i, (name, conv, bn) in enumerate(convs):
            where = f"{prefix}.first.{i}" if i < len(convs) - 1 else f"{prefix}.last"
            spec, x = self.conv_bn(name, conv, bn, x.relu() if i else x, where)
            specs.append(spec)
        main = x
        ds_spec = None
        if shortcut == "conv":
            ds_spec, short = self.conv_bn(*downsample, inp, f"{prefix}.downsample")
        elif shortcut == "option_a":  # subsampled input, then zero channels up to `channels`
            width = len(inp.const)
            pad = torch.zeros(channels - width, dtype=torch.float64)
            kept = inp.kept if inp.kept is not None else torch.arange(width)
            short = _Channels(kept if len(kept) < channels else None, torch.cat([inp.const, pad]))
        else:
            short = inp
        const = main.const + short.const  # each is zero where its operand is computed
        join = {"channels": channels, "main_narrow": main.kept is not None,
                "short_narrow": short.kept is not None, "const": bool(const.count_nonzero()),
                "main_width": channels if main.kept is None else len(main.kept),
                "short_width": channels if short.kept is None else len(short.kept)}
        if main.kept is not None:
            self.state[f"{prefix}.join.main_index"] = main.kept
        if short.kept is not None:
            self.state[f"{prefix}.join.short_index"] = short.kept
        if join["const"]:
            self.state[f"{prefix}.const"] = const.view(1, -1, 1, 1)
        return {"convs": specs, "shortcut": shortcut, "downsample": ds_spec, "join": join}


# -- supported architectures -----------------------------------------------------------------
def _walk_cifar(model: CifarResNet, cv: _Converter) -> tuple[dict, nn.Linear]:
    stem, x = cv.conv_bn("conv_1_3x3", model.conv_1_3x3, model.bn_1, _Channels.full(
        model.conv_1_3x3.in_channels), "stem")
    x, blocks = x.relu(), []
    for s in (1, 2, 3):
        for i, blk in enumerate(getattr(model, f"stage_{s}")):
            if type(blk) is not CifarBlock or not isinstance(blk.downsample,
                                                             (ShortcutA, type(None))):
                raise UserError(f"stage_{s}.{i} is not a CIFAR BasicBlock with option-A shortcut")
            p = f"stage_{s}.{i}"
            convs = [(f"{p}.conv_a", blk.conv_a, blk.bn_a), (f"{p}.conv_b", blk.conv_b, blk.bn_b)]
            shortcut = "identity" if blk.downsample is None else "option_a"
            blocks.append(cv.block(convs, shortcut, None, blk.conv_b.out_channels, x,
                                   f"blocks.{len(blocks)}"))
            x = _Channels.full(blk.conv_b.out_channels)
    return {"stem": stem, "maxpool": None, "blocks": blocks, "pool": "cifar"}, model.classifier


def _walk_torchvision(model, cv: _Converter) -> tuple[dict, nn.Linear]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    mp = model.maxpool
    if mp.dilation != 1 or mp.ceil_mode:
        raise UserError("the stem max-pool must have dilation 1 and ceil_mode=False")
    stem, x = cv.conv_bn("conv1", model.conv1, model.bn1, _Channels.full(model.conv1.in_channels),
                         "stem")
    x, blocks = x.relu(), []  # max-pool keeps constant channels constant
    for li in (1, 2, 3, 4):
        for i, blk in enumerate(getattr(model, f"layer{li}")):
            p = f"layer{li}.{i}"
            n = {BasicBlock: 2, Bottleneck: 3}.get(type(blk))
            if n is None:
                raise UserError(f"{p} is a {type(blk).__name__}; only torchvision BasicBlock "
                                "and Bottleneck can be compacted")
            convs = [(f"{p}.conv{k}", getattr(blk, f"conv{k}"), getattr(blk, f"bn{k}"))
                     for k in range(1, n + 1)]
            ds = blk.downsample
            if ds is not None and not (len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
                                       and isinstance(ds[1], nn.BatchNorm2d)):
                raise UserError(f"{p}.downsample must be Sequential(Conv2d, BatchNorm2d)")
            shortcut = "identity" if ds is None else "conv"
            down = None if ds is None else (f"{p}.downsample.0", ds[0], ds[1])
            out = convs[-1][1].out_channels
            blocks.append(cv.block(convs, shortcut, down, out, x, f"blocks.{len(blocks)}"))
            x = _Channels.full(out)
    maxpool = [_int(mp.kernel_size), _int(mp.stride), _int(mp.padding)]
    return {"stem": stem, "maxpool": maxpool, "blocks": blocks, "pool": "adaptive"}, model.fc


def _int(v) -> int:
    return v if isinstance(v, int) else v[0]


_TV_DEPTHS = {("BasicBlock", (2, 2, 2, 2)): 18, ("BasicBlock", (3, 4, 6, 3)): 34,
              ("Bottleneck", (3, 4, 6, 3)): 50, ("Bottleneck", (3, 4, 23, 3)): 101,
              ("Bottleneck", (3, 8, 36, 3)): 152}


def _arch_name(model) -> str | None:
    if isinstance(model, CifarResNet):
        return f"resnet{model.depth}"
    layers = [getattr(model, f"layer{i}") for i in (1, 2, 3, 4)]
    depth = _TV_DEPTHS.get((type(layers[0][0]).__name__, tuple(len(l) for l in layers)))
    return f"imagenet_resnet{depth}" if depth else None


def _is_torchvision_resnet(model) -> bool:
    try:
        from torchvision.models.resnet import ResNet
    except ImportError:
        return False
    return isinstance(model, ResNet)


# -- public API -------------------------------------------------------------------------------
@torch.no_grad()
def compact_model(model: nn.Module, pruned: dict, exact: bool = True) -> CompactResNet:
    """The compact network (eval mode, the model's device and dtype) of a soft-pruned one.

    ``pruned``: {conv module name: filter indices}, e.g. the Mask's final
    ``{c.name: mask.selected(c.name) for c in mask.convs}`` or a checkpoint's
    ``ckpt['mask']['selected']``. The selected filters must be zero (ζ = 0). ``model`` is not
    modified. ``exact=False``: drop the removed channels' constants (same widths, different
    outputs: what a pruner that ignores them builds; the bench's latency floor).
    """
    model = unwrap(model)
    cv = _Converter(pruned, exact)
    if isinstance(model, CifarResNet):
        net, fc = _walk_cifar(model, cv)
    elif _is_torchvision_resnet(model):
        net, fc = _walk_torchvision(model, cv)
    else:
        raise UserError(f"cannot compact a {type(model).__name__}: only the CIFAR ResNets and "
                        "torchvision ResNets are supported")
    unknown = sorted(set(cv.pruned) - cv.used)
    if unknown:
        raise UserError(f"pruned layers {unknown} are not prunable convs of this model; pass the "
                        "mask saved with this very architecture")
    net["classifier"] = [fc.in_features, fc.out_features]
    cv.state["classifier.weight"] = fc.weight.detach().cpu()
    cv.state["classifier.bias"] = fc.bias.detach().cpu()
    first = model.conv1 if hasattr(model, "conv1") else model.conv_1_3x3
    manifest = {
        "arch": _arch_name(model), "num_classes": fc.out_features,
        "in_channels": first.in_channels,
        # for people and tools reading the file: the filters each pruned conv keeps
        "kept": {name: _complement(_pruned_indices(cv.pruned, name, m.out_channels),
                                   m.out_channels).tolist()
                 for name, m in model.named_modules() if name in cv.pruned},
        "net": net}
    dtype, device = first.weight.dtype, first.weight.device
    compact = CompactResNet(manifest).to(dtype)  # casts floating tensors only, not indices
    compact.load_state_dict(cv.state, strict=True)  # copy_ casts float64 constants
    return compact.to(device).eval()


def save_compact(model: CompactResNet, path) -> None:
    """Write the manifest (plain data) and the state dict; ``load_compact`` rebuilds the model."""
    if not isinstance(model, CompactResNet):
        raise UserError(f"save_compact needs the output of compact_model, got "
                        f"{type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "manifest": model.manifest,
                 "state_dict": state}, str(path))


def load_compact(path, map_location="cpu") -> CompactResNet:
    """Rebuild a compact network saved by ``save_compact`` (eval mode); no pickled code runs.
    Files of format version 1 (BN beside each conv) are folded on loading."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; create it with `python compact.py SNAPSHOT`")
    blob = safe_load(str(path), map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a compact model file; create one with "
                        "`python compact.py SNAPSHOT`")
    version, manifest, state = blob.get("version"), blob.get("manifest"), blob.get("state_dict")
    if version not in (1, FORMAT_VERSION):
        raise UserError(f"{path} has compact format version {version}, this code reads 1 and "
                        f"{FORMAT_VERSION}; re-run `python compact.py` on the snapshot")
    try:
        if version == 1:
            manifest, state = _upgrade_v1(manifest, state)
        model = CompactResNet(manifest)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0][:200]}); re-run "
                        "`python compact.py` on the snapshot") from e
    return model.eval()


@torch.no_grad()
def _upgrade_v1(manifest: dict, state: dict) -> tuple[dict, dict]:
    """Format 1 → 2: fold each BN into its conv (the padding correction ``pad_const`` came
    before the BN, so it is scaled too) and move the join's constants to the block."""
    state, new = dict(state), {}

    def fold(spec: dict, old: str, new_prefix: str) -> dict:
        g = lambda k: state.pop(f"{old}.{k}").double()  # noqa: E731
        w = g("conv.weight")
        bias = g("conv.bias") if spec["bias"] else torch.zeros(w.shape[0], dtype=torch.float64)
        state.pop(f"{old}.bn.num_batches_tracked", None)
        scale = g("bn.weight") / torch.sqrt(g("bn.running_var") + spec["eps"])
        new[f"{new_prefix}.conv.weight"] = w * scale.view(-1, 1, 1, 1)
        new[f"{new_prefix}.conv.bias"] = g("bn.bias") + scale * (bias - g("bn.running_mean"))
        if spec["pad_const"]:
            new[f"{new_prefix}.taps"] = g("pad_const") * scale.view(-1, 1, 1, 1)
        keys = ("in", "out", "kernel", "stride", "padding", "dilation", "bias")
        return {**{k: spec[k] for k in keys}, "border": bool(spec["pad_const"])}

    net = dict(manifest["net"])
    net["stem"] = fold(net["stem"], "stem", "stem")
    blocks = []
    for b, blk in enumerate(net["blocks"]):
        p, n = f"blocks.{b}", len(blk["convs"])
        convs = [fold(c, f"{p}.convs.{i}", f"{p}.first.{i}" if i < n - 1 else f"{p}.last")
                 for i, c in enumerate(blk["convs"])]
        ds = fold(blk["downsample"], f"{p}.downsample", f"{p}.downsample") \
            if blk["shortcut"] == "conv" else None
        for side in ("main", "short"):
            if f"{p}.join.{side}_index" in state:
                new[f"{p}.join.{side}_index"] = state.pop(f"{p}.join.{side}_index")
        if blk["join"]["const"]:
            new[f"{p}.const"] = state.pop(f"{p}.join.const")
        blocks.append({**blk, "convs": convs, "downsample": ds})
    net["blocks"] = blocks
    net["pool"] = "cifar" if str(manifest.get("arch", "")).startswith("resnet") else "adaptive"
    for k in ("classifier.weight", "classifier.bias"):
        new[k] = state.pop(k)
    if state:
        raise KeyError(f"unexpected entries {sorted(state)[:3]}")
    dtype = new["classifier.weight"].dtype
    return {**manifest, "net": net}, {k: v.to(dtype) if v.is_floating_point() else v
                                      for k, v in new.items()}


@torch.no_grad()
def count_flops_params(model: nn.Module, input_shape) -> tuple[int, int]:
    """(FLOPs, parameters) for one forward at ``input_shape`` (N, C, H, W), in eval mode.

    FLOPs are multiply-accumulates of convs and linear layers (FlopCounterMode's count / 2),
    the unit of FPGM's tables. The compact network's constant maps are cached by a warm-up
    forward and not counted. Its parameters are counted as the dense network counts its own:
    each folded conv as conv + BN (γ and β per kept filter), so the two counts compare
    layer for layer (folding BN is a deployment detail either network could have).
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(tuple(input_shape), dtype=p.dtype, device=p.device)
    try:
        model(x)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2, _architecture_params(model)


def _architecture_params(model: nn.Module) -> int:
    if not isinstance(model, CompactResNet):
        return sum(q.numel() for q in model.parameters())
    total = 0
    for m in model.modules():
        if isinstance(m, FoldedConv):  # weight, the source conv's bias if any, BN's γ and β
            total += m.conv.weight.numel() + m.conv.out_channels * (2 + m.source_bias)
    return total + sum(q.numel() for q in model.classifier.parameters())


@torch.no_grad()
def max_rel_error(reference: nn.Module, model: nn.Module, input_shape, batch: int = 4) -> float:
    """max |model − reference| / max |reference| on random inputs (seed 0), eval mode."""
    p = next(reference.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + tuple(input_shape)[1:], generator=gen).to(p.device, p.dtype)
    was = reference.training, model.training
    reference.eval(), model.eval()
    try:
        ref = reference(x)
        return ((model(x) - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
    finally:
        reference.train(was[0]), model.train(was[1])


def compaction_figures(model: nn.Module, compact: nn.Module, input_shape, arch: str,
                       keep_ratio: float, nominal_keep_ratio: float | None = None) -> dict:
    """The figures of a compaction, under the keys of summary.json's ``compact`` block.

    ``input_shape``: (N, C, H, W) for counting; ``keep_ratio``: the fraction of filters kept,
    ``nominal_keep_ratio``: the one asked for (1 − the run's pruning rates), for FPGM's analytic
    FLOPs reduction at each (None where FPGM has no formula for ``arch``).
    """
    flops_d, params_d = count_flops_params(model, input_shape)
    flops_c, params_c = count_flops_params(compact, input_shape)

    def analytic(p):
        try:
            return fpgm_flops_reduction(arch, p)
        except UserError:
            return None

    fig = {"flops_unit": "multiply-accumulates", "flops_dense": flops_d, "flops": flops_c,
           "flops_reduction": 1 - flops_c / flops_d, "params_dense": params_d,
           "params": params_c, "params_reduction": 1 - params_c / params_d,
           "keep_ratio": keep_ratio, "fpgm_analytic_flops_reduction": analytic(keep_ratio)}
    if nominal_keep_ratio is not None:
        fig["keep_ratio_nominal"] = nominal_keep_ratio
        fig["fpgm_analytic_flops_reduction_nominal"] = analytic(nominal_keep_ratio)
    fig["max_rel_error"] = max_rel_error(unwrap(model), compact, input_shape)
    return fig


# -- snapshots and exports --------------------------------------------------------------------
def _load_checkpoint(path) -> tuple[Path, dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a snapshot directory or its checkpoint.pt")
    ckpt = safe_load(str(path))
    missing = [k for k in ("arch", "num_classes", "in_channels", "model", "mask")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or "selected" not in ckpt["mask"]:
        raise UserError(f"{path} lacks {missing or ['mask.selected']}: it is not an FSDP training "
                        "checkpoint; pass the checkpoint.pt of a finished run")
    return path, ckpt


def _keep_ratio(model: nn.Module, selected: dict) -> float:
    modules = dict(model.named_modules())
    total = sum(modules[n].out_channels for n in selected if n in modules)
    pruned = sum(len(v) for v in selected.values())
    return 1 - pruned / total if total else 1.0


@torch.no_grad()
def compact_checkpoint(ckpt_path, out_path=None, input_size: int | None = None,
                       keep_ratio: float | None = None) -> dict:
    """Compact a training checkpoint (or snapshot directory), save it, and return the figures.

    ``out_path`` defaults to ``model_compact.pt`` next to the checkpoint; ``keep_ratio`` (for
    FPGM's analytic reduction) to the fraction of filters the mask keeps; the nominal one comes
    from the checkpoint's pruning rates. The figures are ``compaction_figures``' (summary.json's
    keys) plus ``arch``, ``checkpoint``, ``compact_path`` and ``input_shape`` (C, H, W: square
    ``input_size``, else the run's, else 32 for the CIFAR ResNets and 224 for the others).
    """
    path, ckpt = _load_checkpoint(ckpt_path)
    try:
        dense = build_model(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt["in_channels"]))
        dense.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit arch {ckpt['arch']!r} "
                        f"({str(e).splitlines()[0]}); pass an unmodified checkpoint") from e
    dense.eval()
    selected = ckpt["mask"]["selected"]
    compact = compact_model(dense, selected)
    out_path = Path(out_path) if out_path else path.parent / "model_compact.pt"
    save_compact(compact, out_path)

    if input_size:
        shape = (1, int(ckpt["in_channels"]), input_size, input_size)
    elif isinstance(ckpt.get("input_shape"), (list, tuple)) and len(ckpt["input_shape"]) == 3:
        shape = (1, *map(int, ckpt["input_shape"]))  # what the run's data gave the model
    else:
        size = 32 if isinstance(dense, CifarResNet) else 224
        shape = (1, int(ckpt["in_channels"]), size, size)
    p = keep_ratio if keep_ratio is not None else _keep_ratio(dense, selected)
    fig = compaction_figures(dense, compact, shape, ckpt["arch"], p, _nominal(ckpt))
    return {"arch": ckpt["arch"], "checkpoint": str(path), "compact_path": str(out_path),
            "input_shape": list(shape[1:]), **fig}


def _nominal(ckpt: dict) -> float | None:
    """1 − the run's pruning rates (CS, norm, GM), when the checkpoint names them."""
    args = ckpt.get("args")
    try:
        rates = [args["prune_rate_cs"], args.get("prune_rate_norm"), args["prune_rate_gm"]]
        return 1 - sum(float(r) for r in rates if r is not None)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def export_torchscript(model: nn.Module, path, input_shape) -> None:
    """Trace ``model`` (eval mode) and save it; ``torch.jit.load`` needs none of our code."""
    p = next(model.parameters())
    x = torch.randn(tuple(input_shape), dtype=p.dtype, device=p.device)
    with torch.no_grad(), warnings.catch_warnings():
        # torch ≥ 2.9 flags TorchScript as deprecated on every call; it was asked for explicitly
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(model.eval(), x)
        torch.jit.save(traced, str(path))


def check_onnx_exporter() -> None:
    """Raise UserError unless torch's ONNX exporter can run (it needs onnx and onnxscript)."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: "
                        f"pip install {' '.join(missing)}")


def export_onnx(model: nn.Module, path, input_shape) -> None:
    """Export to one ONNX file (batch size dynamic) with torch's exporter."""
    check_onnx_exporter()
    p = next(model.parameters())
    x = torch.randn(tuple(input_shape), dtype=p.dtype, device=p.device)
    batch = torch.export.Dim("batch")
    torch.onnx.export(model.eval(), (x,), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                      external_data=False, verbose=False)
