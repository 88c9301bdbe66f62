"""The catalogue of bad inputs (docs/troubleshooting.md lists the same cases, in order).

Every case runs the real CLI — mostly in-process through ``utils.run.driver.main`` for speed, a
few through ``python notebook_cifar.py`` — and must fail with exit status ≠ 0, exactly one line
``error: …`` on stderr naming the problem, no traceback, and not a byte or mtime changed in a
previous run's snapshot folder, whether the case aims at that folder or at a fresh one.

The table is keyed by script: a new script joins the catalogue with an entry in ``SCRIPTS``
(its module and its cases; one whose data differ from CIFAR's also needs its own BASE command
and tiny-data fixture) and its rows in docs/troubleshooting.md's table.
"""
import ast
import errno
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import urllib.error
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import compact as compact_cli
import compare
import notebook_cifar
import notebook_gsc
import notebook_imagenet
import reproduce
from datasets.imagenet32 import TRAIN_FILES, VAL_FILE
from tests.cli import entry, run_forked
from tests.fake_imagenet import rewrite_npz, truncate_file, write_imagenet32, write_imagenet_folder
from tests.fake_gsc import write_gsc, write_wav
from tests.snapshots import files_of, flip_exponent_bit, temporaries, write_finished_run
from tests.fakedata import corrupt_cifar_batch, plant_malicious_batch, write_cifar
from tests.user_code import run_user_code
from utils.files import safe_load
from utils.run.save_path import SNAPSHOT_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The earlier snapshot is a run stopped after 1 of 2 epochs: resuming it has work left, so a
# resume that were not refused would visibly change its files (and disk-full can hit a save).
BASE = ["--dataset", "cifar10", "--arch", "resnet20", "--prune_rate_cs", "0.1",
        "--prune_rate_gm", "0.4", "--epochs", "2", "--batch_size", "32", "--batch_prune_size",
        "32", "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "1",
        "--device", "cpu", "--data_path", "{data}", "--save_path", "{fresh}"]


class Armed:
    """Unpickling this calls ``open(target, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


# --- what each case breaks before the run; ``p`` holds the case's paths ----------------------

def corrupt(kind):
    return lambda p: corrupt_cifar_batch(os.path.join(p.batches, "data_batch_1"), kind)


def remove_batch(p):
    os.remove(os.path.join(p.batches, "data_batch_3"))


def plant_batch(p):
    plant_malicious_batch(os.path.join(p.batches, "data_batch_1"), p.marker)


def rewrite_data(**sizes):
    def setup(p):
        shutil.rmtree(p.batches)
        write_cifar(p.data, **{"n_train": 64, "n_test": 32, **sizes})
    return setup


def gsc_folder(p):
    os.makedirs(os.path.join(p.tmp, "gsc", "_background_noise_"))
    for name in ("validation_list.txt", "testing_list.txt"):
        open(os.path.join(p.tmp, "gsc", name), "w").close()


def imagenet32_folder(p):
    os.makedirs(os.path.join(p.tmp, "imagenet32"))
    for name in ("train_data_batch_1.npz", "val_data.npz"):
        open(os.path.join(p.tmp, "imagenet32", name), "wb").close()


def cifar100_folder(p):
    write_cifar(os.path.join(p.tmp, "c100"), "cifar100", n_train=10, n_test=10)


def unwritable(p):
    if os.geteuid() == 0:
        # root writes through a read-only folder's mode bits, so block it with a parent that
        # is a regular file instead: no user can create a folder under a file
        p.unwritable = os.path.join(p.earlier, "log.txt", "run")
    else:
        os.makedirs(os.path.join(p.tmp, "readonly"))
        os.chmod(os.path.join(p.tmp, "readonly"), 0o500)
        p.unwritable = os.path.join(p.tmp, "readonly", "run")


def old_format_checkpoint(p):  # written before the checkpoint layout's format 2
    path = os.path.join(p.earlier, "checkpoint.pt")
    ckpt = safe_load(path)
    ckpt["format"] = "fsdp-checkpoint/1"
    torch.save(ckpt, path)


def truncate_checkpoint(p):
    path = os.path.join(p.earlier, "checkpoint.pt")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def damaged_checkpoint(p):  # one bit flipped on disk: it still loads, with a weight of 1e37
    flip_exponent_bit(os.path.join(p.earlier, "checkpoint.pt"))


def diverged_checkpoint(p):  # as versions before the check wrote it: NaN weights, no digest
    path = os.path.join(p.earlier, "checkpoint.pt")
    ckpt = safe_load(path)
    ckpt["model"]["conv_1_3x3.weight"][0, 0, 0, 0] = float("nan")
    del ckpt["digest"]
    torch.save(ckpt, path)


def empty_checkpoint(p):  # what some tools leave when the disk fills
    open(os.path.join(p.earlier, "checkpoint.pt"), "wb").close()


def malicious_checkpoint(p):
    torch.save({"model": Armed(p.marker)}, os.path.join(p.earlier, "checkpoint.pt"))


def save_pretrain(make):
    def setup(p):
        torch.save(make(p), os.path.join(p.tmp, "weights.pt"))
    return setup


def state_dict_file(p):
    save_pretrain(lambda p: safe_load(os.path.join(p.earlier, "checkpoint.pt"))["model"])(p)


def pickle_pretrain(p):  # a plain pickle, not torch.save's zip: torch's legacy path reads it
    with open(os.path.join(p.tmp, "weights.pt"), "wb") as f:
        pickle.dump({"conv_1_3x3.weight": Armed(p.marker)}, f, protocol=2)


def garbage_pretrain(p):
    with open(os.path.join(p.tmp, "weights.pt"), "wb") as f:
        f.write(b"<html>404 Not Found</html>")


def offline(monkeypatch):
    """The download fails as it does on a machine without network."""
    import torchvision.datasets.utils as tv_utils

    def fail(*_, **__):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fail)


def write_fails(code):
    """Every checkpoint write fails with ``code`` (utils.files calls torch.save): ENOSPC as on
    a full disk, EFBIG past the file-size limit, EROFS on a read-only file system.
    tests/test_run_folder.py makes the real faults."""
    def patch(monkeypatch):
        def fail(*_, **__):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(torch, "save", fail)
    return patch


def hold_lock(folder):
    """Another process's lock on ``folder``: a descriptor of its own, as a second process has
    (the file object keeps it held until the test ends)."""
    held = open(os.path.join(folder, ".lock"), "a+b")
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


def earlier_in_use(p):
    p.held = hold_lock(p.earlier)


def remove_checkpoint(p):  # deleted to save space, the results kept
    os.remove(os.path.join(p.earlier, "checkpoint.pt"))


def log_elsewhere(p):
    """log.txt a symbolic link to a file outside the run folder."""
    p.elsewhere = os.path.join(p.tmp, "elsewhere.txt")
    shutil.move(os.path.join(p.earlier, "log.txt"), p.elsewhere)
    os.symlink(p.elsewhere, os.path.join(p.earlier, "log.txt"))


def previous_checkpoint_loads(p, err):
    assert "the previous file is intact" in err
    assert safe_load(os.path.join(p.earlier, "checkpoint.pt"))["epoch"] == 1
    assert not temporaries(p.earlier)


class Untraceable(nn.Module):
    """A forward that branches on the data: torch.fx cannot record it."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if x.mean() > 0:
            x = x.relu()
        return self.fc(x.mean((2, 3)))


