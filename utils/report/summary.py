"""summary.json's content: what a finished run reports (docs/runs.md)."""
from ..method.criteria import registry


def zero_filters(convs) -> dict[str, int]:
    return {c.name: int((c.conv.weight.detach().flatten(1).abs().sum(1) == 0).sum())
            for c in convs}


def final_rates(pruning, pruner) -> dict[str, float]:
    """Each criterion's rate: the run's; under a target, the share of the counted filters
    it selected in the end (a layer's own count is in ``kept_per_layer``)."""
    if pruning.target is None:
        return {c: pruning.rates.get(c, 0.0) for c in registry()}
    return {**{c: 0.0 for c in registry()}, **pruner.selected_shares()}


def budget(pruning, last: dict, dense_cost) -> dict:
    """The target and what the final selection's compact network keeps of the dense count."""
    t = pruning.target
    if t is None:
        return {}
    reached = last[f"{t.kind}_eff"] / dense_cost[t.index]
    return {"target": {"kind": t.kind, "fraction": t.fraction, "allocation": t.allocation,
                       "reached": reached}}


def run_summary(args, pruning, pruner, history: list[dict], dense_cost, wall: float) -> dict:
    """The method and its rates, the final (fully pruned) figures — the numbers to report —,
    the best epoch for reference, costs and per-layer counts."""
    last = history[-1]
    best = max(history, key=lambda r: r["test_top1"])
    flops_d, params_d = dense_cost
    return {
        "method": pruning.method.name, "attenuate": pruning.method.attenuate,
        "arch": args.arch, "dataset": args.dataset, "epochs": pruning.epochs,
        **{f"prune_rate_{c}": v for c, v in final_rates(pruning, pruner).items()},
        **budget(pruning, last, dense_cost),
        "round_to": args.round_to,
        "final_top1": last["test_top1"], "final_top5": last["test_top5"],
        "final_loss": last["test_loss"],
        "best_top1_unpruned_note": "best epoch of a network not yet fully pruned; "
                                   "report final_top1",
        "best_top1": best["test_top1"], "best_epoch": best["epoch"],
        "flops_dense": flops_d, "flops_pruned": last["flops_eff"],
        "flops_reduction": 1 - last["flops_eff"] / flops_d,
        "params_dense": params_d, "params_pruned": last["params_eff"],
        "params_reduction": 1 - last["params_eff"] / params_d,
        "filters_selected": pruner.total_selected(), "filters_total": pruner.total_filters(),
        "selected_per_layer": pruner.selected_counts(), "zero_filters_per_layer":
            zero_filters(pruner.convs),
        "kept_per_layer": {c.name: c.filters - n for c, n in
                           zip(pruner.convs, pruner.selected_counts().values())},
        "wall_seconds": round(wall, 1), "seed": args.manualSeed,
    }
