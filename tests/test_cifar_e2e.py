"""notebook_cifar.py end to end on generated CIFAR-format data, through the real CLI: its
``main`` with the command line, in this process, and a process of its own where a signal or a
crash must reach it (``tests.cli.Forked``: forked from a server that has done the imports)."""
import csv
import json
import os

import pytest
import torch

import notebook_cifar
from tests.cli import Forked, run_forked, run_in_process
from tests.fakedata import write_cifar
from tests.snapshots import assert_same_run, temporaries
from utils.report.logger import METRIC_COLUMNS
from utils.method.schedule import count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 3
N_TEST = 60


def run_cifar(*args, check=True):
    return run_in_process(notebook_cifar, *args, check=check)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=160, n_test=N_TEST, seed=0)
    return str(root)


def common(data_root, save):
    return ["--dataset", "cifar10", "--arch", "resnet20", "--prune_rate_cs", "0.1",
            "--prune_rate_gm", "0.4", "--data_path", data_root, "--save_path", save,
            "--epochs", str(EPOCHS), "--batch_size", "32", "--batch_prune_size", "64",
            "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "7",
            "--device", "cpu"]  # bit for bit on resume: the CPU's promise (docs/runs.md)


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("runs") / "full")
    run_cifar(*common(data_root, save))
    return save