class WithGroupNorm(nn.Module):
    """Two conv → BN pairs, the first feeding a GroupNorm, which the compactor keeps whole."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.norm(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class OnlyIntoGroupNorm(nn.Module):
    """One conv → BN pair, feeding a GroupNorm: nothing is left to prune."""

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.norm(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def tf_mobilenet(num_classes=10, in_channels=3):
    """timm's smallest TF port: its strided convs pad "same" from the input's size, which fx
    cannot trace, so the compactor keeps them whole (and the convs feeding them)."""
    import timm

    return timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=num_classes,
                             in_chans=in_channels)


def hub_offline(monkeypatch):
    """The Hugging Face Hub's client refuses every request, as with HF_HUB_OFFLINE=1 (or on a
    machine without network, after its retries)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def timm_missing(monkeypatch):
    """As on a machine where timm is not installed."""
    monkeypatch.setattr("models.timm_models.installed", lambda: False)


def arch_is(model_class, *modules):
    """Every --arch builds ``model_class``, as a model added to ``models/`` would (where the
    run builds its models: ``modules``)."""
    def patch(monkeypatch):
        for name in modules or ("utils.run.driver", "utils.run.pretrained"):
            monkeypatch.setattr(f"{name}.build_model",
                                lambda arch, num_classes, in_channels=3, **_: model_class(
                                    num_classes, in_channels))
    return patch


# --- the table ---------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    flags: list[str]       # appended to BASE (later flags win); {data} {fresh} {earlier} {tmp}…
    expect: str            # a phrase the one-line error must contain
    setup: Callable | None = None
    patch: Callable | None = None        # (monkeypatch) -> None; in-process cases only
    subprocess: bool = False             # run as `python notebook_cifar.py …`, forked (what
                                         # reaches fd 2 counts too: tests.cli.Forked) …
    interpreter: bool = False            # … or in a new interpreter (its imports' output too)
    may_grow: tuple[str, ...] = ()       # earlier files that may only be appended to
    check: Callable | None = None        # (paths, stderr) -> None: more assertions afterwards
    # snapshot files the case may leave in the fresh folder: for data errors that only show
    # while running (a corrupt JPEG among a million); its message must say --resume auto
    found_while_running: bool = False


