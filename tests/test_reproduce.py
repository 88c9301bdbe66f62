"""reproduce.py: a 2-method × 2-seed grid end to end (stopped with Ctrl-C, continued, skipped
when finished), its report, and the command lines of --dry_run and --slurm line by line."""
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

import reproduce
from tests.fakedata import write_cifar
from tests.snapshots import files_of, write_finished_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--batch_size", "32", "--batch_prune_size", "48", "--schedule", "1", "--gammas", "1",
        "--workers", "0", "--device", "cpu"]  # tiny data, one learning rate, resumed exactly
# the jobs inherit it: two threads per tiny job only spin against each other on a shared CPU
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def grid_argv(data, grid_dir):
    return ["cifar10", "--archs", "resnet20", "--methods", "dense", "sfp", "--seeds", "1", "2",
            "--rate", "0.3", "--epochs", "3", "--data_path", str(data), "--save_path",
            str(grid_dir), "--", *TINY]


def wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The grid stopped by Ctrl-C during its second job, then run again to its end."""
    root = tmp_path_factory.mktemp("grid")
    write_cifar(str(root / "data"), "cifar10", n_train=64, n_test=32, seed=2, num_classes=4)
    grid_dir, argv = root / "g", grid_argv(root / "data", root / "g")
    proc = subprocess.Popen([sys.executable, "reproduce.py", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **ONE_THREAD})
    wait_for(grid_dir / "resnet20-sfp-r30-s1" / "checkpoint.pt", proc)  # its epoch 0 is done
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    stopped = {"code": proc.returncode, "out": out, "err": err,
               "folders": sorted(os.listdir(grid_dir)),
               "sfp_files": sorted(os.listdir(grid_dir / "resnet20-sfp-r30-s1"))}
    return root, argv, stopped


def test_ctrl_c_stops_the_running_job_resumably_and_says_how_to_continue(grid):
    root, argv, stopped = grid
    assert stopped["code"] == 130, stopped
    assert stopped["err"].splitlines()[-1] == (
        "interrupted: 1 running job(s) stopped with a resumable checkpoint; continue with the "
        "same command: python reproduce.py " + " ".join(argv))
    assert "[1/4] resnet20-dense-s1: done in" in stopped["out"]
    assert stopped["folders"] == ["resnet20-dense-s1", "resnet20-sfp-r30-s1"]  # s2 not started
    assert "checkpoint.pt" in stopped["sfp_files"] and "summary.json" not in stopped["sfp_files"]


def test_run_again_it_continues_the_stopped_job_and_runs_the_rest(grid, capsys, monkeypatch):
    root, argv, _ = grid
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs in" in out and "3 to run (1 continue a checkpoint), 1 finished" in out
    assert "[1/3] resnet20-sfp-r30-s1: continued" in out
    log = open(root / "g" / "resnet20-sfp-r30-s1" / "log.txt").read()
    assert "resumed from" in log
    assert "report: " + str(root / "g" / "comparison.md") in out


def test_the_report_has_one_row_per_configuration_with_mean_and_sample_std(grid):
    root, _, _ = grid
    g = root / "g"
    rows = {r["group"]: r for r in csv.DictReader(open(g / "comparison_groups.csv"))}
    assert list(rows) == ["resnet20-dense-s{1,2}", "resnet20-sfp-r30-s{1,2}"]
    for name, runs in (("resnet20-dense-s{1,2}", ["resnet20-dense-s1", "resnet20-dense-s2"]),
                       ("resnet20-sfp-r30-s{1,2}", ["resnet20-sfp-r30-s1",
                                                    "resnet20-sfp-r30-s2"])):
        summaries = [json.load(open(g / r / "summary.json")) for r in runs]
        top1 = [s["final_top1"] for s in summaries]
        row = rows[name]
        assert (row["n"], row["seeds"]) == ("2", "1 2")
        assert float(row["top1_mean"]) == pytest.approx(statistics.mean(top1))
        assert float(row["top1_std"]) == pytest.approx(statistics.stdev(top1))
        assert float(row["top5_std"]) == pytest.approx(
            statistics.stdev(s["final_top5"] for s in summaries))
    dense = statistics.mean(json.load(open(g / f"resnet20-dense-s{s}" / "summary.json"))
                            ["final_top1"] for s in (1, 2))
    assert float(rows["resnet20-sfp-r30-s{1,2}"]["drop_vs_dense"]) == pytest.approx(
        dense - float(rows["resnet20-sfp-r30-s{1,2}"]["top1_mean"]))
    per_run = list(csv.DictReader(open(g / "comparison.csv")))
    assert sorted(r["run"] for r in per_run) == sorted(
        f"resnet20-{c}-s{s}" for c in ("dense", "sfp-r30") for s in (1, 2))
    # SFP at 30 % on ResNet-20: FPGM's Table 1 quotes it, in the published block only
    md = open(g / "comparison.md").read()
    measured, published = md.split("## Published")
    assert "| FPGM CVPR 2019, Table 1 | SFP | from scratch | cifar10 | resnet20 | 92.20 ± 0.18 " \
           "| 90.83 ± 0.31 | 1.37 |" in published and "90.83" not in measured
    assert open(g / "comparison.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_finished_grid_starts_nothing(grid, capsys, monkeypatch):
    root, argv, _ = grid
    before = files_of(root / "g" / "resnet20-sfp-r30-s2")

    def refuse(*_, **__):
        raise AssertionError("a job was started")
    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 to run (0 continue a checkpoint), 4 finished" in out and "report: " in out
    assert files_of(root / "g" / "resnet20-sfp-r30-s2") == before
    assert reproduce.main(argv[:argv.index("--")] + ["--dry_run", "--", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"# finished, skipped: {root / 'g' / name}" for name in (
        "resnet20-dense-s1", "resnet20-sfp-r30-s1", "resnet20-dense-s2",
        "resnet20-sfp-r30-s2")] + [f"# 4 runs: 0 to run, 4 finished (the commands run in {ROOT})"]


# --- command lines, without running anything --------------------------------------------------

def expected_commands(tmp_path):
    """What the grid below must run, spelled out by hand."""
    data, grid = str(tmp_path / "data"), tmp_path / "g"

    def cmd(name, *flags, seed):
        return [sys.executable, "notebook_cifar.py", "--dataset", "cifar10", "--arch",
                "resnet56", *flags, "--manualSeed", str(seed), "--epochs", "5", "--data_path",
                data, "--save_path", str(grid / name), "--resume", "auto", "--workers", "4"]
    out = []
    for s in (1, 2):
        out += [cmd(f"resnet56-dense-s{s}", "--prune_rate_cs", "0", "--prune_rate_gm", "0",
                    seed=s),
                cmd(f"resnet56-fpgm-r40-s{s}", "--method", "fpgm", "--prune_rate_gm", "0.4",
                    seed=s),
                cmd(f"resnet56-fpgm-bn-r40-s{s}", "--method", "fpgm", "--prune_rate_gm", "0.4",
                    "--attenuate", "bn", seed=s),
                cmd(f"resnet56-fsdp-r40-s{s}", "--method", "fsdp", "--prune_rate_cs", "0.1",
                    "--prune_rate_gm", "0.3", seed=s),
                cmd(f"resnet56-fsdp-bn-r40-s{s}", "--method", "fsdp", "--prune_rate_cs", "0.1",
                    "--prune_rate_gm", "0.3", "--attenuate", "bn", seed=s)]
    return out


def cut_grid(tmp_path, *more):
    return ["cifar10", "--archs", "resnet56", "--methods", "dense", "fpgm", "fsdp", "--seeds",
            "1", "2", "--rate", "0.4", "--epochs", "5", "--attenuate", "weights", "bn",
            "--data_path", str(tmp_path / "data"), "--save_path", str(tmp_path / "g"), *more,
            "--", "--workers", "4"]


def test_dry_run_prints_every_command_line(tmp_path, capsys):
    assert reproduce.main(cut_grid(tmp_path, "--dry_run")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[:-1]] == expected_commands(tmp_path)
    assert lines[-1] == f"# 10 runs: 10 to run, 0 finished (the commands run in {ROOT})"
    assert not os.path.exists(tmp_path / "g")  # a dry run creates nothing


def test_slurm_writes_an_array_job_of_the_same_commands(tmp_path, capsys):
    script = tmp_path / "grid.sbatch"
    assert reproduce.main(cut_grid(tmp_path, "--slurm", str(script))) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {script}: 10 array tasks (0 runs have finished); submit it with: sbatch {script}")
    lines = open(script).read().splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert directives == ["#SBATCH --job-name=fsdp-cifar10", "#SBATCH --array=0-9",
                          "#SBATCH --gres=gpu:1", "#SBATCH --requeue",
                          f"#SBATCH --output={tmp_path / 'g'}/slurm-%A_%a.out"]
    body = lines[lines.index('case "$SLURM_ARRAY_TASK_ID" in') - 1:]
    assert body[0] == f"cd {ROOT}"
    tasks = body[2:-2]
    for i, (line, cmd) in enumerate(zip(tasks, expected_commands(tmp_path), strict=True)):
        assert line.startswith(f"  {i}) ") and line.endswith(" ;;")
        assert line[len(f"  {i}) "):-len(" ;;")].split() == cmd
    assert body[-2:] == ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
                         "esac"]
    # written again over its own file, but never over another one
    assert reproduce.main(cut_grid(tmp_path, "--slurm", str(script))) == 0
    other = tmp_path / "notes.txt"
    other.write_text("mine\n")
    assert reproduce.main(cut_grid(tmp_path, "--slurm", str(other))) == 2
    assert other.read_text() == "mine\n"


def test_a_finished_run_of_the_same_flags_is_skipped_by_dry_run_and_slurm(tmp_path, capsys):
    argv = ["cifar10", "--archs", "resnet56", "--methods", "fpgm", "--seeds", "1", "--rate",
            "0.4", "--epochs", "5", "--save_path", str(tmp_path / "g")]
    write_finished_run(tmp_path / "g" / "resnet56-fpgm-r40-s1", method="fpgm", epochs=5,
                       rates=(0.0, 0.0, 0.4),
                       args={"attenuate": "weights", "keep_subnormals": False})
    assert reproduce.main([*argv, "--dry_run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("# finished, skipped: ")
    assert reproduce.main([*argv, "--slurm", str(tmp_path / "s")]) == 0
    assert "nothing to submit" in capsys.readouterr().out and not os.path.exists(tmp_path / "s")


def test_every_method_at_one_budget_in_one_command(tmp_path, capsys):
    """--target_flops instead of --rate: fsdp and fpgm-mix keep their 1:4 split, the others
    take no rate; --allocation is one more axis, the dense run one per seed."""
    argv = ["cifar10", "--archs", "resnet20", "--methods", "dense", "fsdp", "fpgm-mix", "sfp",
            "asfp", "l1", "--seeds", "1", "--epochs", "5", "--target_flops", "0.5",
            "--allocation", "uniform", "global", "--save_path", str(tmp_path / "g"), "--dry_run"]
    assert reproduce.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split("--save_path ")[1].split()[0].rsplit("/", 1)[1] for line in lines[:-1]]
    assert names == ["resnet20-dense-s1"] + [f"resnet20-{m}-f50{a}-s1" for m in
                                             ("fsdp", "fpgm-mix", "sfp", "asfp", "l1")
                                             for a in ("", "-global")]
    fsdp, mix, sfp = lines[1], lines[3], lines[5]
    assert "--method fsdp --target_flops 0.5 --allocation uniform" in fsdp
    assert "--prune_rate" not in fsdp + sfp and "--target" not in lines[0]
    assert "--prune_rate_norm 0.1 --prune_rate_gm 0.4 --target_flops 0.5" in mix
    assert "--allocation global" in lines[6]
