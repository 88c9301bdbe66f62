"""The compact network of a run's checkpoint (``compact.py``): the dense network rebuilt from
the checkout's models, its final mask applied for real, saved next to the checkpoint, and the
figures a run reports."""
from pathlib import Path

import torch

from models import build_model

from ..compaction import compact_model, export_pt2, save_compact
from ..errors import UserError
from ..report.figures import asked_keep_ratio, compaction_figures, kept_fraction
from .checkpoint import read_for_compaction


@torch.no_grad()
def compact_checkpoint(ckpt_path, out_path=None, input_size: int | None = None,
                       keep_ratio: float | None = None, allow_unfinished: bool = False) -> dict:
    """Compact a training checkpoint (or snapshot directory), save it, and return the figures.

    ``out_path`` defaults to ``model_compact.pt`` next to the checkpoint (a network that keeps
    parts of the dense one whole: a torch.export program, the same path with ``.pt2``, as a
    model_compact.pt holds no code); ``keep_ratio`` (for
    FPGM's analytic reduction) to the fraction of filters the mask keeps; the nominal one comes
    from the checkpoint's pruning rates. The figures are ``compaction_figures``' (summary.json's
    keys) plus ``arch``, ``checkpoint``, ``compact_path`` and ``input_shape`` (C, H, W: square
    ``input_size``, else the run's). A run that has not finished is refused unless
    ``allow_unfinished`` (its mask's selected filters are not zero yet). ``kept_whole``: the
    parts kept whole (``ModelGraph.parts``).
    """
    path, ckpt = read_for_compaction(ckpt_path, allow_unfinished)
    try:
        dense = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"])
        dense.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit arch {ckpt['arch']!r} "
                        f"({str(e).splitlines()[0][:200]}); pass an unmodified checkpoint") from e
    dense.eval()
    shape = (ckpt["in_channels"], input_size, input_size) if input_size else ckpt["input_shape"]
    selected = ckpt["mask"]["selected"]
    compact = compact_model(dense, selected, input_shape=shape, arch=ckpt["arch"])
    out_path = Path(out_path) if out_path else path.parent / "model_compact.pt"
    if compact.holds():
        out_path = out_path.with_suffix(".pt2")
        export_pt2(compact, out_path, (1, *shape))
    else:
        save_compact(compact, out_path)
    kept = kept_fraction(dense, selected)
    args = ckpt.get("args") or {}
    rates = {k.removeprefix("prune_rate_"): v for k, v in args.items()
             if k.startswith("prune_rate_")}
    target = any(args.get(k) is not None for k in ("target_flops", "target_params"))
    fig = compaction_figures(dense, compact, shape, ckpt["arch"],
                             keep_ratio if keep_ratio is not None else kept,
                             asked_keep_ratio(rates, kept, target) if rates else None)
    return {"arch": ckpt["arch"], "checkpoint": str(path), "compact_path": str(out_path),
            "input_shape": list(shape), "kept_whole": compact.kept_whole, **fig}
