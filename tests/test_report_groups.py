"""The report's groups (seeds as mean ± sample std) and its published block, on run folders
written without training."""
import csv
import statistics

import pytest

import compare
from tests.snapshots import write_finished_run
from utils.report.comparison import group_name, load_run, write_report
from utils.report.fpgm import fpgm_flops_reduction
from utils.report.published import load_quoted

FPGM40 = dict(method="fpgm", rates=(0.0, 0.0, 0.4), flops=0.526)
DENSE = dict(method="fsdp", rates=(0.0, 0.0, 0.0), flops=0.0)


def make(root, name, **kw):
    write_finished_run(root / name, **kw)
    return str(root / name)


def groups_csv(out):
    return {r["group"]: r for r in csv.DictReader(open(out / "comparison_groups.csv"))}


def test_seeds_are_one_row_mean_and_sample_std(tmp_path, capsys):
    fpgm = {1: 92.1, 2: 93.4, 3: 92.6}
    dense = {1: 93.9, 2: 94.3}
    folders = [make(tmp_path, f"r56-fpgm-s{s}", seed=s, top1=t, **FPGM40) for s, t in fpgm.items()]
    folders += [make(tmp_path, f"r56-dense-s{s}", seed=s, top1=t, **DENSE) for s, t in dense.items()]
    out = tmp_path / "report"
    assert compare.main([*folders, "--out", str(out)]) == 0
    rows = groups_csv(out)
    assert list(rows) == ["r56-fpgm-s{1,2,3}", "r56-dense-s{1,2}"]
    g = rows["r56-fpgm-s{1,2,3}"]
    assert (g["n"], g["seeds"], g["method"], g["attenuate"]) == ("3", "1 2 3", "fpgm", "weights")
    assert float(g["top1_mean"]) == pytest.approx(statistics.mean(fpgm.values()))
    assert float(g["top1_std"]) == pytest.approx(statistics.stdev(fpgm.values()))  # n − 1
    assert float(g["drop_vs_dense"]) == pytest.approx(
        statistics.mean(dense.values()) - statistics.mean(fpgm.values()))
    assert float(g["flops_reduction"]) == 0.526 and g["cost_varies"] == ""
    assert float(g["wall_seconds_mean"]) == pytest.approx(120.0)
    per_run = list(csv.DictReader(open(out / "comparison.csv")))
    assert len(per_run) == 5 and {r["group"] for r in per_run} == set(rows)
    md = open(out / "comparison.md").read()
    mean, std = statistics.mean(fpgm.values()), statistics.stdev(fpgm.values())
    assert f"| r56-fpgm-s{{1,2,3}} | fpgm | weights | resnet56 | cifar10 | gm 0.4 | 3 | 3 | " \
           f"{mean:.2f} ± {std:.2f} |" in md
    out_lines = capsys.readouterr().out.splitlines()
    assert out_lines[0].startswith("r56-fpgm-s{1,2,3}") and f"± {std:.2f} (n=3)" in out_lines[0]


def test_runs_of_other_flags_or_attenuate_are_other_rows(tmp_path):
    folders = [make(tmp_path, "a-s1", seed=1, **FPGM40), make(tmp_path, "a-s2", seed=2, **FPGM40),
               make(tmp_path, "lr-s1", seed=1, args={"learning_rate": 0.1}, **FPGM40),
               make(tmp_path, "bn-s1", seed=1, args={"attenuate": "bn"}, **FPGM40)]
    table = write_report([load_run(f) for f in folders], str(tmp_path / "r"))
    assert [(r["group"], r["n"], r["attenuate"]) for r in table] == [
        ("a-s{1,2}", 2, "weights"), ("lr-s1", 1, "weights"), ("bn-s1", 1, "bn")]
    # the flag that tells the first two rows apart is named, since it has no column
    assert [r["other_flags"] for r in table] == ["learning_rate=0.01", "learning_rate=0.1",
                                                 "learning_rate=0.01"]


def test_a_cost_that_differs_between_seeds_is_said(tmp_path):
    folders = [make(tmp_path, "x-s1", seed=1, **FPGM40),
               make(tmp_path, "x-s2", seed=2, **{**FPGM40, "flops": 0.5})]
    (row,) = write_report([load_run(f) for f in folders], str(tmp_path / "r"))
    assert row["cost_varies"] == "yes"
    assert "(differs between runs; mean)" in open(tmp_path / "r" / "comparison.md").read()


