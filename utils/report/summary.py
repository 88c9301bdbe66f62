"""summary.json's content: what a finished run reports (README: What a run leaves)."""
from ..method.criteria import registry


def zero_filters(convs) -> dict[str, int]:
    return {c.name: int((c.conv.weight.detach().flatten(1).abs().sum(1) == 0).sum())
            for c in convs}


def run_summary(args, pruning, mask, history: list[dict], dense_cost, wall: float) -> dict:
    """The method and its rates, the final (fully pruned) figures — the numbers to report —,
    the best epoch for reference, costs and per-layer counts."""
    last = history[-1]
    best = max(history, key=lambda r: r["test_top1"])
    flops_d, params_d = dense_cost
    return {
        "method": pruning.method.name, "attenuate": pruning.method.attenuate,
        "arch": args.arch, "dataset": args.dataset, "epochs": pruning.epochs,
        **{f"prune_rate_{c}": pruning.rates.get(c, 0.0) for c in registry()},
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
        "filters_selected": mask.total_selected(), "filters_total": mask.total_filters(),
        "selected_per_layer": mask.selected_counts(), "zero_filters_per_layer":
            zero_filters(mask.convs),
        "wall_seconds": round(wall, 1), "seed": args.manualSeed,
    }
