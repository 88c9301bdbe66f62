"""Assertions on snapshot folders, shared by the end-to-end tests of every script."""
import csv
import json
import os

import torch


def files_of(folder) -> dict:
    """Every file's bytes and mtime, by path relative to ``folder``."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def assert_same_run(a_dir, b_dir) -> None:
    """Two runs ended alike: weights, masks, history, metrics.csv and summary.json (wall time
    and epoch seconds aside)."""
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (a_dir, b_dir))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["mask"]["selected"]:
        assert torch.equal(a["mask"]["selected"][k], b["mask"]["selected"][k]), k

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]

    assert strip(a["history"]) == strip(b["history"])
    ra, rb = (list(csv.DictReader(open(os.path.join(d, "metrics.csv")))) for d in (a_dir, b_dir))
    assert strip(ra) == strip(rb)
    sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (a_dir, b_dir))
    sa.pop("wall_seconds"), sb.pop("wall_seconds")
    assert sa == sb
