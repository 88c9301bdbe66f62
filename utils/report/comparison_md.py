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
    """``cs 0.1 + gm 0.4``: the criteria in use by name, so a new criterion adds no column."""
    used = [f"{k} {fmt('rate_', r[f'rate_{k}'])}" for k in registry() if r[f"rate_{k}"]]
    return " + ".join(used) or "0 (dense)"


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
            "wall per run", "other flags"]
    groups = [[r["group"], r["method"], r["attenuate"], r["arch"], r["dataset"], _rates(r),
               fmt("epochs", r["epochs"]), str(r["n"]), _mean_std(r, "top1"),
               _mean_std(r, "top5"), fmt("drop_vs_dense", r["drop_vs_dense"]),
               *(_cost(r, k) for k in PERCENT_KEYS), fmt("wall_seconds", r["wall_seconds_mean"]),
               r["other_flags"] or "–"] for r in table]
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
             "runs made before that flag). other flags: flags that differ between rows "
             "and have no column.", "",
             "## Measured: one row per run", "", *md_table(run_head, runs), ""]
    return "\n".join(lines)
