"""Published results, quoted beside ours: the rows of a paper's tables with their source.

The rows live in CSV files under ``quoted/`` beside this module, one file per paper, whose
``#`` header names the exact copy the figures were read from. Their rates are in our flags'
terms (``--prune_rate_norm``/``--prune_rate_gm``), so a quoted row matches a measured group
when dataset, arch, method and every rate are the same. The report shows matches in a block
of their own, marked as quoted: a published figure never sits in a measured row.
"""
import csv
import glob
import os

from .comparison_md import md_table

QUOTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quoted")
_RATE_TOLERANCE = 1e-9


def load_quoted(folder: str = QUOTED_DIR) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.csv"))):
        with open(path, encoding="utf-8", newline="") as f:
            rows += csv.DictReader(line for line in f if not line.startswith("#"))
    return rows


def _arch(name: str) -> str:
    # the CIFAR and the ImageNet ResNets never share a dataset, so "imagenet_resnet50" and a
    # torchvision "resnet50" on ImageNet name the same network
    return (name or "").removeprefix("imagenet_")


def _matches(quoted: dict, group: dict) -> bool:
    """Same data, network, method and rates; a budget row pruned to a target, not at those
    rates (its shares are what its selection gave), matches none."""
    rates = {"cs": 0.0, "norm": float(quoted["rate_norm"]), "gm": float(quoted["rate_gm"])}
    return (not group.get("target") and quoted["dataset"] == group["dataset"] and _arch(quoted["arch"]) == _arch(group["arch"])
            and quoted["method"] == group["method"]
            and all(abs(group[f"rate_{k}"] - v) < _RATE_TOLERANCE for k, v in rates.items()))


def match_quoted(quoted: list[dict], table: list[dict]) -> list[tuple[dict, list[str]]]:
    """The quoted rows that match at least one group, each with the names of those groups."""
    out = []
    for row in quoted:
        names = [g["group"] for g in table if _matches(row, g)]
        if names:
            out.append((row, names))
    return out


def _with_std(row: dict, key: str) -> str:
    value, std = row.get(key) or "–", row.get(f"{key}_std")
    return f"{value} ± {std}" if std else value


def _cells(row: dict, names: list[str]) -> list[str]:
    return [f"{row['source']}, {row['table']}", row["paper_method"],
            "pre-trained" if row["fine_tuned"] == "yes" else "from scratch", row["dataset"],
            row["arch"], _with_std(row, "baseline_top1"), _with_std(row, "pruned_top1"),
            row["drop_top1"] or "–", row["baseline_top5"] or "–", row["pruned_top5"] or "–",
            row["drop_top5"] or "–", f"{row['flops_reduction']}%", ", ".join(names)]


def published_markdown(matches: list[tuple[dict, list[str]]]) -> str:
    """The "published" block, or nothing when no quoted row matches a measured one."""
    if not matches:
        return ""
    head = ["quoted from", "paper's method", "start", "dataset", "arch", "baseline top-1",
            "pruned top-1", "top-1 drop", "baseline top-5", "pruned top-5", "top-5 drop",
            "FLOPs − (FPGM's count)", "our rows with these flags"]
    lines = ["## Published figures (quoted from the papers, not measured here)", "",
             *md_table(head, [_cells(row, names) for row, names in matches]), "",
             "As printed in the paper (± its standard deviation over its runs): these numbers "
             "come from utils/quoted/*.csv, whose header names the copy they were read from; "
             "none of them was measured here. start: \"pre-trained\" rows pruned a trained "
             "model, \"from scratch\" rows a random one, as our scripts do unless "
             "--use_pretrain is given. FLOPs −: the paper's analytic count, to compare with our "
             "\"FPGM analytic FLOPs −\" column.", ""]
    return "\n".join(lines)
