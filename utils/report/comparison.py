"""The comparison report over finished runs: comparison.md, comparison.csv (one row per run),
comparison_groups.csv (one row per configuration: its seeds as mean ± std) and comparison.png.

Runs that differ only in their seed and in flags that say where and how they ran (folder,
device, workers …) form one group. The published figures that match a group are shown in a
block of their own (``utils.report.published``), never mixed with the measured rows.
"""
import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field

from ..errors import UserError
from ..files import atomic_write
from ..method.criteria import registry
from ..method.methods import METHODS
from .comparison_md import markdown
from . import config
from .logger import read_json, read_metrics
from .published import load_quoted, match_quoted, published_markdown

# flags that say where and how a run executed, not what it computed
COST_KEYS = ("flops_reduction", "params_reduction", "fpgm_analytic_flops_reduction")


def rate_keys() -> tuple[str, ...]:
    """Every criterion's rate (``--prune_rate_<name>``), in the criteria's order."""
    return tuple(registry())


def _shown_flags() -> set:
    """Flags shown in columns of their own (the rest appear under "other flags" when they
    differ)."""
    return set(config.shown())


def columns() -> list[str]:
    """comparison.csv: one row per run."""
    return ["run", "group", "seed", "method", "attenuate", "arch", "dataset",
            *(f"rate_{k}" for k in rate_keys()), "rate_total", "target", "allocation", "epochs",
            "top1", "top5", "drop_vs_dense", *COST_KEYS, "wall_seconds"]


def group_columns() -> list[str]:
    """comparison_groups.csv: one row per configuration, its seeds as mean ± std."""
    return ["group", "n", "seeds", "method", "attenuate", "arch", "dataset",
            *(f"rate_{k}" for k in rate_keys()), "rate_total", "target", "allocation", "epochs",
            "top1_mean", "top1_std", "top5_mean", "top5_std", "drop_vs_dense", *COST_KEYS,
            "cost_varies", "cost_group", "wall_seconds_mean", "other_flags", "runs"]


@dataclass
class Run:
    folder: str
    summary: dict
    curve: list[tuple[int, float]]  # (epoch, test top-1)
    refreshed: list[tuple[int, float]]  # the same with BN re-estimated (--eval_bn_refresh)
    args: dict = field(default_factory=dict)  # args.json ({} when absent)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.folder))

    @property
    def rates(self) -> dict:
        return {k: float(self.summary.get(f"prune_rate_{k}", 0.0) or 0.0) for k in rate_keys()}

    @property
    def dense(self) -> bool:
        return sum(self.rates.values()) == 0

    @property
    def label(self) -> str:
        return "dense" if self.dense else self.summary.get("method", "fsdp")

    @property
    def attenuate(self) -> str:
        """--attenuate; runs made before the flag had its default (weights)."""
        return (self.summary.get("attenuate") or self.args.get("attenuate")
                or config.added_defaults()["attenuate"])

    @property
    def seed(self):
        return self.summary.get("seed", self.args.get("manualSeed"))

    @property
    def target(self) -> dict:
        """A budget run's target (summary.json's ``target``: kind, fraction, allocation,
        reached); {} for a run pruned at rates."""
        return self.summary.get("target") or {}

    def flags(self) -> dict:
        """What the run computed: every flag but the seed and the run-control ones. A budget
        run's rates are what its seed's selection gave (a global allocation's differ between
        seeds): the group is its flags, the target and the given split."""
        control = config.run_control()
        out = {**config.added_defaults(), **{k: v for k, v in self.args.items()
                                             if k not in control and k != "manualSeed"}}
        s = self.summary
        out.update(method=s.get("method"), arch=s.get("arch"), dataset=s.get("dataset"),
                   epochs=s.get("epochs"), attenuate=self.attenuate)
        if not self.target:
            out.update({f"prune_rate_{k}": v for k, v in self.rates.items()})
        return out


def load_run(folder: str) -> Run | None:
    """A finished run (summary.json and metrics.csv written at its end), or None; a
    summary.json the report cannot read (not JSON, or a value of another kind than a run
    writes there) is a UserError naming the file."""
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path):
        return None
    summary = read_json(folder, "summary.json")
    if summary is None:
        raise UserError(f"{path} is not a JSON object (damaged, or not written by a run); "
                        "restore it, or leave the folder out")
    if "final_top1" not in summary:
        return None
    check_summary(summary, path)
    try:
        metrics = read_metrics(folder)
        curve = [(int(r["epoch"]), float(r["test_top1"])) for r in metrics]
        refreshed = [(int(r["epoch"]), float(r["test_top1_refreshed"])) for r in metrics
                     if r.get("test_top1_refreshed")]
    except (OSError, ValueError, KeyError):
        return None
    return Run(folder, summary, curve, refreshed, read_json(folder, "args.json") or {})


