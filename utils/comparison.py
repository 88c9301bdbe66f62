"""The comparison report over finished runs: comparison.md, comparison.csv, comparison.png."""
import csv
import io
import json
import os
from dataclasses import dataclass

from .checkpoint import atomic_write
from .errors import UserError

COLUMNS = ["run", "method", "arch", "dataset", "rate_cs", "rate_norm", "rate_gm", "rate_total",
           "epochs", "top1", "top5", "drop_vs_dense", "flops_reduction", "params_reduction",
           "fpgm_analytic_flops_reduction", "wall_seconds"]


@dataclass
class Run:
    folder: str
    summary: dict
    curve: list[tuple[int, float]]  # (epoch, test top-1)
    refreshed: list[tuple[int, float]]  # the same with BN re-estimated (--eval_bn_refresh)

    @property
    def rates(self) -> dict:
        return {k: float(self.summary.get(f"prune_rate_{k}", 0.0) or 0.0)
                for k in ("cs", "norm", "gm")}

    @property
    def dense(self) -> bool:
        return sum(self.rates.values()) == 0

    @property
    def label(self) -> str:
        return "dense" if self.dense else self.summary.get("method", "fsdp")


def load_run(folder: str) -> Run | None:
    """A finished run (summary.json and metrics.csv written at its end), or None."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(folder, "metrics.csv")) as f:
            metrics = list(csv.DictReader(f))
        curve = [(int(r["epoch"]), float(r["test_top1"])) for r in metrics]
        refreshed = [(int(r["epoch"]), float(r["test_top1_refreshed"])) for r in metrics
                     if r.get("test_top1_refreshed")]
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(summary, dict) or "final_top1" not in summary:
        return None
    return Run(folder, summary, curve, refreshed)


def _dense_for(run: Run, runs: list[Run]) -> Run | None:
    """The dense run of the same arch and dataset, preferring the same number of epochs."""
    same = [r for r in runs if r.dense and r.summary.get("arch") == run.summary.get("arch")
            and r.summary.get("dataset") == run.summary.get("dataset")]
    same.sort(key=lambda r: r.summary.get("epochs") != run.summary.get("epochs"))
    return same[0] if same else None


def rows(runs: list[Run]) -> list[dict]:
    out = []
    for run in runs:
        s, compact = run.summary, run.summary.get("compact") or {}
        dense = _dense_for(run, runs)
        out.append({
            "run": os.path.basename(os.path.normpath(run.folder)), "method": run.label,
            "arch": s.get("arch"), "dataset": s.get("dataset"),
            **{f"rate_{k}": v for k, v in run.rates.items()},
            "rate_total": round(sum(run.rates.values()), 6), "epochs": s.get("epochs"),
            "top1": s["final_top1"], "top5": s.get("final_top5"),
            "drop_vs_dense": (dense.summary["final_top1"] - s["final_top1"]
                              if dense is not None and not run.dense else None),
            "flops_reduction": compact.get("flops_reduction"),
            "params_reduction": compact.get("params_reduction"),
            "fpgm_analytic_flops_reduction": compact.get("fpgm_analytic_flops_reduction"),
            "wall_seconds": s.get("wall_seconds")})
    return out


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key in ("flops_reduction", "params_reduction", "fpgm_analytic_flops_reduction"):
        return f"{100 * v:.1f}%"
    if key in ("top1", "top5", "drop_vs_dense"):
        return f"{v:+.2f}" if key == "drop_vs_dense" else f"{v:.2f}"
    if key.startswith("rate_"):
        return f"{v:g}"
    if key == "wall_seconds":
        return f"{v / 60:.1f} min"
    return str(v)


def markdown(table: list[dict]) -> str:
    head = ["run", "method", "arch", "dataset", "rates cs/norm/gm", "epochs", "top-1", "top-5",
            "drop vs dense", "FLOPs −", "params −", "FPGM analytic FLOPs −", "wall"]
    lines = ["# Comparison of finished runs", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["run"], r["method"], r["arch"], r["dataset"],
                 "/".join(_fmt("rate_", r[f"rate_{k}"]) for k in ("cs", "norm", "gm")),
                 _fmt("epochs", r["epochs"])] + [_fmt(k, r[k]) for k in (
                     "top1", "top5", "drop_vs_dense", "flops_reduction", "params_reduction",
                     "fpgm_analytic_flops_reduction", "wall_seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "top-1/top-5: the final, fully pruned network (what the papers report). "
              "drop vs dense: the dense run's top-1 minus this run's (same arch and dataset). "
              "FLOPs −/params −: measured on the compact network (model_compact.pt) against "
              "the dense one; FPGM analytic: FPGM's formula at the kept ratio, to compare with "
              "published tables.", ""]
    return "\n".join(lines)


def write_report(runs: list[Run], out: str) -> list[dict]:
    from .plots import plot_comparison  # matplotlib only when a report is written

    if not runs:
        raise UserError("no finished run to compare; give snapshot folders that hold a "
                        "summary.json (runs that reached their last epoch)")
    os.makedirs(out, exist_ok=True)
    table = rows(runs)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    w.writerows(table)
    atomic_write(os.path.join(out, "comparison.csv"), lambda f: f.write(buf.getvalue().encode()))
    atomic_write(os.path.join(out, "comparison.md"),
                 lambda f: f.write(markdown(table).encode()))
    plot_comparison(runs, table, os.path.join(out, "comparison.png"))
    return table