def test_snapshot_is_complete(full_run):
    files = set(os.listdir(full_run))
    assert {"log.txt", "args.json", "metrics.csv", "curves.png", "schedule.png",
            "checkpoint.pt", "summary.json", "model_compact.pt"} <= files
    assert not temporaries(full_run)  # no leftover temporaries
    log = open(os.path.join(full_run, "log.txt")).read().splitlines()
    assert "FSDP run" in log[0] and "arguments: " in log[1] and "--prune_rate_cs=0.1" in log[1]
    assert sum(" epoch " in line and "| train loss" in line for line in log) == EPOCHS
    args = json.load(open(os.path.join(full_run, "args.json")))
    assert args["arch"] == "resnet20" and args["epochs"] == EPOCHS and args["manualSeed"] == 7
    rows = list(csv.DictReader(open(os.path.join(full_run, "metrics.csv"))))
    assert len(rows) == EPOCHS and list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert float(rows[-1]["theta"]) == 0.5 and float(rows[-1]["zeta"]) == 0.0
    assert float(rows[0]["zeta"]) == 1.0 and int(rows[0]["filters_selected"]) == 0
    for name in ("curves.png", "schedule.png"):
        assert open(os.path.join(full_run, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    ckpt = torch.load(os.path.join(full_run, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == EPOCHS and ckpt["arch"] == "resnet20"
    summary = json.load(open(os.path.join(full_run, "summary.json")))
    # exact final zero-filter counts: ⌊F·0.1⌋ + ⌊F·0.4⌋ per layer (7 of 16, 15 of 32, 31 of 64)
    widths = {name: ckpt["model"][name + ".weight"].shape[0] for name in summary["selected_per_layer"]}
    expected = {n: count(f, 0.1) + count(f, 0.4) for n, f in widths.items()}
    assert len(expected) == 19 and expected["conv_1_3x3"] == 7
    assert summary["selected_per_layer"] == expected
    assert summary["zero_filters_per_layer"] == expected
    for name, n in expected.items():
        w = ckpt["model"][name + ".weight"].flatten(1)
        assert int((w.abs().sum(1) == 0).sum()) == n
    assert summary["final_top1"] == float(rows[-1]["test_top1"])
    # the physically smaller network: same predictions, and the analytic cost is its real cost
    c = summary["compact"]
    assert "model_compact.pt" in files and c["path"] == "model_compact.pt"
    assert abs(c["top1"] - summary["final_top1"]) <= 100 / N_TEST  # at most one test image
    assert c["flops"] == summary["flops_pruned"] and c["params"] == summary["params_pruned"]
    assert c["flops_dense"] == summary["flops_dense"] and 0.5 < c["flops_reduction"] < 0.7
    assert 0.5 < c["fpgm_analytic_flops_reduction_nominal"] < 0.7
    from models import build_model
    from utils.compaction import load_compact
    dense = build_model("resnet20", 10)
    dense.load_state_dict(ckpt["model"])
    x = torch.randn(8, 3, 32, 32)
    ref = dense.eval()(x)
    out = load_compact(os.path.join(full_run, "model_compact.pt"))(x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert 0.5 < summary["flops_reduction"] < 0.7 and 0.5 < summary["params_reduction"] < 0.7
    assert summary["wall_seconds"] > 0


def test_stop_and_resume_gives_the_same_final_weights(data_root, full_run, tmp_path):
    save = str(tmp_path / "resumed")
    first = run_cifar(*common(data_root, save), "--stop_after", "1")
    assert "--resume auto" in first.stdout
    assert torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)["epoch"] == 1
    assert not os.path.exists(os.path.join(save, "summary.json"))
    # no --manualSeed on resume: the checkpoint's seed is used, so the data order is the same
    resume_args = common(data_root, save)
    i = resume_args.index("--manualSeed")
    run_cifar(*(resume_args[:i] + resume_args[i + 2:]), "--resume", "auto")
    assert_same_run(full_run, save)
    other = run_cifar(*common(data_root, save), "--manualSeed", "8", "--resume", "auto",
                      check=False)
    assert other.returncode == 2 and "--manualSeed 7" in other.stderr


def test_dense_baseline_prunes_nothing(data_root, tmp_path):
    save = str(tmp_path / "dense")
    run_cifar(*common(data_root, save), "--prune_rate_cs", "0", "--prune_rate_gm", "0",
              "--epochs", "1")
    summary = json.load(open(os.path.join(save, "summary.json")))
    assert summary["filters_selected"] == 0 and summary["flops_reduction"] == 0
    assert summary["compact"]["flops"] == summary["flops_dense"]
    assert set(summary["zero_filters_per_layer"].values()) == {0}
    assert "CS pass" not in open(os.path.join(save, "log.txt")).read()  # a plain baseline


def test_existing_snapshot_is_not_overwritten(data_root, full_run):
    before = {f: open(os.path.join(full_run, f), "rb").read() for f in os.listdir(full_run)}
    proc = run_cifar(*common(data_root, full_run), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "already holds a run" in proc.stderr
    assert before == {f: open(os.path.join(full_run, f), "rb").read() for f in os.listdir(full_run)}


# where a real crash hurts most, in the order a run reaches them: inside a training epoch, in
# the middle of a checkpoint's write (the first one of the resumed process: epoch 1's, torn),
# right after a CS pass; one run killed at each in turn, every time resumed from what the last
# kill left. Each point → (epochs done by the checkpoint then, a torn temporary file left)
KILLS = {"train:1:2": (1, False), "atomic_save:checkpoint.pt#1": (1, True), "cs:2": (2, False)}


def test_killed_anywhere_or_interrupted_then_resume_auto_matches_an_uninterrupted_run(
        data_root, full_run, tmp_path):
    """One run through every way a run stops early: SIGKILL at each of KILLS, then Ctrl-C
    (SIGINT) in its last epoch, which stops at a batch boundary with a checkpoint of that
    batch; resumed after each, it ends as the uninterrupted run did."""
    save = str(tmp_path / "killed")
    for n, point in enumerate(KILLS):
        resume = ["--resume", "auto"] if n else []
        proc = run_forked("notebook_cifar.py", *common(data_root, save), *resume, check=False,
                          env={**os.environ, "FSDP_CRASH_AT": point})
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        assert not os.path.exists(os.path.join(save, "summary.json")), point
        epoch = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)["epoch"]
        # the torn write left epoch 0's checkpoint whole; the next process cleaned its
        # temporary file up before it wrote its own
        assert (epoch, bool(temporaries(save))) == KILLS[point], (point, epoch)
    interrupt_in_epoch(data_root, save, EPOCHS - 1)
    run_cifar(*common(data_root, save), "--resume", "auto")
    assert_same_run(full_run, save)
    assert not temporaries(save)


def interrupt_in_epoch(data_root, save, epoch):
    """Ctrl-C once the run in ``save`` has logged its first batch of ``epoch``: exit 130, a
    checkpoint of the batch it stopped after."""
    import signal
    import time
    proc = Forked("notebook_cifar.py", *common(data_root, save), "--resume", "auto",
                  "--print_freq", "1")
    log = os.path.join(save, "log.txt")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if f"epoch {epoch} [   1/" in open(log).read():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert f"SIGINT: stopped in epoch {epoch} after batch" in out
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == epoch and 0 < ckpt["batch"]


def corrupt_third_batch(monkeypatch):
    """The third training batch of the next invocation holds a NaN pixel, as a corrupt sample
    would: its loss is NaN, while the network stays healthy (a real divergence leaves weights
    or BN statistics of 1e38, which no checkpoint may keep: tests/test_checkpoint_trust.py)."""
    import utils.run.engine as engine
    prepare, seen = engine.prepare, []

    def corrupting(batch, device, transform=None, split="train"):
        x, y = prepare(batch, device, transform, split)
        seen.append(split)
        if split == "train" and seen.count("train") == 3:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x, y
    monkeypatch.setattr(engine, "prepare", corrupting)


def test_nonfinite_loss_stops_naming_epoch_and_batch_and_keeps_the_checkpoint(data_root,
                                                                               tmp_path,
                                                                               monkeypatch):
    save = str(tmp_path / "nan")
    run_cifar(*common(data_root, save), "--stop_after", "1")
    ckpt = os.path.join(save, "checkpoint.pt")
    before = open(ckpt, "rb").read()
    corrupt_third_batch(monkeypatch)
    proc = run_cifar(*common(data_root, save), "--resume", "auto", check=False)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: non-finite loss at epoch 1, batch ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert open(ckpt, "rb").read() == before
    monkeypatch.undo()
    corrupt_third_batch(monkeypatch)
    skip = run_cifar(*common(data_root, save), "--resume", "auto", "--nan_policy", "skip",
                     "--epochs", "3")
    assert "batches with a non-finite loss (--nan_policy skip)" in skip.stdout


def test_vgg16_end_to_end_gives_its_compact_network(tmp_path):
    """The CIFAR VGG of the pruning papers through the same script: pruned, compacted, exact."""
    data, save = str(tmp_path / "data"), str(tmp_path / "vgg")
    write_cifar(data, "cifar10", n_train=32, n_test=16, seed=1)
    run_cifar("--dataset", "cifar10", "--arch", "vgg16_bn", "--data_path", data, "--save_path",
              save, "--epochs", "2", "--batch_size", "16", "--batch_prune_size", "32",
              "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "3",
              "--device", "cpu")
    summary = json.load(open(os.path.join(save, "summary.json")))
    c = summary["compact"]
    assert summary["arch"] == "vgg16_bn" and len(summary["selected_per_layer"]) == 13
    assert summary["flops_dense"] == 313_201_664  # the 313 M of the pruning papers' tables
    assert c["flops"] == summary["flops_pruned"] and c["params"] == summary["params_pruned"]
    assert 0.4 < c["flops_reduction"] < 0.8 and c["max_rel_error"] <= 1e-5
    from models import build_model
    from utils.compaction import load_compact
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    dense = build_model("vgg16_bn", 10)
    dense.load_state_dict(ckpt["model"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = dense.eval()(x), load_compact(os.path.join(save, "model_compact.pt"))(x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5