@dataclass
class Group:
    """Runs of one configuration, differing only in the seed (and where they ran)."""
    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def name(self) -> str:
        return group_name([r.name for r in self.runs])

    def values(self, key: str) -> list:
        return [_run_value(r, key) for r in self.runs]

    def mean_std(self, key: str) -> tuple[float | None, float | None]:
        """The mean and the sample standard deviation (None for one run)."""
        values = [v for v in self.values(key) if v is not None]
        if not values:
            return None, None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


_SUMMARY_KEYS = {"top1": "final_top1", "top5": "final_top5"}


def _run_value(run: Run, key: str):
    if key in COST_KEYS:
        return (run.summary.get("compact") or {}).get(key)
    return run.summary.get(_SUMMARY_KEYS.get(key, key))


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in the order of their first run."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = json.dumps(run.flags(), sort_keys=True, default=str)
        groups.setdefault(key, Group([])).runs.append(run)
    return list(groups.values())


def group_name(names: list[str]) -> str:
    """``resnet56-fsdp-s1``, ``-s2``, ``-s3`` → ``resnet56-fsdp-s{1,2,3}``."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[len(prefix):][::-1] for n in names])[::-1]
    # never split a number: s1 and s10 are seeds 1 and 10, not "s1" and "0"
    while prefix and prefix[-1].isdigit():
        prefix = prefix[:-1]
    while suffix and suffix[0].isdigit():
        suffix = suffix[1:]
    middles = [n[len(prefix):len(n) - len(suffix)] for n in names]
    return f"{prefix}{{{','.join(middles)}}}{suffix}"


def _dense_for(group: Group, groups: list[Group]) -> Group | None:
    """The dense group of the same arch and dataset, preferring the same number of epochs."""
    s = group.first.summary
    same = [g for g in groups if g.first.dense and g.first.summary.get("arch") == s.get("arch")
            and g.first.summary.get("dataset") == s.get("dataset")]
    same.sort(key=lambda g: g.first.summary.get("epochs") != s.get("epochs"))
    return same[0] if same else None


def _other_flags(groups: list[Group]) -> list[str]:
    """Per group, the flags not shown in a column whose values differ between groups."""
    flags = [_hidden_flags(g.first) for g in groups]
    keys = sorted({k for f in flags for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flags}) > 1]
    return [" ".join(f"{k}={f.get(k)}" for k in varying) for f in flags]


def _hidden_flags(run: Run) -> dict:
    shown = _shown_flags()
    flags = {k: v for k, v in run.flags().items() if k not in shown}
    method = METHODS.get(run.summary.get("method"))
    if method is not None and flags.get("tau") == method.tau:  # the method's own default
        flags.pop("tau", None)
    return flags


def _config(run: Run) -> dict:
    s, t = run.summary, run.target
    return {"method": run.label, "attenuate": run.attenuate, "arch": s.get("arch"),
            "dataset": s.get("dataset"),
            **{f"rate_{k}": round(v, 6) for k, v in run.rates.items()},
            "rate_total": round(sum(run.rates.values()), 6),
            "target": f"{t['kind']} {t['fraction']:g}" if t else "",
            "allocation": t.get("allocation", ""), "epochs": s.get("epochs")}


COST_POINT = 0.01  # rows closer in FLOPs reduction than this are at one cost


def cost_groups(table: list[dict]) -> list[str]:
    """Per group row, its cost group: the pruned rows of one arch and dataset, ordered by
    FLOPs reduction, in runs of at most 1 point from the run's first ("A", "B", … from the
    least reduced); "" for dense rows and rows without a compact network."""
    labels = [""] * len(table)
    by_net: dict[tuple, list[int]] = {}
    for i, r in enumerate(table):
        if r["method"] != "dense" and r["flops_reduction"] is not None:
            by_net.setdefault((r["arch"], r["dataset"]), []).append(i)
    for rows in by_net.values():
        rows.sort(key=lambda i: table[i]["flops_reduction"])
        start, letter = None, -1
        for i in rows:
            if start is None or table[i]["flops_reduction"] - start > COST_POINT:
                start, letter = table[i]["flops_reduction"], letter + 1
            labels[i] = chr(ord("A") + letter % 26) + ("" if letter < 26 else str(letter // 26))
    return labels


def group_rows(groups: list[Group]) -> list[dict]:
    out = []
    for group, other in zip(groups, _other_flags(groups)):
        dense = _dense_for(group, groups)
        top1, top1_std = group.mean_std("top1")
        top5, top5_std = group.mean_std("top5")
        costs = {k: group.mean_std(k)[0] for k in COST_KEYS}
        varies = any(len({v for v in group.values(k)}) > 1 for k in COST_KEYS)
        out.append({
            "group": group.name, "n": len(group.runs),
            "seeds": " ".join(str(r.seed) for r in group.runs), **_config(group.first),
            "top1_mean": top1, "top1_std": top1_std, "top5_mean": top5, "top5_std": top5_std,
            "drop_vs_dense": (dense.mean_std("top1")[0] - top1
                              if dense is not None and dense is not group else None),
            **costs, "cost_varies": "yes" if varies else "",
            "wall_seconds_mean": group.mean_std("wall_seconds")[0], "other_flags": other,
            "runs": " ".join(r.name for r in group.runs)})
    for row, label in zip(out, cost_groups(out)):
        row["cost_group"] = label
    return out


def run_rows(groups: list[Group]) -> list[dict]:
    out = []
    for group in groups:
        dense = _dense_for(group, groups)
        for run in group.runs:
            s = run.summary
            out.append({
                "run": run.name, "group": group.name, "seed": run.seed, **_config(run),
                "top1": s["final_top1"], "top5": s.get("final_top5"),
                "drop_vs_dense": (dense.mean_std("top1")[0] - s["final_top1"]
                                  if dense is not None and dense is not group else None),
                **{k: _run_value(run, k) for k in COST_KEYS},
                "wall_seconds": s.get("wall_seconds")})
    return out


def _csv_text(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def write_report(runs: list[Run], out: str) -> list[dict]:
    """Write the four files into ``out``; returns the group rows."""
    from .plots import plot_comparison  # matplotlib only when a report is written

    if not runs:
        raise UserError("no finished run to compare; give snapshot folders that hold a "
                        "summary.json (runs that reached their last epoch)")
    os.makedirs(out, exist_ok=True)
    groups = group_runs(runs)
    table, per_run = group_rows(groups), run_rows(groups)
    quoted = match_quoted(load_quoted(), table)
    for name, header, rows in (("comparison.csv", columns(), per_run),
                               ("comparison_groups.csv", group_columns(), table)):
        text = _csv_text(header, rows)
        atomic_write(os.path.join(out, name), lambda f: f.write(text))
    text = "\n".join(filter(None, [markdown(table, per_run), published_markdown(quoted)]))
    text = text.encode()
    atomic_write(os.path.join(out, "comparison.md"), lambda f: f.write(text))
    plot_comparison(groups, table, os.path.join(out, "comparison.png"))
    return table


def summary_lines(table: list[dict]) -> list[str]:
    """One console line per group, for compare.py and reproduce.py."""
    width = max(len(r["group"]) for r in table)
    lines = []
    for r in table:
        std = f" ± {r['top1_std']:.2f}" if r["top1_std"] is not None else ""
        drop = f"  drop {r['drop_vs_dense']:+.2f}" if r["drop_vs_dense"] is not None else ""
        flops = (f"  FLOPs −{100 * r['flops_reduction']:.1f}%"
                 if r["flops_reduction"] is not None else "")
        lines.append(f"{r['group']:<{width}}  {r['method']:<5}  top-1 {r['top1_mean']:6.2f}"
                     f"{std} (n={r['n']}){drop}{flops}")
    return lines


_NUMBERS = ("final_top1", "final_top5", "wall_seconds", "epochs", "seed")
_NAMES = ("method", "arch", "dataset", "attenuate")


def check_summary(summary: dict, path: str) -> None:
    """The values of summary.json the report reads are of the kinds a run writes (numbers,
    names, the compact and target blocks); else a UserError naming the file and the key."""
    def bad(key, value):
        raise UserError(f"{path} is malformed: its {key} is {str(value)[:40]!r}, not what a run "
                        "writes there; restore it, or leave the folder out")

    def number(key, value, optional=True):
        if (value is None and optional) or (isinstance(value, (int, float))
                                            and not isinstance(value, bool)
                                            and math.isfinite(value)):
            return
        bad(key, value)

    number("final_top1", summary["final_top1"], optional=False)
    for key in _NUMBERS[1:] + tuple(f"prune_rate_{c}" for c in rate_keys()):
        number(key, summary.get(key))
    for key in _NAMES:
        if summary.get(key) is not None and not isinstance(summary[key], str):
            bad(key, summary[key])
    for block in ("compact", "target"):
        value = summary.get(block)
        if value is not None and not isinstance(value, dict):
            bad(block, value)
    for key in COST_KEYS:
        number(f"compact.{key}", (summary.get("compact") or {}).get(key))
    target = summary.get("target") or {}
    number("target.fraction", target.get("fraction"))
    if target and not isinstance(target.get("kind"), str):
        bad("target.kind", target.get("kind"))