def test_rows_are_grouped_by_cost_and_unequal_costs_are_said(tmp_path):
    """The study's case: FSDP and FPGM at one total rate remove 60.7 % and 64.5 % of the FLOPs;
    at a budget they remove ~50 %. A global allocation's shares differ between seeds, its runs
    are still one row."""
    budget = {"target_flops": 0.5, "allocation": "global", "prune_rate_cs": None,
              "prune_rate_gm": None}
    folders = [make(tmp_path, "fsdp-r50", rates=(0.1, 0.0, 0.4), flops=0.607),
               make(tmp_path, "fpgm-r50", method="fpgm", rates=(0.0, 0.0, 0.5), flops=0.645)]
    folders += [make(tmp_path, f"fsdp-f50-global-s{s}", rates=(0.06 + s / 100, 0.0, 0.3),
                     flops=0.5 - s / 1000, seed=s, args=budget,
                     summary={"target": {"kind": "flops", "fraction": 0.5, "allocation": "global",
                                         "reached": 0.5 + s / 1000}}) for s in (1, 2)]
    folders.append(make(tmp_path, "dense", **DENSE))
    out = tmp_path / "report"
    assert compare.main([*folders, "--out", str(out)]) == 0
    rows = groups_csv(out)
    assert list(rows) == ["fsdp-r50", "fpgm-r50", "fsdp-f50-global-s{1,2}", "dense"]
    assert [rows[g]["cost_group"] for g in rows] == ["B", "C", "A", ""]
    budget_row = rows["fsdp-f50-global-s{1,2}"]
    assert (budget_row["target"], budget_row["allocation"], budget_row["n"]) == (
        "flops 0.5", "global", "2")
    md = open(out / "comparison.md").read()
    assert "cost group A (FLOPs −49.9%): fsdp-f50-global-s{1,2} (fsdp, 90.00 ± 0.00)" in md
    assert "flops 0.5 global: cs 0.07 + gm 0.3" in md
    assert "the rows differ in FLOPs reduction by up to 14.7 points" in md
    same = compare.main([folders[2], folders[3], folders[4], "--out", str(tmp_path / "same")])
    assert same == 0
    assert "differ in FLOPs reduction" not in open(tmp_path / "same" / "comparison.md").read()


def test_group_names_keep_numbers_whole():
    assert group_name(["r56-s1", "r56-s2", "r56-s3"]) == "r56-s{1,2,3}"
    assert group_name(["r-s1", "r-s10"]) == "r-s{1,10}"
    assert group_name(["only"]) == "only"


# --- the published block -----------------------------------------------------------------------

def published_block(tmp_path, **run):
    folder = make(tmp_path, "run-s1", **run)
    write_report([load_run(folder)], str(tmp_path / "r"))
    md = open(tmp_path / "r" / "comparison.md").read()
    return md.split("## Published", 1)[1] if "## Published" in md else None


def test_a_quoted_row_appears_beside_a_matching_run(tmp_path):
    block = published_block(tmp_path, **FPGM40)
    assert "(quoted from the papers, not measured here)" in block
    # FPGM Table 1, ResNet-56, FPGM-only 40 %: from scratch and from a pre-trained model
    assert "| FPGM CVPR 2019, Table 1 | FPGM-only 40% | from scratch | cifar10 | resnet56 | " \
           "93.59 ± 0.58 | 92.93 ± 0.49 | 0.66 |" in block
    assert "| FPGM-only 40% | pre-trained | cifar10 | resnet56 | 93.59 ± 0.58 | 93.49 ± 0.13 |" \
        in block
    assert block.count("\n| FPGM") == 2 and "| run-s1 |" in block


@pytest.mark.parametrize("run", [
    dict(FPGM40, rates=(0.0, 0.0, 0.5)),          # another rate
    dict(FPGM40, dataset="cifar100"),              # another dataset
    dict(FPGM40, arch="resnet44"),                 # an arch FPGM did not prune
    dict(FPGM40, method="fsdp", rates=(0.1, 0.0, 0.3)),  # our method, not theirs
    DENSE])