RESUME = ["--save_path", "{earlier}", "--resume", "auto"]
CASES = [
    # flags: refused by argparse or check_args before any work
    Case("flag-misspelt", ["--prune-rate-cs", "0.1"], "unrecognized arguments: --prune-rate-cs"),
    Case("dataset-of-another-script", ["--dataset", "imagenet32"],
         "invalid choice: 'imagenet32'"),
    Case("batch-size-not-a-number", ["--batch_size", "abc"], "invalid int value: 'abc'"),
    Case("unknown-method", ["--method", "l1norm"], "argument --method: invalid choice: 'l1norm'"),
    Case("rate-the-method-does-not-use", ["--method", "sfp"],
         "--method sfp does not use --prune_rate_cs"),
    Case("tau-with-a-constant-rate", ["--method", "fpgm", "--prune_rate_cs", "0", "--tau", "5"],
         "--tau has no effect"),
    Case("attenuate-bn-in-a-dense-run", ["--attenuate", "bn", "--prune_rate_cs", "0",
                                         "--prune_rate_gm", "0"],
         "--attenuate bn attenuates the selected channels"),
    Case("round-to-0", ["--round_to", "0"], "--round_to must be ≥ 1"),
    Case("unknown-coupling", ["--coupling", "resnet"],
         "argument --coupling: invalid choice: 'resnet' (choose from 'none', 'residual')"),
    Case("unknown-arch", ["--arch", "resnet21"],
         "unknown --arch 'resnet21'; the closest: resnet32, resnet20, resnet110, resnet56 (",
         subprocess=True, interpreter=True, check=lambda p, err: len(err) < 160),
    Case("unknown-timm-arch", ["--arch", "timm:efficientnet_b9"],
         "unknown timm model 'efficientnet_b9' (--arch timm:efficientnet_b9); the closest: "
         "timm:efficientnet_b8, "),
    Case("timm-not-installed", ["--arch", "timm:resnet18d"],
         "--arch timm:resnet18d needs timm, which is not installed: pip install timm==1.0.31",
         patch=timm_missing),
    Case("arch-without-prunable-convs", ["--arch", "imagenet_squeezenet1_0"],
         "has no Conv2d whose output goes only to a BatchNorm2d (it has no BatchNorm2d)"),
    Case("timm-arch-without-batchnorm", ["--arch", "timm:convnext_atto"],
         "--arch timm:convnext_atto has no Conv2d whose output goes only to a BatchNorm2d (it "
         "normalises with LayerNorm2d)"),
    Case("timm-pretrained-offline", ["--arch", "timm:mobilenetv3_small_050", "--use_pretrain"],
         "could not download the pretrained weights of --arch timm:mobilenetv3_small_050 (",
         patch=hub_offline),
    Case("untraceable-model", [], "cannot trace a Untraceable with torch.fx",
         patch=arch_is(Untraceable)),
    Case("nothing-left-to-prune", [], "--arch resnet20: nothing is left to prune: every conv → "
         "BatchNorm pair of this OnlyIntoGroupNorm feeds a part the compactor keeps whole (1 "
         "conv feeding 'norm' (GroupNorm))", patch=arch_is(OnlyIntoGroupNorm)),
    Case("rate-negative", ["--prune_rate_cs", "-0.1"], "must be ≥ 0"),
    Case("rates-sum-to-1", ["--prune_rate_gm", "0.9"], "must be < 1"),
    Case("tau-too-small", ["--tau", "1.2"], "--tau must be > 4/3"),
    Case("schedule-gammas-mismatch", ["--schedule", "1", "60", "--gammas", "10"],
         "--schedule has 2 steps but --gammas has 1"),
    Case("batch-size-0", ["--batch_size", "0"], "--batch_size must be ≥ 1"),
    Case("epochs-0", ["--epochs", "0"], "--epochs must be ≥ 1"),
    Case("workers-negative", ["--workers", "-1"], "--workers must be ≥ 0"),
    Case("learning-rate-0", ["--learning_rate", "0"], "--learning_rate must be > 0"),
    Case("learning-rate-infinite", ["--learning_rate", "inf"],
         "--learning_rate must be a finite number (got inf)"),
    Case("attenuation-not-a-number", ["--attenuation", "nan"],
         "--attenuation must be a finite number (got nan)"),
    Case("rate-not-a-number", ["--prune_rate_gm", "nan"],
         "--prune_rate_gm must be a finite number (got nan)"),
    Case("momentum-negative", ["--momentum", "-0.9"], "--momentum must be ≥ 0 (got -0.9)"),
    Case("seed-out-of-range", ["--manualSeed", "-1"], "--manualSeed must lie in [0, 2³²) (got -1)"),
    Case("prune-include-not-a-regex", ["--prune_include", "conv["],
         "--prune_include is not a regular expression (unterminated character set"),
    Case("device-not-a-device", ["--device", "gpu"],
         "--device 'gpu' is not a device; give cpu, cuda or cuda:N"),
    Case("resume-and-overwrite", [*RESUME, "--overwrite"], "contradict each other"),
    Case("evaluate-without-weights", ["--evaluate"], "--evaluate needs"),
    Case("use-pretrain-without-path", ["--use_pretrain"], "--use_pretrain needs --pretrain_path"),
    # a budget (--target_flops / --target_params)
    Case("target-outside-0-1", ["--target_flops", "1.5"], "--target_flops 1.5 must lie in (0, 1)"),
    Case("target-flops-and-params", ["--target_flops", "0.5", "--target_params", "0.5"],
         "--target_flops and --target_params contradict each other"),
    Case("target-with-the-methods-rate", ["--method", "sfp", "--prune_rate_cs", "0",
                                          "--prune_rate_gm", "0", "--prune_rate_norm", "0.5",
                                          "--target_flops", "0.5"],
         "--target_flops 0.5 sets the rate of --method sfp itself, so --prune_rate_norm "
         "contradicts it"),
    Case("target-with-zero-rates", ["--prune_rate_cs", "0", "--prune_rate_gm", "0",
                                    "--target_flops", "0.5"], "and both are 0"),
    Case("allocation-without-target", ["--allocation", "global"],
         "--allocation global spreads a budget over the layers and there is none"),
    Case("target-unreachable", ["--round_to", "8", "--target_flops", "0.1"],
         "--target_flops 0.1 cannot be reached: the uniform allocation keeps 0."),
    # data
    Case("missing-data-path-offline", ["--data_path", "{tmp}/no-such-folder"],
         "could not download CIFAR-10", patch=offline),
    Case("batch-file-missing", [], "lacks data_batch_3", remove_batch),
    Case("truncated-batch", [], "is truncated or corrupt", corrupt("truncate")),
    Case("garbage-batch", [], "is truncated or corrupt", corrupt("garbage")),
    Case("labels-out-of-range", [], "outside [0, 10)", corrupt("labels_range")),
    Case("labels-count-mismatch", [], "expected one integer per image", corrupt("labels_length")),
    Case("image-wrong-shape", [], "expected uint8 N×3072", corrupt("shape")),
    Case("image-wrong-dtype", [], "expected uint8 N×3072", corrupt("dtype")),
    Case("batch-without-data", [], "has no 'data' entry", corrupt("missing_key")),
    Case("batch-not-a-dict", [], "not a dict of arrays", corrupt("not_dict")),
    Case("malicious-batch", [], "which a plain CIFAR batch never needs", plant_batch),
    Case("empty-train-split", [], "train split", rewrite_data(n_train=0)),
    Case("empty-test-split", [], "test split", rewrite_data(n_test=0)),
    Case("gsc-folder", ["--data_path", "{tmp}/gsc"], "Google Speech Commands folder", gsc_folder,
         subprocess=True),
    Case("imagenet32-folder", ["--data_path", "{tmp}/imagenet32"], "ImageNet32 folder",
         imagenet32_folder),
    Case("cifar100-as-cifar10", ["--data_path", "{tmp}/c100"], "use dataset 'cifar100'",
         cifar100_folder),
    # save path
    Case("save-path-holds-a-run", ["--save_path", "{earlier}"], "already holds a run"),
    Case("save-path-is-a-file", ["--save_path", "{earlier}/log.txt"], "is a file"),
    Case("unwritable-save-path", ["--save_path", "{unwritable}"], "cannot write to --save_path",
         unwritable),
    Case("save-path-in-use", RESUME, "is in use by another process (pid ", earlier_in_use,
         check=lambda p, err: f"(pid {os.getpid()}); wait for it to finish" in err),
    Case("resume-auto-without-checkpoint", RESUME,
         "holds the results of a run (metrics.csv) but no checkpoint.pt", remove_checkpoint),
    Case("log-is-a-symlink", RESUME, "log.txt is a symbolic link", log_elsewhere),
    Case("disk-full-while-saving", RESUME, "No space left on device",
         patch=write_fails(errno.ENOSPC), may_grow=("log.txt",), check=previous_checkpoint_loads),
    Case("file-too-large-while-saving", RESUME, "File too large", patch=write_fails(errno.EFBIG),
         may_grow=("log.txt",), check=previous_checkpoint_loads),
    Case("read-only-while-saving", RESUME, "Read-only file system",
         patch=write_fails(errno.EROFS), may_grow=("log.txt",), check=previous_checkpoint_loads),
    # checkpoints
    Case("resume-other-arch", [*RESUME, "--arch", "resnet32"], "made with --arch resnet20"),
    Case("resume-other-rate", [*RESUME, "--prune_rate_cs", "0.2"],
         "made with --prune_rate_cs 0.1, this run asks for 0.2"),
    Case("resume-other-epochs", [*RESUME, "--epochs", "3"], "made with --epochs 2"),
    Case("resume-other-method", [*RESUME, "--method", "asfp", "--prune_rate_cs", "0",
                                 "--prune_rate_gm", "0"], "made with --method fsdp"),
    Case("resume-other-attenuate", [*RESUME, "--attenuate", "bn"],
         "made with --attenuate weights, this run asks for bn"),
    Case("resume-other-keep-subnormals", [*RESUME, "--keep_subnormals"],
         "made with --keep_subnormals False, this run asks for True"),
    Case("resume-other-target", [*RESUME, "--target_flops", "0.5"],
         "made with --target_flops None, this run asks for 0.5"),
    Case("resume-other-batch-size", [*RESUME, "--batch_size", "16"],
         "made with --batch_size 32, this run asks for 16"),
    Case("resume-other-learning-rate", [*RESUME, "--learning_rate", "0.1"],
         "made with --learning_rate 0.01, this run asks for 0.1"),
    Case("resume-other-schedule", [*RESUME, "--schedule", "1", "2", "--gammas", "1", "0.1"],
         "made with --schedule 1, this run asks for 1 2"),
    Case("resume-older-checkpoint-format", RESUME, "by an older version", old_format_checkpoint),
    Case("resume-missing-checkpoint", ["--resume", "{tmp}/nope.pt"], "does not exist"),
    Case("resume-a-state-dict", ["--resume", "{tmp}/weights.pt"],
         "not a checkpoint of this project", state_dict_file),
    Case("corrupt-checkpoint", RESUME, "is corrupt or truncated", truncate_checkpoint,
         subprocess=True),
    Case("empty-checkpoint", RESUME, "is corrupt or truncated", empty_checkpoint),
    Case("damaged-checkpoint", RESUME, "/earlier/checkpoint.pt is damaged: its contents do not "
         "match the digest written with them", damaged_checkpoint),
    Case("diverged-checkpoint", RESUME, "holds NaN or inf in 1 of its tensors (first: "
         "model.conv_1_3x3.weight): training had diverged", diverged_checkpoint),
    Case("malicious-checkpoint", RESUME, "refusing to load", malicious_checkpoint,
         subprocess=True),
    Case("malicious-pretrain", ["--pretrain_path", "{tmp}/weights.pt"], "refusing to load",
         save_pretrain(lambda p: {"conv_1_3x3.weight": Armed(p.marker)})),
    Case("malicious-plain-pickle", ["--pretrain_path", "{tmp}/weights.pt"], "refusing to load",
         pickle_pretrain),
    Case("pretrain-not-a-torch-file", ["--pretrain_path", "{tmp}/weights.pt"],
         "not a checkpoint written by torch.save", garbage_pretrain),
    Case("pretrain-other-arch", ["--pretrain_path", "{earlier}/checkpoint.pt", "--arch",
                                 "resnet32"], "does not fit --arch"),
    Case("pretrain-not-weights", ["--pretrain_path", "{tmp}/weights.pt"], "holds no state dict",
         save_pretrain(lambda p: [1, 2, 3])),
]

