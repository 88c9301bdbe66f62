"""The figures of a compaction, for ``compact.py`` and the end of a training run alike: the
keys of summary.json's ``compact`` block."""
from torch import nn

from ..compaction import ModelGraph, compact_cost, max_rel_error, network_cost
from ..errors import UserError
from ..method.criteria import registry
from ..method.graph import unwrap
from .fpgm import fpgm_flops_reduction


def compaction_figures(model, compact: nn.Module, input_shape, arch: str,
                       keep_ratio: float, nominal_keep_ratio: float | None = None) -> dict:
    """The figures of a compaction, under the keys of summary.json's ``compact`` block.

    ``input_shape``: (N, C, H, W) or (C, H, W) for counting; ``keep_ratio``: the fraction of
    filters kept, ``nominal_keep_ratio``: the one asked for (1 − the run's pruning rates), for
    FPGM's analytic FLOPs reduction at each (None where FPGM has no formula for ``arch``).
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


def kept_fraction(model: nn.Module, selected: dict) -> float:
    """The fraction of the prunable convs' filters a mask keeps."""
    modules = dict(model.named_modules())
    total = sum(modules[n].out_channels for n in selected if n in modules)
    pruned = sum(len(v) for v in selected.values())
    return 1 - pruned / total if total else 1.0


def asked_keep_ratio(rates: dict, keep_ratio: float, target: bool) -> float:
    """The keep ratio a run asked for: 1 − the sum of its rates ({criterion: share}, every
    registered criterion's), or under a target (whose rates only split each layer's count) the
    ratio its plan keeps."""
    if target:
        return keep_ratio
    return 1 - sum(float(rates.get(c) or 0.0) for c in registry())
