"""A checkpoint is good or it is not kept: every reader checks the digest written with it,
and a resumed run shares with its checkpoint the flags that decide what it computes (the others
may change, logged and recorded in args.json).

One tiny run (ResNet-20, 64 images, stopped after 1 of 2 epochs) is made once and copied per
test; the refusals themselves are cases of the catalogue (tests/test_bad_inputs.py)."""
import json
import os
import shutil

import pytest
import torch

import compact as compact_cli
import notebook_cifar
from tests.cli import entry, run_in_process
from tests.fakedata import write_cifar
from tests.snapshots import files_of, flip_exponent_bit
from utils.files import DIGEST_KEY, check_seal, safe_load, sealed
from utils.report import config
from utils.run.checkpoint import non_finite, refuse_non_finite
from utils.run.cli import build_parser
from utils.run.engine import NonFiniteState
from utils.run.trainer import Trainer

BASE = ["--dataset", "cifar10", "--arch", "resnet20", "--prune_rate_cs", "0.1",
        "--prune_rate_gm", "0.4", "--epochs", "2", "--batch_size", "32", "--batch_prune_size",
        "32", "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The data and a run stopped after its first epoch (made once)."""
    root = tmp_path_factory.mktemp("trust")
    data, save = str(root / "data"), str(root / "run")
    write_cifar(data, n_train=64, n_test=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads spin against other processes on a shared CPU
    try:
        assert entry(notebook_cifar, [*BASE, "--data_path", data, "--save_path", save,
                                      "--stop_after", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return data, save


@pytest.fixture
def run(stopped_run, tmp_path):
    """A copy of the stopped run, and the command that continues it."""
    data, save = stopped_run
    copy = str(tmp_path / "run")
    shutil.copytree(save, copy)
    return copy, [*BASE, "--data_path", data, "--save_path", copy, "--resume", "auto"]


@pytest.mark.parametrize("script", ["cifar", "imagenet", "gsc"])
def test_every_flag_either_must_match_may_change_or_is_ignored_on_resume(script):
    """Every flag of a script's parser has one resume role in the run configuration
    (utils/report/config.py)."""
    flags = {a.dest for a in build_parser("", ["cifar10"], {}, script)._actions
             if a.dest != "help"}
    lists = [set(config.must_match(script)), set(config.may_change(script)),
             set(config.ignored_on_resume(script))]
    assert flags == set().union(*lists)
    assert sum(len(s) for s in lists) == len(flags), "a flag in two lists"
    for key in ("batch_size", "learning_rate", "momentum", "decay", "nesterov", "schedule",
                "gammas", "amp", "epoch_prune", "epoch_apply_cs", "batch_prune_size",
                "max_iter_cs", "cs_mode"):
        assert key in lists[0]


def test_a_flag_that_may_change_is_logged_and_recorded_in_args_json(run):
    save, argv = run  # a copy: its --save_path changed too
    before = json.load(open(os.path.join(save, "args.json")))
    assert entry(notebook_cifar, [*argv, "--print_freq", "7", "--nan_policy", "skip"]) == 0
    log = open(os.path.join(save, "log.txt")).read()
    assert "--nan_policy changed on resume at epoch 1: stop → skip" in log
    assert "--print_freq changed on resume at epoch 1: 200 → 7" in log
    assert f"--save_path changed on resume at epoch 1: {before['save_path']} → {save}" in log
    after = json.load(open(os.path.join(save, "args.json")))
    assert (after["print_freq"], after["nan_policy"], after["save_path"]) == (7, "skip", save)
    changed = {"print_freq", "nan_policy", "save_path", "resume", "stop_after"}  # and --resume…
    assert {k: v for k, v in after.items() if k not in changed} == \
        {k: v for k, v in before.items() if k not in changed}


# --- the digest -----------------------------------------------------------------------------

def test_a_flipped_bit_is_refused_by_every_reader_naming_the_file(run, tmp_path, capsys):
    save, argv = run
    path = os.path.join(save, "checkpoint.pt")
    flip_exponent_bit(path)
    before = files_of(save)
    damaged = f"checkpoint {path} is damaged: its contents do not match the digest"
    fresh = [a if a != save else str(tmp_path / "fresh") for a in argv[:-2]]
    for command in (argv, [*argv, "--evaluate"], [*fresh, "--pretrain_path", path]):
        done = run_in_process(notebook_cifar, *command, check=False)
        assert done.returncode == 2 and done.stderr.startswith(f"error: {damaged}"), done.stderr
        assert done.stderr.count("\n") == 1
    assert compact_cli.main([save]) == 2
    assert capsys.readouterr().err.startswith(f"error: {damaged}")
    assert files_of(save) == before and not os.path.exists(tmp_path / "fresh")


def test_a_checkpoint_from_before_digests_still_resumes_and_says_so(run):
    save, argv = run
    path = os.path.join(save, "checkpoint.pt")
    ckpt = safe_load(path)
    assert ckpt[DIGEST_KEY].startswith("sha256:")
    del ckpt[DIGEST_KEY]
    torch.save(ckpt, path)
    assert entry(notebook_cifar, argv) == 0
    assert f"note: {path} carries no digest" in open(os.path.join(save, "log.txt")).read()
    assert safe_load(path)[DIGEST_KEY].startswith("sha256:")  # the next one has one


@pytest.mark.parametrize("edit", ["epoch", "mask", "optimizer"])
def test_an_edited_and_sealed_again_checkpoint_is_one_line(run, capsys, edit):
    """A checkpoint is read from disk: one edited by hand and sealed again passes the digest,
    and a part that does not fit the run is still one line naming the file."""
    save, argv = run
    path = os.path.join(save, "checkpoint.pt")
    ckpt = {k: v for k, v in safe_load(path).items() if k != DIGEST_KEY}
    if edit == "epoch":
        ckpt["epoch"] = "one"
    elif edit == "mask":
        ckpt["mask"]["selected_first"] = {k: "all" for k in ckpt["mask"]["selected_first"]}
    else:
        ckpt["optimizer"]["param_groups"] = []
    torch.save(sealed(ckpt), path)
    before = files_of(save)
    assert entry(notebook_cifar, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {path}" in err and "Traceback" not in err
    assert files_of(save) == before


def test_a_format_2_checkpoint_with_cuda_states_resumes_on_the_cpu_as_format_3_does(
        run, stopped_run, tmp_path):
    """The previous layout: rank 0's RNG states alone, with one CUDA state per GPU visible
    when it was written (here two); on the CPU they are left alone, and the run goes on
    exactly as from the checkpoint it was converted from."""
    save, argv = run
    path = os.path.join(save, "checkpoint.pt")
    ckpt = safe_load(path)
    assert ckpt["format"] == "fsdp-checkpoint/3" and len(ckpt["rng"]) == 1
    ckpt["format"] = "fsdp-checkpoint/2"
    ckpt["rng"] = {**ckpt["rng"][0], "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    torch.save(sealed(ckpt), path)
    assert entry(notebook_cifar, argv) == 0
    reference = str(tmp_path / "format-3")
    shutil.copytree(stopped_run[1], reference)
    assert entry(notebook_cifar, [*argv[:argv.index("--save_path") + 1], reference,
                                  *argv[argv.index("--save_path") + 2:]]) == 0
    ours, theirs = (safe_load(os.path.join(f, "checkpoint.pt")) for f in (save, reference))
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])


# --- NaN and inf --------------------------------------------------------------------------------

def test_a_state_turned_non_finite_is_not_written_and_the_last_good_checkpoint_stays(
        run, monkeypatch):
    """As --attenuation nan did: the pruner's factor turns the weights into NaN after an
    epoch. The run stops where that epoch's checkpoint was due; the previous one is kept, good."""
    save, argv = run
    path = os.path.join(save, "checkpoint.pt")
    before = open(path, "rb").read()
    train_and_prune = Trainer.train_and_prune

    def poisoned(self, epoch, stop=None):
        out = train_and_prune(self, epoch, stop)
        with torch.no_grad():
            self.model.conv_1_3x3.weight[0].fill_(float("nan"))
        return out
    monkeypatch.setattr(Trainer, "train_and_prune", poisoned)
    done = run_in_process(notebook_cifar, *argv, check=False)
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: the state after epoch 1 holds NaN or inf in 1 of its "
                                  "tensors (first: model.conv_1_3x3.weight), so it was not "
                                  "written; the last good checkpoint is kept — resume it with ")
    assert open(path, "rb").read() == before
    kept = safe_load(path)
    assert check_seal(kept, path) and kept["epoch"] == 1 and not non_finite(kept)
    assert not os.path.exists(os.path.join(save, "summary.json"))


def test_a_stop_inside_an_epoch_refuses_a_non_finite_state_alike():
    """The checkpoint written on a stop signal goes through the same check."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    optimizer.state[model.bias]["momentum_buffer"][0] = float("inf")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    with pytest.raises(NonFiniteState, match=r"the state in epoch 4 after batch 7 holds NaN or "
                       r"inf in 1 of its tensors \(first: optimizer\.state\.1\.momentum_buffer\)"):
        refuse_non_finite(state, 4, 7)


def test_the_digest_of_a_known_object_is_the_one_written_before():
    """Checkpoints and compact files already written carry digests of this byte stream: any
    change to how it is fed (order, separators, one update or many) must leave it alone."""
    import collections

    from utils.files import content_digest
    obj = {"epoch": 3, "lr": 0.1, "flag": True, "none": None, "name": "résnet",
           "model": collections.OrderedDict(w=torch.arange(6, dtype=torch.float32).reshape(2, 3),
                                            h=torch.tensor([1.5], dtype=torch.bfloat16)),
           "rng": [torch.tensor([7], dtype=torch.uint8), (1, 2.5e-300)], 2: {"b": [], "a": ()},
           DIGEST_KEY: "left out"}
    assert content_digest(obj) == \
        "74f1df1b82f69809bc86ea37c897fd3473718a94d43ac8879d8a63df333742e6"