# --- notebook_imagenet.py: ImageNet32 npz files and ImageNet JPEG folders ------------------------

IMAGENET_BASE = ["--dataset", "imagenet32", "--arch", "resnet20", "--epochs", "2", "--batch_size",
                 "16", "--batch_prune_size", "32", "--schedule", "1", "--gammas", "1",
                 "--workers", "0", "--manualSeed", "1", "--device", "cpu",
                 "--data_path", "{data}/imagenet32", "--save_path", "{fresh}"]
FULL_SIZE = ["--dataset", "imagenet", "--data_path", "{data}/imagenet", "--arch",
             "imagenet_resnet18", "--crop_size", "32", "--resize_size", "36", "--workers", "0"]


def write_imagenet_data(data):
    write_imagenet32(os.path.join(data, "imagenet32"), per_file=3, n_val=6)
    write_imagenet_folder(os.path.join(data, "imagenet"), n_train=2, n_val=1, size=(36, 36))


def npz(name, **changes):
    return lambda p: rewrite_npz(os.path.join(p.data, "imagenet32", name), **changes)


def remove_npz(name):
    return lambda p: os.remove(os.path.join(p.data, "imagenet32", name))


def pickled_imagenet32(p):  # the other download: the same files without .npz, as pickles
    folder = os.path.join(p.data, "imagenet32")
    for name in os.listdir(folder):
        os.rename(os.path.join(folder, name), os.path.join(folder, name[:-len(".npz")]))


def label_1001(y):
    y = y.copy()
    y[0] = 1001
    return y


def truncate_npz(p):
    truncate_file(os.path.join(p.data, "imagenet32", TRAIN_FILES[4]))


def empty_class_folder(p):
    os.makedirs(os.path.join(p.data, "imagenet", "train", "n09999999"))


def flat_val(p):  # the devkit's val/: 50 000 JPEGs in one folder
    val = os.path.join(p.data, "imagenet", "val")
    for wnid in os.listdir(val):
        for name in os.listdir(os.path.join(val, wnid)):
            os.rename(os.path.join(val, wnid, name), os.path.join(val, name))
        os.rmdir(os.path.join(val, wnid))


def corrupt_jpeg(p):
    val = os.path.join(p.data, "imagenet", "val", "n01443537")
    p.jpeg = os.path.join(val, sorted(os.listdir(val))[0])
    truncate_file(p.jpeg)


def names_the_jpeg(p, err):
    assert f"cannot decode image {p.jpeg} (" in err


def cifar_folder(p):
    write_cifar(os.path.join(p.tmp, "c10"), n_train=10, n_test=10)


