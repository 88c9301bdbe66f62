"""The figures of a compaction, for ``compact.py`` and the end of a training run alike."""
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import safe_load
from ..method.graph import unwrap
from .cost import compact_cost, network_cost
from .fpgm import fpgm_flops_reduction
from .network import compact_model
from .storage import save_compact
from .tracing import ModelGraph


@torch.no_grad()
def max_rel_error(reference: nn.Module, model: nn.Module, input_shape, batch: int = 4) -> float:
    """max |model − reference| / max |reference| on random inputs (seed 0), eval mode."""
    p = next(reference.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + tuple(input_shape)[-3:], generator=gen).to(p.device, p.dtype)
    was = reference.training, model.training
    reference.eval(), model.eval()
    try:
        ref = reference(x)
        return ((model(x) - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()
    finally:
        reference.train(was[0]), model.train(was[1])


def compaction_figures(model, compact: nn.Module, input_shape, arch: str,
                       keep_ratio: float, nominal_keep_ratio: float | None = None) -> dict:
    """The figures of a compaction, under the keys of summary.json's ``compact`` block.

    ``input_shape``: (N, C, H, W) or (C, H, W) for counting; ``keep_ratio``: the fraction of
    filters kept, ``nominal_keep_ratio``: the one asked for (1 − the run's pruning rates), for
    FPGM's analytic FLOPs reduction at each (None where FPGM has no formula for ``arch``).
    ``model``: the soft-pruned network, or its ``ModelGraph`` (the dense count walks it).
    """
    shape = tuple(input_shape)[-3:]
    flops_d, params_d = network_cost(model if isinstance(model, ModelGraph) else unwrap(model),
                                     shape)
    model = model.model if isinstance(model, ModelGraph) else unwrap(model)
    flops_c, params_c = compact_cost(compact, shape)

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
    fig["max_rel_error"] = max_rel_error(model, compact, shape)
    return fig


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


def kept_fraction(model: nn.Module, selected: dict) -> float:
    """The fraction of the prunable convs' filters a mask keeps."""
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
    ``input_size``, else the run's).
    """
    path, ckpt = _load_checkpoint(ckpt_path)
    try:
        dense = _build_model()(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt["in_channels"]))
        dense.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit arch {ckpt['arch']!r} "
                        f"({str(e).splitlines()[0]}); pass an unmodified checkpoint") from e
    dense.eval()
    shape = _input_shape(ckpt, input_size, path)
    selected = ckpt["mask"]["selected"]
    compact = compact_model(dense, selected, input_shape=shape, arch=ckpt["arch"])
    out_path = Path(out_path) if out_path else path.parent / "model_compact.pt"
    save_compact(compact, out_path)
    p = keep_ratio if keep_ratio is not None else kept_fraction(dense, selected)
    fig = compaction_figures(dense, compact, shape, ckpt["arch"], p, _nominal(ckpt))
    return {"arch": ckpt["arch"], "checkpoint": str(path), "compact_path": str(out_path),
            "input_shape": list(shape), **fig}


def _build_model():
    """The checkout's ``models.build_model``: a checkpoint names its network by the arch of
    this repository's model zoo, which the installed package does not ship (imported here, not
    at the top, so that ``fsdp_pruning.compaction`` needs no file of the checkout)."""
    try:
        from models import build_model
    except ModuleNotFoundError as e:
        if e.name != "models":
            raise
        raise UserError("compact_checkpoint rebuilds the run's network with this repository's "
                        "models/: run `python compact.py SNAPSHOT` in the checkout, or build the "
                        "model yourself and call compact_model") from None
    return build_model


def _input_shape(ckpt: dict, input_size: int | None, path) -> tuple:
    channels = int(ckpt["in_channels"])
    if input_size:
        return channels, input_size, input_size
    if isinstance(ckpt.get("input_shape"), (list, tuple)) and len(ckpt["input_shape"]) == 3:
        return tuple(int(s) for s in ckpt["input_shape"])  # what the run's data gave the model
    raise UserError(f"{path} does not say the run's input size; pass --input_size")


def _nominal(ckpt: dict) -> float | None:
    """1 − the run's pruning rates (CS, norm, GM), when the checkpoint names them."""
    args = ckpt.get("args")
    try:
        rates = [args["prune_rate_cs"], args.get("prune_rate_norm"), args["prune_rate_gm"]]
        return 1 - sum(float(r) for r in rates if r is not None)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
