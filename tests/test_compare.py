"""Every method end to end through notebook_cifar.py, and compare.py on their snapshots."""
import csv
import json

import pytest
import torch

import compare
import notebook_cifar
from tests.fakedata import write_cifar
from utils.method.schedule import count
from utils.run.driver import main

EPOCHS = 3
RUNS = {  # name: (flags, final selected share per criterion)
    "fsdp": (["--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4"], (0.1, 0.4)),
    "fpgm": (["--method", "fpgm", "--prune_rate_norm", "0.1", "--prune_rate_gm", "0.4"],
             (0.1, 0.4)),
    "sfp": (["--method", "sfp", "--prune_rate_norm", "0.5"], (0.5,)),
    "asfp": (["--method", "asfp", "--prune_rate_norm", "0.5"], (0.5,)),
    "l1": (["--method", "l1", "--prune_rate_l1", "0.5"], (0.5,)),  # a criterion added as a file
    "dense": (["--prune_rate_cs", "0", "--prune_rate_gm", "0"], (0.0,)),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    data = str(root / "data")
    write_cifar(data, "cifar10", n_train=64, n_test=32, seed=2, num_classes=4)
    for name, (flags, _) in RUNS.items():
        code = main(notebook_cifar.parser(), notebook_cifar.make_data, [
            "--dataset", "cifar10", "--data_path", data, "--save_path", str(root / name),
            "--arch", "resnet20", "--epochs", str(EPOCHS), "--batch_size", "32",
            "--batch_prune_size", "48", "--schedule", "1", "--gammas", "1", "--workers", "0",
            "--manualSeed", "4", "--device", "cpu", *flags])
        assert code == 0, name
    return root


@pytest.mark.parametrize("name", list(RUNS))
def test_each_method_ends_with_the_exact_zero_filter_counts(runs, name):
    summary = json.load(open(runs / name / "summary.json"))
    ckpt = torch.load(runs / name / "checkpoint.pt", weights_only=True)
    widths = {n: ckpt["model"][n + ".weight"].shape[0] for n in summary["selected_per_layer"]}
    expected = {n: sum(count(f, r) for r in RUNS[name][1]) for n, f in widths.items()}
    assert summary["zero_filters_per_layer"] == expected == summary["selected_per_layer"]
    assert summary["method"] == ("fsdp" if name == "dense" else name)
    rows = list(csv.DictReader(open(runs / name / "metrics.csv")))
    assert {r["method"] for r in rows} == {summary["method"]}
    shares = {k: float(rows[-1][f"theta_{k}"]) for k in ("cs", "norm", "gm")}
    if name in ("sfp", "fpgm"):  # the final rates from epoch 0 on
        assert all(float(r["theta"]) == float(rows[-1]["theta"]) for r in rows)
    if name == "fpgm":
        assert shares == {"cs": 0.0, "norm": 0.1, "gm": 0.4}
    log = open(runs / name / "log.txt").read()
    assert ("CS pass" in log) == (name == "fsdp")  # only a method that uses CS runs the pass


def test_compare_reports_every_finished_run(runs, tmp_path, capsys):
    (runs / "empty").mkdir()
    unfinished = runs / "unfinished"
    unfinished.mkdir()
    (unfinished / "log.txt").write_text("started\n")
    out = tmp_path / "report"
    code = compare.main([str(runs / "fsdp"), str(runs / "sfp"), str(runs / "dense"),
                         str(runs / "empty"), str(unfinished), "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: skipping ") for line in err)
    assert "empty" in err[0] and "unfinished" in err[1]
    table = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["run"] for r in table] == ["fsdp", "sfp", "dense"]
    assert [r["method"] for r in table] == ["fsdp", "sfp", "dense"]
    dense = json.load(open(runs / "dense" / "summary.json"))
    for row in table:
        s = json.load(open(runs / row["run"] / "summary.json"))
        assert float(row["top1"]) == s["final_top1"] and float(row["top5"]) == s["final_top5"]
        assert float(row["flops_reduction"]) == s["compact"]["flops_reduction"]
        assert float(row["params_reduction"]) == s["compact"]["params_reduction"]
        assert int(row["epochs"]) == EPOCHS and float(row["wall_seconds"]) == s["wall_seconds"]
        if row["run"] == "dense":
            assert row["drop_vs_dense"] == ""
        else:
            assert float(row["drop_vs_dense"]) == pytest.approx(
                dense["final_top1"] - s["final_top1"])
    assert (table[1]["rate_norm"], table[0]["rate_cs"], table[0]["rate_gm"]) == ("0.5", "0.1",
                                                                               "0.4")
    groups = list(csv.DictReader(open(out / "comparison_groups.csv")))
    assert [(g["group"], g["n"], g["top1_std"]) for g in groups] == [
        ("fsdp", "1", ""), ("sfp", "1", ""), ("dense", "1", "")]  # one seed each: no std
    md = open(out / "comparison.md").read()
    assert md.count("\n| ") == 2 * (1 + 3)  # a group table and a per-run table, header + 3
    assert "| sfp | sfp | weights | resnet20 | cifar10 | norm 0.5 | 3 | 1 |" in md
    assert "Published" not in md  # resnet20 at 50 %: no quoted row has these flags
    assert open(out / "comparison.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_l1_method_runs_from_the_script_and_stands_in_the_report(runs, tmp_path):
    assert compare.main([str(runs / "l1"), str(runs / "dense"), "--out", str(tmp_path)]) == 0
    row = next(r for r in csv.DictReader(open(tmp_path / "comparison.csv")) if r["run"] == "l1")
    assert (row["method"], float(row["rate_l1"]), float(row["rate_norm"])) == ("l1", 0.5, 0)
    theta = list(csv.DictReader(open(runs / "l1" / "metrics.csv")))[-1]
    assert float(theta["theta_l1"]) == 0.5 and float(theta["theta_norm"]) == 0


def test_compare_without_a_finished_run_is_an_error(runs, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert compare.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: skipping") and err[1].startswith("error: no finished run")
    assert not (tmp_path / "r").exists()