def test_no_quoted_row_without_a_match(tmp_path, run):
    assert published_block(tmp_path, **run) is None


def test_imagenet_rows_match_both_arch_spellings(tmp_path):
    for arch in ("imagenet_resnet50", "resnet50"):
        block = published_block(tmp_path / arch, arch=arch, dataset="imagenet",
                                **{**FPGM40, "rates": (0.0, 0.0, 0.3)})
        assert "| FPGM-only 30% | from scratch | imagenet | imagenet_resnet50 | 76.15 | 75.03 |" \
            in block


# --- the data file -----------------------------------------------------------------------------

# drops that the paper prints other than baseline − pruned: quoted as printed (csv header)
MISPRINTS = {("resnet110", "FPGM-only 40%", "yes", "top1"),
             ("imagenet_resnet50", "FPGM-mix 30%", "yes", "top5")}


def test_the_quoted_rows_are_consistent():
    """Guards against typing errors: drops are baseline − pruned, and each rate gives FPGM's
    own FLOPs count for it (the SFP rows' rates rest on that)."""
    rows = load_quoted()
    assert len(rows) == 34
    for r in rows:
        for kind in ("top1", "top5"):
            misprint = (r["arch"], r["paper_method"], r["fine_tuned"], kind) in MISPRINTS
            if r[f"drop_{kind}"] and r[f"baseline_{kind}"] and not misprint:
                assert float(r[f"baseline_{kind}"]) - float(r[f"pruned_{kind}"]) == \
                    pytest.approx(float(r[f"drop_{kind}"]), abs=0.006), r
        keep = 1 - float(r["rate_norm"]) - float(r["rate_gm"])
        if r["arch"] != "imagenet_resnet101":  # FPGM prints ResNet-50's 42.2 there (ours: 44.1)
            assert round(100 * fpgm_flops_reduction(r["arch"], keep), 1) == \
                float(r["flops_reduction"]), r


def test_the_anchors_of_the_spec_and_the_issue_are_quoted():
    rows = {(r["arch"], r["paper_method"], r["fine_tuned"]): r for r in load_quoted()}
    r56 = rows[("resnet56", "FPGM-only 40%", "no")]
    assert (r56["baseline_top1"], r56["pruned_top1"], r56["pruned_top1_std"]) == (
        "93.59", "92.93", "0.49")
    r50 = rows[("imagenet_resnet50", "FPGM-only 30%", "yes")]
    assert (r50["baseline_top1"], r50["pruned_top1"], r50["flops_reduction"]) == (
        "76.15", "75.59", "42.2")
    assert rows[("imagenet_resnet50", "FPGM-only 40%", "yes")]["pruned_top1"] == "74.83"
    assert rows[("imagenet_resnet18", "FPGM-only 30%", "yes")]["pruned_top1"] == "68.34"


def test_a_run_given_twice_counts_once(tmp_path, capsys):
    """The same folder twice (or by another path) would count twice in its group's mean."""
    run = tmp_path / "resnet56-fsdp-s1"
    write_finished_run(str(run), rates=(0.1, 0.0, 0.4), top1=90.0)
    other = tmp_path / "resnet56-fsdp-s2"
    write_finished_run(str(other), rates=(0.1, 0.0, 0.4), top1=80.0, seed=2)
    out = tmp_path / "report"
    argv = [str(run), str(other), str(tmp_path / "." / run.name), "--out", str(out)]
    assert compare.main(argv) == 0
    assert f"{tmp_path / '.' / run.name} is given twice; it counts once" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "comparison_groups.csv")))
    assert [(r["n"], float(r["top1_mean"])) for r in rows] == [("2", 85.0)]


def test_names_from_the_runs_files_are_text_in_the_figure(tmp_path):
    """A method written with dollar signs in a summary.json (or a run so named): matplotlib
    reads $…$ as mathematics, and fails on what is not."""
    run = tmp_path / "resnet56-fsdp-s1"
    write_finished_run(str(run), rates=(0.1, 0.0, 0.4), summary={"method": "$\\frac{$"})
    assert compare.main([str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 0
