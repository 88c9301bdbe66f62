"""notebook_gsc.py end to end on a generated Speech Commands folder (real wav files in the
archive's layout), through the real CLI: the snapshot, the exact final zero-filter counts, the
compact network, the CS pass over the validation split, exact resume after a kill mid-epoch,
and multi-crop evaluation."""
import json
import os
import re

import pytest
import torch

import notebook_gsc
from tests.cli import entry, run_forked, run_in_process
from tests.snapshots import assert_same_run, temporaries
from tests.fake_gsc import write_gsc
from utils.method.schedule import count
from utils.run.save_path import SNAPSHOT_FILES

EPOCHS = 3
# one thread: a shared 2-core machine stalls OpenMP's second thread (see docs/benchmarks.md)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_gsc(*args, env=None, check=True):
    """The script's command line: in this process, or with ``env`` (a crash point) in a
    process of its own (``tests.cli.Forked``)."""
    if env is None:
        return run_in_process(notebook_gsc, *args, check=check)
    return run_forked("notebook_gsc.py", *args, env=env, check=check)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "speech")
    counts = write_gsc(root, ("yes", "no", "up", "down", "bed"), clips_per_word=10, speakers=5,
                       seed=0)
    return root, counts


def common(data_root, save, *extra):
    return ["--dataset", "gsc", "--arch", "resnet20", "--prune_rate_cs", "0.1",
            "--prune_rate_gm", "0.4", "--data_path", data_root[0], "--save_path", save,
            "--epochs", str(EPOCHS), "--batch_size", "16", "--batch_prune_size", "32",
            "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "7",
            "--deterministic", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("runs") / "full")
    run_gsc(*common(data_root, save))
    return save


def test_snapshot_zero_filters_compact_network_and_cs_data(data_root, full_run):
    files = set(os.listdir(full_run))
    assert set(SNAPSHOT_FILES) <= files and not temporaries(full_run)
    # the cache sits beside the snapshot, outside the data folder
    assert os.path.isdir(os.path.join(os.path.dirname(full_run), "gsc_cache"))
    assert not [f for f in os.listdir(data_root[0]) if "cache" in f or f.startswith(".")]

    counts = data_root[1]
    n_train, n_valid, n_test = (sum(counts[s].values()) for s in
                                ("training", "validation", "testing"))
    log = open(os.path.join(full_run, "log.txt")).read()
    sizes = re.search(r"(\d+) train / (\d+) test", log)
    assert sizes and sizes.groups() == (str(n_train + n_train // 10), str(n_test))
    # every CS pass reads the whole validation split, its silence clips included
    passes = re.findall(r"CS pass: (\d+) samples", log)
    assert len(passes) >= 2 and set(passes) == {str(n_valid + n_valid // 10)}

    ckpt = torch.load(os.path.join(full_run, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == EPOCHS and ckpt["in_channels"] == 1 and ckpt["num_classes"] == 12
    assert ckpt["input_shape"] == [1, 32, 32]
    summary = json.load(open(os.path.join(full_run, "summary.json")))
    widths = {n: ckpt["model"][n + ".weight"].shape[0] for n in summary["selected_per_layer"]}
    expected = {n: count(f, 0.1) + count(f, 0.4) for n, f in widths.items()}
    assert len(expected) == 19 and expected["conv_1_3x3"] == 7
    assert summary["selected_per_layer"] == expected == summary["zero_filters_per_layer"]
    for name, n in expected.items():
        w = ckpt["model"][name + ".weight"].flatten(1)
        assert int((w.abs().sum(1) == 0).sum()) == n
    assert summary["dataset"] == "gsc" and summary["epochs"] == EPOCHS

    from models import build_model
    from utils.compaction import load_compact
    dense = build_model("resnet20", 12, 1)
    dense.load_state_dict(ckpt["model"])
    x = torch.randn(8, 1, 32, 32)
    ref = dense.eval()(x)
    out = load_compact(os.path.join(full_run, "model_compact.pt"))(x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5
    c = summary["compact"]
    assert c["flops"] == summary["flops_pruned"] and 0.5 < c["flops_reduction"] < 0.7


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(data_root, full_run,
                                                                    tmp_path):
    save = str(tmp_path / "killed")
    cache = ["--cache_dir", os.path.join(os.path.dirname(full_run), "gsc_cache")]
    proc = run_gsc(*common(data_root, save, *cache), env={**ENV, "FSDP_CRASH_AT": "train:1:1"},
                   check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["batch"] == 0  # killed inside epoch 1, after its batch 1
    run_gsc(*common(data_root, save, *cache), "--resume", "auto")
    assert_same_run(full_run, save)


def test_multi_crop_evaluation_of_the_final_network(data_root, full_run, capsys):
    base = common(data_root, full_run) + ["--evaluate", "--resume",
                                          os.path.join(full_run, "checkpoint.pt")]
    assert entry(notebook_gsc, base) == 0
    plain = capsys.readouterr().out
    assert entry(notebook_gsc, base + ["--multi_crop"]) == 0
    multi = capsys.readouterr().out
    n_test = sum(data_root[1]["testing"].values())
    summary = json.load(open(os.path.join(full_run, "summary.json")))
    assert f"top1 {summary['final_top1']:.2f}" in plain and f"({n_test} images)" in plain
    assert f"({n_test} images)" in multi
    loss = lambda out: float(re.search(r"loss (\S+)", out)[1])  # noqa
    assert loss(multi) != loss(plain)  # the 4 views' softmax average, not the clip alone