IMAGENET_CASES = [
    Case("imagenet-dataset-of-another-script", ["--dataset", "cifar10"],
         "invalid choice: 'cifar10'"),
    Case("imagenet-cs-samples-0", ["--cs_samples", "0"], "--cs_samples must be ≥ 1"),
    Case("imagenet-unknown-arch", [*FULL_SIZE, "--arch", "resnet21"],
         "unknown --arch 'resnet21'; the closest: resnet32, resnet20"),
    Case("imagenet-arch-without-batchnorm", [*FULL_SIZE, "--arch", "convnext_tiny"],
         "--arch imagenet_convnext_tiny has no Conv2d whose output goes only to a BatchNorm2d "
         "(it normalises with LayerNorm"),
    Case("imagenet32-batch-file-missing", [], "lacks train_data_batch_7.npz",
         remove_npz(TRAIN_FILES[6])),
    Case("imagenet32-val-file-missing", [], f"no {VAL_FILE} under", remove_npz(VAL_FILE)),
    Case("imagenet32-truncated-file", [], "is not a readable npz archive", truncate_npz),
    Case("imagenet32-wrong-npz-keys", [], "has keys ['images', 'labels', 'mean'], expected",
         npz(TRAIN_FILES[2], rename={"data": "images"})),
    Case("imagenet32-labels-from-0", [], "they count from 0",
         npz(TRAIN_FILES[0], labels=lambda y: y - 1)),
    Case("imagenet32-labels-above-1000", [], "labels in [1, 1001], expected 1..1000",
         npz(VAL_FILE, labels=label_1001)),
    Case("imagenet32-mean-wrong-size", [], "has a mean image of 1024 values",
         npz(TRAIN_FILES[9], mean=lambda m: m[:1024])),
    Case("imagenet32-64px-files", [], "expected uint8 N×3072",
         npz(TRAIN_FILES[1], data=lambda x: x.repeat(4, axis=1))),
    Case("imagenet32-pickled-files", [], "holds the pickled ImageNet32 files",
         pickled_imagenet32),
    Case("imagenet-empty-class-folder", FULL_SIZE, "train/n09999999 holds no images",
         empty_class_folder),
    Case("imagenet-val-not-by-class", FULL_SIZE, "images but no class folders", flat_val),
    Case("imagenet-corrupt-jpeg", FULL_SIZE, "then continue with --resume auto", corrupt_jpeg,
         check=names_the_jpeg, found_while_running=True),
    Case("imagenet-cifar-folder", ["--data_path", "{tmp}/c10"],
         "looks like a CIFAR folder; use notebook_cifar.py", cifar_folder),
    Case("imagenet-gsc-folder", [*FULL_SIZE, "--data_path", "{tmp}/gsc"],
         "looks like a Google Speech Commands folder; use notebook_gsc.py", gsc_folder),
    Case("imagenet32-folder-as-imagenet", [*FULL_SIZE, "--data_path", "{data}/imagenet32"],
         "looks like an ImageNet32 folder; use --dataset imagenet32"),
    Case("imagenet-folder-as-imagenet32", ["--data_path", "{data}/imagenet"],
         "looks like an ImageNet folder of JPEGs (train/<class>/…); use --dataset imagenet"),
    Case("imagenet-resume-other-cs-samples", [*RESUME, "--cs_samples", "100"],
         "made with --cs_samples 50000, this run asks for 100"),
]


# --- Speech Commands (notebook_gsc.py): its own tiny folder in the archive's layout ------------

GSC_BASE = ["--dataset", "gsc", "--arch", "resnet20", "--prune_rate_cs", "0.1",
            "--prune_rate_gm", "0.4", "--epochs", "2", "--batch_size", "16",
            "--batch_prune_size", "32", "--schedule", "1", "--gammas", "1", "--workers", "0",
            "--manualSeed", "1", "--device", "cpu", "--data_path", "{data}", "--save_path",
            "{fresh}"]  # the audio cache goes beside the snapshot: {tmp}/gsc_cache


def write_gsc_tiny(folder):
    write_gsc(folder, ("yes", "no", "bed"), clips_per_word=6, speakers=3, seconds=(0.3, 0.5))


def gsc_clip(p, n=0):
    return os.path.join(p.data, "yes", sorted(os.listdir(os.path.join(p.data, "yes")))[n])


def remove_lists(p):
    for name in ("validation_list.txt", "testing_list.txt"):
        os.remove(os.path.join(p.data, name))


def list_missing_clip(p):
    with open(os.path.join(p.data, "testing_list.txt"), "a") as f:
        f.write("yes/ffffffff_nohash_9.wav\n")


def garbage_wav(p):
    with open(gsc_clip(p), "wb") as f:
        f.write(b"<html>404 Not Found</html>")


def empty_wav(p):  # what an interrupted copy leaves
    open(gsc_clip(p, 1), "wb").close()


def wav_without_samples(p):
    write_wav(gsc_clip(p, 2), np.zeros(0, np.int16))


def wav_with_nan(p):
    """A float wav (what an editor or a converter may write) with a NaN sample."""
    import soundfile

    samples = np.zeros(8000, np.float32)
    samples[100] = np.nan
    soundfile.write(gsc_clip(p, 3), samples, 16000, subtype="FLOAT")


def remove_noise(p):
    shutil.rmtree(os.path.join(p.data, "_background_noise_"))


def v2_folder(p):
    write_wav(os.path.join(p.data, "backward", "0000abcd_nohash_0.wav"),
              np.ones(8000, np.int16))


def damaged_cache(part):
    """Build the cache the run will use, then damage one of its files."""
    def setup(p):
        from datasets.gsc import load_gsc
        cache = os.path.join(p.tmp, "gsc_cache")
        load_gsc(p.data, "gsc", cache, log=lambda *_: None)
        (entry,) = [n for n in os.listdir(cache) if not n.startswith(".")]
        path = os.path.join(cache, entry, part)
        if part == "manifest.json":
            with open(path, "w") as f:
                f.write("{not json")
        else:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    return setup


GSC_CASES = [
    Case("gsc-no-lists", [], "has no validation_list.txt", remove_lists),
    Case("gsc-list-names-a-missing-clip", [],
         "names yes/ffffffff_nohash_9.wav, which is not a clip",
         list_missing_clip),
    Case("gsc-corrupt-wav", [], "is not a readable wav file", garbage_wav, subprocess=True),
    Case("gsc-empty-wav", [], "is not a readable wav file", empty_wav),
    Case("gsc-wav-without-samples", [], "holds no samples", wav_without_samples),
    Case("gsc-wav-nan-samples", [], "holds NaN or infinite samples", wav_with_nan),
    Case("gsc-no-background-noise", [], "_background_noise_ is missing or holds no wav files",
         remove_noise),
    Case("gsc-v2-folder-as-gsc", [], "holds Speech Commands v0.02 (it has backward/); pass "
         "--dataset gsc_v2", v2_folder),
    Case("gsc-missing-data-path-offline", ["--data_path", "{tmp}/no-such-folder"],
         "could not download Speech Commands v0.01", patch=offline),
    Case("gsc-cifar-folder", ["--data_path", "{tmp}/c10"], "looks like a CIFAR folder",
         cifar_folder),
    Case("gsc-imagenet32-folder", ["--data_path", "{tmp}/imagenet32"],
         "looks like an ImageNet32 folder", imagenet32_folder),
    Case("gsc-unreadable-cache", [], "is unreadable or damaged (manifest.json",
         damaged_cache("manifest.json")),
    Case("gsc-truncated-cache", [], "is unreadable or damaged (clips.int16 has",
         damaged_cache("clips.int16")),
    Case("gsc-cache-dir-is-a-file", ["--cache_dir", "{earlier}/log.txt"],
         "log.txt is a file; pass --cache_dir with a folder"),
    Case("gsc-resume-other-multi-crop", [*RESUME, "--multi_crop"],
         "made with --multi_crop False, this run asks for True"),
]


