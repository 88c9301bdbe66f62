"""comparison.md: the measured groups (mean ± sample std over seeds), then every run."""
from ..method.criteria import registry

PERCENT_KEYS = ("flops_reduction", "params_reduction", "fpgm_analytic_flops_reduction")


def fmt(key: str, v) -> str:
    if v is None or v == "":
        return "–"
    if key in PERCENT_KEYS:
        return f"{100 * v:.1f}%"
    if key == "drop_vs_dense":
        return f"{v:+.2f}"
    if key in ("top1", "top5"):
        return f"{v:.2f}"
    if key.startswith("rate_"):
        return f"{v:g}"
    if key.startswith("wall_seconds"):
        return f"{v / 60:.1f} min"
    return str(v)


def _rates(r: dict) -> str:
    """``cs 0.1 + gm 0.4``: the criteria in use by name, so a new criterion adds no column; a
    budget run: its target and allocation, then the shares of the filters it selected."""
    if r.get("target"):
        used = [f"{k} {r[f'rate_{k}']:.3g}" for k in registry() if r[f"rate_{k}"]]
        return f"{r['target']} {r['allocation']}: " + " + ".join(used)
    used = [f"{k} {fmt('rate_', r[f'rate_{k}'])}" for k in registry() if r[f"rate_{k}"]]
    return " + ".join(used) or "0 (dense)"


def equal_cost_lines(table: list[dict]) -> list[str]:
    """The group rows by cost group, per arch and dataset, and a warning where the rows of
    one network differ in FLOPs reduction by more than 1 point."""
    nets: dict[tuple, dict[str, list[dict]]] = {}
    for r in table:
        if r.get("cost_group"):
            nets.setdefault((r["arch"], r["dataset"]), {}).setdefault(r["cost_group"], []).append(r)
    lines = []
    for (arch, dataset), groups in nets.items():
        for label, rows in sorted(groups.items()):
            span = sorted(fmt("flops_reduction", r["flops_reduction"]) for r in rows)
            reduction = span[0] if span[0] == span[-1] else f"{span[0]} to {span[-1]}"
            members = ", ".join(f"{r['group']} ({r['method']}, {_mean_std(r, 'top1')})"
                                for r in rows)
            lines.append(f"- {arch}, {dataset}, cost group {label} (FLOPs −{reduction}): "
                         f"{members}")
        reductions = [r["flops_reduction"] for rows in groups.values() for r in rows]
        if len(groups) > 1:
            lines.append(f"- **{arch}, {dataset}: the rows differ in FLOPs reduction by up to "
                         f"{100 * (max(reductions) - min(reductions)):.1f} points**: an accuracy "
                         "gap between cost groups mixes the method with the budget; compare "
                         "within a group, or prune to one budget (--target_flops)")
    return lines


def _mean_std(r: dict, key: str) -> str:
    mean, std = r[f"{key}_mean"], r[f"{key}_std"]
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _cost(r: dict, key: str) -> str:
    return fmt(key, r[key]) + (" (differs between runs; mean)" if r["cost_varies"] else "")


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def markdown(table: list[dict], per_run: list[dict]) -> str:
    rates = "rates"
    head = ["runs", "method", "attenuate", "arch", "dataset", rates, "epochs", "n",
            "top-1", "top-5", "drop vs dense", "FLOPs −", "params −", "FPGM analytic FLOPs −",
            "cost group", "wall per run", "other flags"]
    groups = [[r["group"], r["method"], r["attenuate"], r["arch"], r["dataset"], _rates(r),
               fmt("epochs", r["epochs"]), str(r["n"]), _mean_std(r, "top1"),
               _mean_std(r, "top5"), fmt("drop_vs_dense", r["drop_vs_dense"]),
               *(_cost(r, k) for k in PERCENT_KEYS), r["cost_group"] or "–",
               fmt("wall_seconds", r["wall_seconds_mean"]), r["other_flags"] or "–"]
              for r in table]
    run_head = ["run", "seed", "method", "attenuate", "arch", "dataset", rates,
                "epochs", "top-1", "top-5", "drop vs dense", "FLOPs −", "params −",
                "FPGM analytic FLOPs −", "wall"]
    runs = [[r["run"], str(r["seed"]), r["method"], r["attenuate"], r["arch"], r["dataset"],
             _rates(r), fmt("epochs", r["epochs"])]
            + [fmt(k, r[k]) for k in ("top1", "top5", "drop_vs_dense", *PERCENT_KEYS,
                                      "wall_seconds")] for r in per_run]
    lines = ["# Comparison of finished runs", "",
             "## Measured: one row per configuration, its seeds as mean ± sample std", "",
             *md_table(head, groups), "",
             "top-1/top-5: the final, fully pruned network (what the papers report), mean ± "
             "sample standard deviation over the n runs (seeds) of the row; one run: no ±. "
             "drop vs dense: the dense row's mean top-1 minus this row's (same arch and "
             "dataset). FLOPs −/params −: measured on the compact network (model_compact.pt) "
             "against the dense one; FPGM analytic: FPGM's formula at the kept ratio, to "
             "compare with published tables. attenuate: the run's --attenuate (weights for "
             "runs made before that flag). rates: a budget run (--target_flops/"
             "--target_params) gives its target and allocation, then the share of the filters "
             "each criterion selected. cost group: rows of one arch and dataset within 1 point "
             "of FLOPs reduction of each other (A the least reduced). other flags: flags that "
             "differ between rows and have no column.", "",
             "## At equal cost: the rows by FLOPs reduction", "",
             *(equal_cost_lines(table) or ["- no pruned row with a compact network"]), "",
             "## Measured: one row per run", "", *md_table(run_head, runs), ""]
    return "\n".join(lines)
