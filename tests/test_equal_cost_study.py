"""bench.equal_cost_study: the command lines of issue 33's runs and the table it prints from
their summary.json files (no training here: the runs are what a user starts)."""
import json
import statistics

import pytest

from bench import equal_cost_study as study


def test_every_pruned_run_keeps_fpgm_50s_flops_with_one_rate_and_the_pairs_come_first(tmp_path):
    planned = study.jobs(str(tmp_path / "data"), str(tmp_path))
    order = [(method, seed) for method, seed, _, _ in planned]
    assert order[:6] == [(m, s) for s in (1, 2, 3) for m in study.PAIR]
    assert sorted(order) == sorted((m, s) for m in study.METHODS for s in study.SEEDS)
    for method, seed, save, cmd in planned:
        assert cmd[cmd.index("--manualSeed") + 1] == str(seed)
        assert cmd[cmd.index("--save_path") + 1] == save
        assert cmd[cmd.index("--epochs") + 1] == "30"
        if method == "dense":  # the soft-pruning study's own folder and command line
            assert save.endswith(f"e30/resnet20-dense-weights-s{seed}")
            assert "--target_flops" not in cmd
        else:
            assert cmd[cmd.index("--target_flops") + 1] == "0.355"
            assert cmd[cmd.index("--allocation") + 1] == "uniform"


def finish(save, top1, flops_kept, params_kept=1.0):
    """A finished run's summary.json, as far as the studies' tables read it."""
    save.mkdir(parents=True)
    (save / "summary.json").write_text(json.dumps(
        {"final_top1": top1, "compact": {"flops_reduction": 1 - flops_kept,
                                         "params_reduction": 1 - params_kept}}))


def test_the_table_gives_mean_std_and_the_paired_difference_with_its_interval(tmp_path):
    planned = study.jobs(str(tmp_path / "data"), str(tmp_path))
    top1 = {("fsdp-bn", 1): 91.0, ("fsdp-bn", 2): 89.95, ("fsdp-bn", 3): 90.5,
            ("fpgm", 1): 90.0, ("fpgm", 2): 90.5, ("fpgm", 3): 90.65, ("fsdp", 1): 89.1}
    for method, seed, save, _ in planned:
        if (method, seed) in top1:
            finish(tmp_path / save, top1[method, seed], 0.3571 if "fsdp" in method else 0.355)
    (tmp_path / "e30-equal" / "resnet20-fsdp-s2").mkdir()  # started, not finished: a dash
    table = study.report(planned)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
            if line.startswith("| ")}
    assert rows["fsdp-bn"] == "| fsdp-bn | 91.00 | 89.95 | 90.50 | 90.48 ± 0.53 | 0.3571 |"
    assert rows["fpgm"] == "| fpgm | 90.00 | 90.50 | 90.65 | 90.38 ± 0.34 | 0.3550 |"
    assert rows["fsdp"] == "| fsdp | 89.10 | – | – | 89.10 | 0.3571 |"
    assert rows["dense"] == "| dense | – | – | – | – | – |"
    diffs = [1.0, -0.55, -0.15]
    assert "seed 1 +1.00, seed 2 -0.55, seed 3 -0.15" in table
    assert "mean +0.10, std 0.80, range [-0.55, +1.00] over 3 seeds" in table
    half = 4.303 * statistics.stdev(diffs) / 3 ** 0.5  # t(0.975, 2 degrees of freedom)
    assert study.interval95(diffs) == pytest.approx((0.1 - half, 0.1 + half))
    assert "(Student's t, 2 degrees of freedom): [-1.90, +2.10]" in table
    # FSDP as published against FPGM: one seed of both so far, no mean yet
    last = "paired difference fsdp − fpgm (points of top-1): seed 1 -0.90"
    assert table.splitlines()[-1] == last


def test_the_interval_narrows_with_more_seeds_and_needs_two():
    assert study.interval95([1.0, -1.0]) == pytest.approx((-12.706, 12.706), rel=1e-3)
    wide, narrow = study.interval95([0.5, -0.5] * 2), study.interval95([0.5, -0.5] * 20)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(statistics.StatisticsError):
        study.interval95([1.0])