@dataclass
class Script:
    module: object
    cases: list[Case]
    base: list[str]                  # the command every case adds its flags to
    write_data: Callable[[str], None]  # good tiny data under the folder given


SCRIPTS = {
    "cifar": Script(notebook_cifar, CASES, BASE,
                    lambda data: write_cifar(data, n_train=64, n_test=32)),
    "imagenet": Script(notebook_imagenet, IMAGENET_CASES, IMAGENET_BASE, write_imagenet_data),
    "gsc": Script(notebook_gsc, GSC_CASES, GSC_BASE, write_gsc_tiny),
}
PARAMS = [pytest.param(name, case, id=f"{name}:{case.id}")
          for name, script in SCRIPTS.items() for case in script.cases]


def unfinished_run(p):
    os.makedirs(os.path.join(p.tmp, "unfinished"))
    shutil.copy(os.path.join(p.earlier, "log.txt"), os.path.join(p.tmp, "unfinished"))


# compare.py works on finished snapshots: (id, folders, setup); each folder without a finished
# run gets a warning line, and with none left the last line is the error
COMPARE_CASES = [
    ("compare-empty-folder", ["{tmp}/empty"], lambda p: os.makedirs(os.path.join(p.tmp, "empty"))),
    ("compare-unfinished-run", ["{earlier}", "{tmp}/unfinished"], unfinished_run),
    ("compare-no-such-folder", ["{tmp}/no-such-run"], None),
]


def malformed_summary(p):
    """A finished run whose summary.json was edited by hand: a number turned into text."""
    write_finished_run(os.path.join(p.tmp, "edited"), epochs=2)
    path = os.path.join(p.tmp, "edited", "summary.json")
    summary = json.load(open(path))
    summary["final_top1"] = "91.2%"
    json.dump(summary, open(path, "w"))


# compare.py refuses, naming the file: (id, argv, the phrase, setup)
COMPARE_REFUSALS = [
    ("compare-malformed-summary", ["{tmp}/edited"],
     "{tmp}/edited/summary.json is malformed: its final_top1 is '91.2%'", malformed_summary),
    ("compare-out-is-a-file", ["{earlier}", "--out", "{earlier}/log.txt"],
     "--out {earlier}/log.txt is a file; give the folder the report goes into", None),
]


# reproduce.py refuses before it starts a job or writes a file: (id, argv, phrase, setup); the
# grid's folder holds a finished run of its first job, made with the same flags but for the
# case that changes them
GRID = ["--archs", "resnet56", "--seeds", "1", "--epochs", "2", "--save_path", "{grid}"]


def grid_run_of_other_epochs(grid):
    write_finished_run(os.path.join(grid, "resnet56-dense-s1"), epochs=200)


def grid_job_in_use(grid):
    """A run of the grid started by hand, still training (the finished run of the fixture,
    made with older flags, would be refused first)."""
    shutil.rmtree(os.path.join(grid, "resnet56-dense-s1"))
    os.makedirs(os.path.join(grid, "resnet56-fsdp-r50-s1"))
    return hold_lock(os.path.join(grid, "resnet56-fsdp-r50-s1"))


REPRODUCE_CASES = [
    ("reproduce-unknown-grid", ["cifar100", *GRID], "argument grid: invalid choice: 'cifar100'",
     None),
    ("reproduce-unknown-method", ["cifar10", *GRID, "--methods", "l1norm"],
     "argument --methods: invalid choice: 'l1norm'", None),
    ("reproduce-unknown-arch", ["cifar10", *GRID, "--archs", "resnet21"],
     "unknown --arch 'resnet21'", None),
    ("reproduce-gpu-not-there", ["cifar10", *GRID, "--gpus", "99"], "--gpus names GPU 99", None),
    ("reproduce-folder-of-other-flags", ["cifar10", *GRID],
     "holds a run made with --epochs 200, this grid asks for 2", grid_run_of_other_epochs),
    ("reproduce-flag-of-the-grid", ["cifar10", *GRID, "--", "--arch", "resnet20"],
     "--arch is set by the grid itself", None),
    ("reproduce-rate-and-target", ["cifar10", *GRID, "--rate", "0.4", "--target_flops", "0.5"],
     "--rate and --target_flops contradict each other", None),
    ("reproduce-job-folder-in-use", ["cifar10", *GRID], "resnet56-fsdp-r50-s1: "
     "{grid}/resnet56-fsdp-r50-s1 is in use by another process (pid ", grid_job_in_use),
    ("reproduce-save-path-is-a-file", ["cifar10", *GRID, "--save_path", "{grid}/notes.txt"],
     "--save_path {grid}/notes.txt is a file; give the grid's folder",
     lambda grid: open(os.path.join(grid, "notes.txt"), "w").close()),
]


# a model holding an op the compactor has no rule for trains, prunes the rest and compacts,
# keeping the op whole: (id, the run's model, the line of its log and of compact.py)
COMPACT_CASES = [
    ("compact-kept-whole-op", WithGroupNorm, "kept whole: 1 conv feeding 'norm' (GroupNorm)"),
    ("compact-kept-whole-timm-op", tf_mobilenet,
     "kept whole: 'conv_stem' (Conv2dSame: fx cannot trace it), 'blocks.0.0.conv_dw' "
     "(Conv2dSame: fx cannot trace it), 1 conv feeding 'blocks.1.0.conv_dw' (Conv2dSame: fx "
     "cannot trace it)"),
]


# compact.py on a run that has not finished: (id, argv after the snapshot, the phrase)
COMPACT_STATE_CASES = [
    ("compact-unfinished-run", [], "is the checkpoint of an unfinished run (after 1 of 2 "
     "epochs): its selected filters are not zero yet; finish it with --resume auto, or pass "
     "--allow_unfinished"),
]


# the installed package imported with a torch older than it needs: (id, the fake torch's
# version, the message); Python prints the failed import's traceback, the message last
PACKAGE_CASES = [
    ("import-with-old-torch", "2.1.0", "fsdp_pruning.UnsupportedTorch: fsdp_pruning needs torch "
     ">= 2.6 (tested with 2.14.1), this is torch 2.1.0: pip install 'torch>=2.6'"),
]


# --- fixtures and helpers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Per script: good data and one earlier run (1 real epoch), made once, copied per case."""
    made = {}

    def get(name):
        if name not in made:
            script, root = SCRIPTS[name], tmp_path_factory.mktemp(f"pristine-{name}")
            data, earlier = str(root / "data"), str(root / "earlier")
            script.write_data(data)
            argv = [a.format(data=data, fresh=earlier) for a in script.base] + ["--stop_after", "1"]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # 2 threads spin against other processes on a shared CPU
            try:
                assert entry(script.module, argv) == 0
            finally:
                torch.set_num_threads(threads)
            made[name] = SimpleNamespace(data=data, earlier=earlier)
        return made[name]

    return get


def make_paths(pristine, tmp_path):
    p = SimpleNamespace(tmp=str(tmp_path), data=str(tmp_path / "data"),
                        earlier=str(tmp_path / "earlier"), fresh=str(tmp_path / "fresh"),
                        marker=str(tmp_path / "PWNED"))
    shutil.copytree(pristine.data, p.data)
    shutil.copytree(pristine.earlier, p.earlier)  # copy2: mtimes are kept too
    p.batches = os.path.join(p.data, "cifar-10-batches-py")
    return p


@pytest.fixture
def paths(pristine, tmp_path):
    """CIFAR's paths, for the tests after the catalogue."""
    return make_paths(pristine("cifar"), tmp_path)


def run_script(module, argv, env=None, interpreter=True):
    """``python <script> argv``: in a new interpreter (its imports' own output on stderr
    included), or forked from the test's fork server (``tests.cli.Forked``)."""
    if not interpreter:
        proc = run_forked(os.path.basename(module.__file__), *argv, env=env, check=False)
        return proc.returncode, proc.stderr
    proc = subprocess.run([sys.executable, module.__file__, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def run_in_process(module, argv, capsys):
    try:
        code = entry(module, argv)
    except SystemExit as e:  # how argparse rejects a malformed command line
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, expect):
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("error: ") and expect in lines[0], err
    assert len(lines[0]) < 600, err


# --- the catalogue -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,case", PARAMS)
def test_bad_input_is_one_clear_line_and_leaves_earlier_runs_alone(name, case, pristine, tmp_path,
                                                                   capsys, monkeypatch):
    script = SCRIPTS[name]
    module, paths = script.module, make_paths(pristine(name), tmp_path)
    if case.setup:
        case.setup(paths)
    argv = [a.format(**vars(paths)) for a in script.base + case.flags]
    before = files_of(paths.earlier)

    if case.subprocess:
        code, err = run_script(module, argv, interpreter=case.interpreter)
    else:
        if case.patch:
            case.patch(monkeypatch)
        code, err = run_in_process(module, argv, capsys)
        monkeypatch.undo()

    assert_one_line_error(code, err, case.expect)
    after = files_of(paths.earlier)
    for name in case.may_grow:  # a resumed run logs that it resumed: appended, never rewritten
        assert after.pop(name)[0].startswith(before.pop(name)[0])
    assert after == before
    assert not os.path.exists(paths.marker), "a pickle ran code"
    if case.check:
        case.check(paths, err)
    if os.path.isdir(paths.fresh):  # nothing left that would block the corrected command
        left = set(os.listdir(paths.fresh)) & set(SNAPSHOT_FILES)
        if case.found_while_running:  # … given with --resume auto, as the message says
            assert "checkpoint.pt" not in left and "--resume auto" in err
        else:
            assert not left


@pytest.mark.parametrize("folders,setup", [c[1:] for c in COMPARE_CASES],
                         ids=[c[0] for c in COMPARE_CASES])
def test_compare_without_finished_runs_warns_per_folder_then_stops(folders, setup, paths,
                                                                     capsys):
    if setup:
        setup(paths)
    before = files_of(paths.earlier)
    folders = [a.format(**vars(paths)) for a in folders]
    code = compare.main([*folders, "--out", paths.fresh])  # what `python compare.py` runs
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and "Traceback" not in err
    assert len(lines) == len(folders) + 1 and lines[-1].startswith("error: no finished run")
    for folder, line in zip(folders, lines):
        assert line.startswith(f"warning: skipping {folder}: no finished run"), line
    assert files_of(paths.earlier) == before and not os.path.exists(paths.fresh)


@pytest.mark.parametrize("argv,expect,setup", [c[1:] for c in REPRODUCE_CASES],
                         ids=[c[0] for c in REPRODUCE_CASES])
def test_reproduce_refuses_before_it_runs_or_writes_anything(argv, expect, setup, tmp_path,
                                                             capsys, monkeypatch):
    grid = str(tmp_path / "grid")
    write_finished_run(os.path.join(grid, "resnet56-dense-s1"), epochs=2)
    held = setup(grid) if setup else None  # noqa: F841 (a lock stays held until the end)
    before = files_of(grid)

    def no_job(*_, **__):
        raise AssertionError("a job was started")
    monkeypatch.setattr(reproduce, "GridRunner", no_job)
    try:
        code = reproduce.main([a.format(grid=grid) for a in argv])
    except SystemExit as e:  # how argparse rejects a malformed command line
        code = e.code
    assert_one_line_error(code, capsys.readouterr().err, expect.format(grid=grid))
    assert code == 2 and files_of(grid) == before and os.listdir(tmp_path) == ["grid"]


@pytest.mark.parametrize("model_class,expect", [c[1:] for c in COMPACT_CASES],
                         ids=[c[0] for c in COMPACT_CASES])
def test_an_op_the_compactor_does_not_know_is_kept_whole_and_the_run_compacts(
        model_class, expect, paths, capsys, monkeypatch):
    """The run trains and prunes the rest; its log names what is kept whole, summary.json
    lists it (its convs at full width in kept_per_layer), and the compact network — code a
    model_compact.pt cannot hold — is a torch.export program equal to the soft-pruned network.
    compact.py on the snapshot says the same line and writes the program again."""
    arch_is(model_class)(monkeypatch)
    save = paths.fresh
    assert entry(notebook_cifar, [a.format(**vars(paths)) for a in BASE]) == 0
    log = open(os.path.join(save, "log.txt")).read()
    assert expect in log and "compact network: model_compact.pt2" in log
    summary = json.load(open(os.path.join(save, "summary.json")))
    kept = [c for p in summary["kept_whole"] for c in p["convs"]]
    modules = dict(model_class().named_modules())
    assert kept and all(summary["kept_per_layer"][c] == modules[c].out_channels for c in kept)
    assert summary["compact"]["path"] == "model_compact.pt2"
    assert summary["compact"]["max_rel_error"] < 1e-5
    assert not os.path.exists(os.path.join(save, "model_compact.pt"))
    program = torch.export.load(os.path.join(save, "model_compact.pt2")).module()
    ckpt = safe_load(os.path.join(save, "checkpoint.pt"))
    dense = model_class()
    dense.load_state_dict(ckpt["model"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = dense.eval()(x)
        assert ((program(x) - ref).abs().max() / ref.abs().max()) < 1e-5
    capsys.readouterr()
    arch_is(model_class, "utils.run.compact_run")(monkeypatch)  # where compact.py builds it
    os.remove(os.path.join(save, "model_compact.pt2"))
    assert compact_cli.main([save]) == 0
    out, err = capsys.readouterr()
    assert expect in out and "model_compact.pt2" in out and not err
    assert os.path.exists(os.path.join(save, "model_compact.pt2"))


@pytest.mark.parametrize("argv,expect,setup", [c[1:] for c in COMPARE_REFUSALS],
                         ids=[c[0] for c in COMPARE_REFUSALS])
def test_compare_refuses_in_one_line_naming_the_file(argv, expect, setup, paths, capsys):
    if setup:
        setup(paths)
    before = files_of(paths.earlier)
    argv = [a.format(**vars(paths)) for a in argv]
    import compare
    code = compare.main(argv)
    assert_one_line_error(code, capsys.readouterr().err, expect.format(**vars(paths)))
    assert code == 2 and files_of(paths.earlier) == before


@pytest.mark.parametrize("argv,expect", [c[1:] for c in COMPACT_STATE_CASES],
                         ids=[c[0] for c in COMPACT_STATE_CASES])
def test_compact_refuses_a_run_that_has_not_finished(argv, expect, paths, capsys):
    before = files_of(paths.earlier)  # stopped after 1 of its 2 epochs
    code = compact_cli.main([paths.earlier, *argv])
    assert_one_line_error(code, capsys.readouterr().err, expect)
    assert code == 2 and files_of(paths.earlier) == before


@pytest.mark.parametrize("version,expect", [c[1:] for c in PACKAGE_CASES],
                         ids=[c[0] for c in PACKAGE_CASES])
def test_import_with_an_unsupported_torch_names_the_versions(version, expect, installed,
                                                             tmp_path):
    fake = tmp_path / "old" / "torch"  # found first: what `import torch` would load
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "version.py").write_text(f"__version__ = '{version}'\n")
    done = run_user_code("import fsdp_pruning",
                         os.pathsep.join([str(tmp_path / "old"), str(installed.site)]), tmp_path)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == expect


def test_debug_shows_the_traceback(paths):
    truncate_checkpoint(paths)
    code, err = run_script(notebook_cifar,
                           [a.format(**vars(paths)) for a in BASE + RESUME + ["--debug"]],
                           interpreter=False)
    assert code != 0
    assert "Traceback" in err and "UserError" in err and "is corrupt or truncated" in err


def test_every_torch_load_is_weights_only():
    """Source check: a new torch.load without weights_only=True would reopen the hole."""
    unsafe = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .venv, .git
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load" and \
                        "weights_only=True" not in [ast.unparse(k) for k in node.keywords]:
                    unsafe.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not unsafe


def test_the_planted_pickles_would_run_code(tmp_path):
    """Guards the malicious cases against passing vacuously: trusted, they create the file."""
    target = tmp_path / "ran"
    pickle.loads(pickle.dumps({"model": Armed(str(target))}))  # what an unsafe torch.load does
    assert target.exists()


# --- what is accepted --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["state-dict", "module-prefixed", "our-checkpoint"])
def test_pretrain_path_accepts_common_forms(paths, capsys, form):
    ckpt_path = os.path.join(paths.earlier, "checkpoint.pt")
    ckpt = safe_load(ckpt_path)
    weights = os.path.join(paths.tmp, "weights.pt")
    if form == "state-dict":
        torch.save(ckpt["model"], weights)
    elif form == "module-prefixed":  # as saved from DataParallel / DDP
        torch.save({"module." + k: v for k, v in ckpt["model"].items()}, weights)
    else:
        weights = ckpt_path
    argv = [a.format(**vars(paths)) for a in BASE] + ["--evaluate", "--pretrain_path", weights]
    assert entry(notebook_cifar, argv) == 0
    out = capsys.readouterr().out
    # the same weights on the same test set give the earlier run's last test numbers
    last = ckpt["history"][-1]
    assert f"top1 {last['test_top1']:.2f}" in out and f"loss {last['test_loss']:.4f}" in out


def test_cs_data_missing_classes_is_a_warning_not_an_error(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_cifar(data, n_train=48, n_test=24, num_classes=3)  # labels 0–2 of CIFAR-10's 10
    save = str(tmp_path / "run")
    argv = [a.format(data=data, fresh=save) for a in BASE] + ["--epochs", "1"]
    assert entry(notebook_cifar, argv) == 0
    out, err = capsys.readouterr()
    warning = "no samples of classes {}".format([f"class{c}" for c in range(3, 10)])
    assert warning in out and "error" not in err
    assert warning in open(os.path.join(save, "log.txt")).read()
    assert os.path.exists(os.path.join(save, "summary.json"))


def test_the_troubleshooting_table_lists_the_catalogue_in_order():
    doc = open(os.path.join(ROOT, "docs", "troubleshooting.md"), encoding="utf-8").read()
    rows = [line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")]
    assert rows == ([case.id for script in SCRIPTS.values() for case in script.cases]
                    + [c[0] for c in COMPARE_CASES] + [c[0] for c in COMPARE_REFUSALS]
                    + [c[0] for c in REPRODUCE_CASES] + [c[0] for c in COMPACT_CASES]
                    + [c[0] for c in COMPACT_STATE_CASES] + [c[0] for c in PACKAGE_CASES])
