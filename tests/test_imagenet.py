"""ImageNet32 and full-size ImageNet: the loaders on generated files in the official formats, the
authors' file-by-file order with mirrors, the reference's normalisation bit for bit, and
notebook_imagenet.py end to end (snapshot, exact zero-filter counts, exact resume)."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.dataloader import default_collate

import datasets.imagenet32 as i32
import notebook_imagenet
from datasets.imagenet_folder import Normalise as FolderNormalise, imagenet_data
from tests.cli import entry, run_forked, run_in_process
from tests.fake_imagenet import (imagenet32_labels, truncate_file, write_imagenet32,
                                 write_imagenet_folder)
from tests.snapshots import assert_same_run, temporaries
from utils.errors import DataError
from utils.run.sampling import SeededDataset
from utils.method.schedule import count
from utils.run.save_path import SNAPSHOT_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_FILE = 11  # 22 items per file with its mirror, 220 an epoch
BATCH = 16


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory):
    return write_imagenet32(tmp_path_factory.mktemp("imagenet32"), per_file=PER_FILE, n_val=20)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    return write_imagenet_folder(str(tmp_path_factory.mktemp("imagenet")), n_train=4, n_val=2)


# --- ImageNet32 files ---------------------------------------------------------------------------

def test_imagenet32_round_trip_keeps_uint8_and_shifts_labels(npz_root, monkeypatch, tmp_path):
    monkeypatch.setattr(i32, "_CHUNK", 1000)  # many partial reads per file
    d = i32.load_imagenet32(npz_root)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (10 * PER_FILE, 3, 32, 32)
    assert d.sizes == (PER_FILE,) * 10 and d.val_x.shape == (20, 3, 32, 32)
    for k, name in enumerate(i32.TRAIN_FILES):
        with np.load(os.path.join(npz_root, name)) as f:
            rows = slice(k * PER_FILE, (k + 1) * PER_FILE)
            assert np.array_equal(d.train_x[rows].numpy().reshape(PER_FILE, -1), f["data"])
            assert np.array_equal(d.train_y[rows].numpy(), f["labels"] - 1)
            assert np.array_equal(d.means[k].numpy().ravel(), f["mean"] / 255)
    with np.load(os.path.join(npz_root, i32.VAL_FILE)) as f:
        assert np.array_equal(d.val_x.numpy().reshape(20, -1), f["data"])
        assert np.array_equal(d.val_y.numpy(), f["labels"] - 1)
    assert set(d.train_y.tolist()) == set((imagenet32_labels(4) - 1).tolist())
    assert d.train_y.min() == 0 and d.train_y.max() == 999

    # the reference's layout (train/ and val/) and compressed archives read the same
    other = tmp_path / "ref"
    os.makedirs(other / "train"), os.makedirs(other / "val")
    for name in i32.TRAIN_FILES:
        with np.load(os.path.join(npz_root, name)) as f:
            np.savez_compressed(other / "train" / name, **{k: f[k] for k in f.files})
    shutil.copy(os.path.join(npz_root, i32.VAL_FILE), other / "val")
    e = i32.load_imagenet32(str(other))
    assert torch.equal(e.train_x, d.train_x) and torch.equal(e.val_y, d.val_y)


def test_file_by_file_order_each_file_with_its_mirror(npz_root):
    sizes = (PER_FILE,) * 10
    order = i32.make_train_order(sizes)
    n = 10 * PER_FILE
    for seed in (1, 2):
        files = i32.file_order(seed)
        assert sorted(files) == list(range(10))
        epochs = [order(seed, e) for e in (0, 1)]
        for seq in epochs:
            assert len(seq) == 2 * n and sorted(seq.tolist()) == list(range(2 * n))
            for pos, k in enumerate(files):  # the run's file order, every epoch
                chunk = seq[pos * 2 * PER_FILE:(pos + 1) * 2 * PER_FILE]
                images = set(range(k * PER_FILE, (k + 1) * PER_FILE))
                assert set(chunk.tolist()) == images | {i + n for i in images}
                assert not torch.equal(chunk, i32.file_items(sizes, k))  # shuffled within
        assert not torch.equal(epochs[0], epochs[1])  # a new shuffle each epoch
        assert torch.equal(order(seed, 1), epochs[1])  # a function of (seed, epoch)
    assert i32.file_order(1) != i32.file_order(2)

    data = i32.imagenet32_data(npz_root, seed=1)
    first = i32.file_order(1)[0]
    # CS data: the first file of the run's order, then its mirror, in fixed order
    assert data.cs.indices == i32.file_items(sizes, first).tolist()
    x, y = data.cs[PER_FILE + 3]
    assert x["flip"] == 1 and x["file"] == first
    assert torch.equal(x["image"], data.train[first * PER_FILE + 3][0]["image"])
    assert data.test[0][0]["file"] == first and data.test[0][0]["flip"] == 0
    assert data.num_classes == 1000 and data.input_shape == (3, 32, 32)


def _reference_file(path, mean_from=None):
    """The reference's numpy for one file (its load_databatch/load_validation_data, retyped):
    pixels / float32(255) minus the mean / float32(255), planes stacked, NCHW; the training
    set is the file followed by its horizontal mirror."""
    with np.load(path) as f:
        x, y = f["data"], f["labels"]
        mean = f["mean"] if mean_from is None else mean_from
    x = x / np.float32(255)
    x -= mean / np.float32(255)
    s = 32 * 32
    x = np.dstack((x[:, :s], x[:, s:2 * s], x[:, 2 * s:]))
    x = x.reshape((x.shape[0], 32, 32, 3)).transpose(0, 3, 1, 2)
    return x, np.asarray(y) - 1


def test_normalise_and_mirror_are_bit_exact_with_the_reference(npz_root):
    seed = 5
    data = i32.imagenet32_data(npz_root, seed)
    first = i32.file_order(seed)[0]
    for k in (first, (first + 3) % 10):
        ref_x, ref_y = _reference_file(os.path.join(npz_root, i32.TRAIN_FILES[k]))
        ref = TensorDataset(torch.cat([torch.FloatTensor(ref_x),
                                       torch.FloatTensor(ref_x[:, :, :, ::-1].copy())]),
                            torch.cat([torch.LongTensor(ref_y), torch.LongTensor(ref_y)]))
        items = i32.file_items(data_sizes(data), k).tolist()
        x, y = default_collate([data.train[i] for i in items])
        out = data.batch_transform(x, None, "train")
        assert out.dtype == torch.float32 and torch.equal(out, ref.tensors[0])
        assert torch.equal(y, ref.tensors[1])
    with np.load(os.path.join(npz_root, i32.TRAIN_FILES[first])) as f:
        mean = f["mean"]
    val_x, val_y = _reference_file(os.path.join(npz_root, i32.VAL_FILE), mean_from=mean)
    x, y = default_collate([data.test[i] for i in range(len(data.test))])
    assert torch.equal(data.batch_transform(x, None, "test"), torch.from_numpy(val_x))
    assert torch.equal(y, torch.from_numpy(val_y))


def data_sizes(data):
    return tuple(np.diff(data.train.offsets))


# --- full-size ImageNet folders -----------------------------------------------------------------

def test_folder_transforms_draw_from_the_seeded_generator(folder_root):
    data = imagenet_data(folder_root, seed=3, cs_samples=5, crop=32, resize=36)
    assert data.classes == ["n01440764", "n01443537", "n01484850"]
    assert len(data.train) == 12 and len(data.test) == 6 and data.num_classes == 3
    assert data.train.labels.tolist() == [c for c in range(3) for _ in range(4)]
    train = SeededDataset(data.train)
    a, b, c = train[(5, 11)], train[(5, 11)], train[(5, 12)]
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 32, 32)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])  # random crop, per seed
    # the CS data: a fixed subset for a seed, with the deterministic eval transform
    assert len(data.cs) == 5
    again = imagenet_data(folder_root, seed=3, cs_samples=5, crop=32, resize=36)
    assert (again.cs.files == data.cs.files).all()
    assert not (imagenet_data(folder_root, 4, 5, 32, 36).cs.files == data.cs.files).all()
    cs = SeededDataset(data.cs)
    assert torch.equal(cs[(0, 1)][0], cs[(0, 2)][0])
    # per-channel mean/std on the device equal the usual float pipeline
    from PIL import Image
    from torchvision import transforms as T
    path = os.path.join(data.test.root, data.test.files[0].decode())
    usual = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(),
                       T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ours = FolderNormalise()(data.test[0][0][None], None, "test")[0]
    assert torch.allclose(ours, usual(Image.open(path).convert("RGB")), atol=1e-6)


def test_corrupt_jpeg_in_a_worker_is_a_data_error_naming_the_file(folder_root, tmp_path):
    root = shutil.copytree(folder_root, tmp_path / "data")
    data = imagenet_data(str(root), seed=3, cs_samples=10, crop=32, resize=36)
    bad = os.path.join(data.test.root, data.test.files[5].decode())
    truncate_file(bad)
    batches = iter(DataLoader(data.test, batch_size=6, num_workers=1))
    with pytest.raises(DataError) as e:
        next(batches)
    # stop the worker now: left to the garbage collector, its shutdown waits 5 s
    batches._shutdown_workers()
    message = str(e.value)
    # DataLoader keeps the class and prefixes the worker's traceback; the last line is ours
    last = message.strip().splitlines()[-1]
    assert f"cannot decode image {bad} (" in last and "--resume auto" in last


# --- the script --------------------------------------------------------------------------------

def test_dataset_picks_the_recipe_and_explicit_flags_win():
    parse = notebook_imagenet.parser().parse_args
    a = parse([])
    assert (a.dataset, a.arch, a.epochs, a.batch_size, a.learning_rate) == \
        ("imagenet32", "resnet56", 40, 128, 0.01)
    assert a.schedule == [1, 10, 20, 30] and a.gammas == [1, 0.1, 0.1, 0.1]
    assert (a.decay, a.attenuation, a.cs_mode, a.cs_samples) == (5e-4, 0.2, "eval", 50000)
    b = parse(["--dataset", "imagenet"])
    assert (b.arch, b.epochs, b.batch_size, b.learning_rate, b.decay) == \
        ("imagenet_resnet50", 100, 256, 0.1, 1e-4)
    assert b.schedule == [30, 60, 90] and b.gammas == [0.1, 0.1, 0.1]
    c = parse(["--epochs", "5", "--dataset", "imagenet", "--learning_rate", "0.05",
               "--arch", "imagenet_resnet18", "--workers", "3"])
    assert (c.epochs, c.learning_rate, c.arch, c.workers, c.batch_size) == \
        (5, 0.05, "imagenet_resnet18", 3, 256)
    # any torchvision classification model by its name; the CIFAR ResNets keep theirs
    assert parse(["--dataset", "imagenet", "--arch", "mobilenet_v3_small"]).arch == \
        "imagenet_mobilenet_v3_small"
    assert parse(["--dataset", "imagenet", "--arch", "resnet56"]).arch == "resnet56"
    assert parse(["--arch", "mobilenet_v2"]).arch == "mobilenet_v2"  # ImageNet32: 32×32 nets


# One compute thread per run: on a shared 2-core machine two OpenMP threads per process spin
# against the other processes and run ~15× slower; results do not depend on it.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(*args, env=None, check=True):
    """The script's command line: in this process, or with ``env`` (a crash point) in a
    process of its own (``tests.cli.Forked``), with one intra-op thread."""
    if env is None:
        return run_in_process(notebook_imagenet, *args, check=check)
    return run_forked("notebook_imagenet.py", *args, env={**ONE_THREAD, **env}, check=check)


def i32_args(root, save):
    return ["--dataset", "imagenet32", "--arch", "resnet20", "--prune_rate_cs", "0.1",
            "--prune_rate_gm", "0.4", "--data_path", root, "--save_path", save, "--epochs", "3",
            "--batch_size", str(BATCH), "--batch_prune_size", "64", "--workers", "0",
            "--manualSeed", "7", "--device", "cpu"]


@pytest.fixture(scope="module")
def i32_run(npz_root, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("runs") / "i32")
    run_script(*i32_args(npz_root, save))
    return save


def _check_snapshot(save, arch, epochs):
    """``epochs`` ≥ 3: with the authors' list-reuse rule the CS list of the final mask is the
    one of the last even epoch, and after epoch 0 (θ = 0) it is empty."""
    files = set(os.listdir(save))
    assert set(SNAPSHOT_FILES) <= files and not temporaries(save)
    rows = list(csv.DictReader(open(os.path.join(save, "metrics.csv"))))
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert float(rows[-1]["zeta"]) == 0.0 and 0 <= float(rows[-1]["test_top5"]) <= 100
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    summary = json.load(open(os.path.join(save, "summary.json")))
    assert summary["arch"] == arch and summary["final_top5"] == float(rows[-1]["test_top5"])
    widths = {n: ckpt["model"][n + ".weight"].shape[0] for n in summary["selected_per_layer"]}
    expected = {n: count(f, 0.1) + count(f, 0.4) for n, f in widths.items()}
    assert summary["selected_per_layer"] == expected == summary["zero_filters_per_layer"]
    for name, n in expected.items():  # ⌊F·0.1⌋ + ⌊F·0.4⌋ filters exactly zero per conv
        w = ckpt["model"][name + ".weight"].flatten(1)
        assert int((w.abs().sum(1) == 0).sum()) == n
    assert summary["compact"] is not None and summary["compact"]["flops_reduction"] > 0.4
    return summary


def test_imagenet32_end_to_end(i32_run):
    summary = _check_snapshot(i32_run, "resnet20", 3)
    assert len(summary["selected_per_layer"]) == 19
    log = open(os.path.join(i32_run, "log.txt")).read()
    assert "on imagenet32, 220 train / 20 test samples" in log  # every image and its mirror
    assert "CS pass: 22 samples" in log and "(eval mode)" in log  # first file + mirror
    assert "(train mode)" not in log and "epoch   1/3 lr 0.01 " in log
    args = json.load(open(os.path.join(i32_run, "args.json")))
    assert args["attenuation"] == 0.2 and args["cs_mode"] == "eval"


def test_stopped_and_killed_inside_files_then_resumed_matches_an_uninterrupted_run(
        npz_root, i32_run, tmp_path):
    save = str(tmp_path / "interrupted")
    args = i32_args(npz_root, save)
    # SIGTERM after batch 2 of epoch 1 (items 32–47 of 220): a checkpoint inside a file
    proc = run_script(*args, env={"FSDP_CRASH_AT": "train:1:2", "FSDP_CRASH_SIGNAL": "SIGTERM"},
                      check=False)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "SIGTERM: stopped in epoch 1 after batch 3" in proc.stdout
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 3) and 3 * BATCH % (2 * PER_FILE) != 0
    # resumed inside that file, then SIGKILLed inside the next one (items 64–79)
    proc = run_script(*args, "--resume", "auto", env={"FSDP_CRASH_AT": "train:1:4"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)["batch"] == 3
    run_script(*args, "--resume", "auto")
    assert_same_run(i32_run, save)


def test_full_size_end_to_end_from_a_torchvision_state_dict(folder_root, tmp_path):
    import torchvision
    torch.manual_seed(0)
    weights = torchvision.models.resnet18(num_classes=3)
    torch.save(weights.state_dict(), tmp_path / "r18.pt")
    save = str(tmp_path / "full")
    proc = run_script("--dataset", "imagenet", "--arch", "imagenet_resnet18", "--crop_size", "32",
                      "--resize_size", "36", "--data_path", folder_root, "--save_path", save,
                      "--epochs", "3", "--batch_size", "4", "--batch_prune_size", "8",
                      "--learning_rate", "0.01", "--workers", "1", "--manualSeed", "3",
                      "--use_pretrain", "--pretrain_path", str(tmp_path / "r18.pt"))
    summary = _check_snapshot(save, "imagenet_resnet18", 3)
    assert len(summary["selected_per_layer"]) == 20  # every conv of ResNet-18 has a BN
    # the run started from those weights: its first evaluation is ours of the same model
    data = imagenet_data(folder_root, 3, 50000, 32, 36)
    x, y = default_collate([data.test[i] for i in range(len(data.test))])
    with torch.no_grad():
        logits = weights.eval()(data.batch_transform(x, None, "test"))
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    top1 = 100 * (logits.argmax(1) == y).double().mean().item()
    assert f"before training: test top1 {top1:.2f} loss {loss:.4f}" in proc.stdout
    assert "(eval mode)" in open(os.path.join(save, "log.txt")).read()


def test_full_size_end_to_end_with_a_torchvision_mobilenet(folder_root, tmp_path):
    """``--arch`` takes any torchvision classification model: squeeze-excitation, hardswish and
    depthwise convs through training, per-epoch FLOPs, and the compact network."""
    save = str(tmp_path / "mnv3")
    run_script("--dataset", "imagenet", "--arch", "mobilenet_v3_small", "--crop_size", "64",
               "--resize_size", "72", "--data_path", folder_root, "--save_path", save,
               "--epochs", "2", "--method", "fpgm", "--prune_rate_gm", "0.4", "--batch_size",
               "4", "--batch_prune_size", "8", "--learning_rate", "0.01", "--workers", "0",
               "--manualSeed", "3")
    summary = json.load(open(os.path.join(save, "summary.json")))
    assert summary["arch"] == "imagenet_mobilenet_v3_small"
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    widths = {n: ckpt["model"][n + ".weight"].shape[0] for n in summary["selected_per_layer"]}
    assert len(widths) == 34  # the convs that feed a BatchNorm (the SE convs do not)
    assert summary["selected_per_layer"] == {n: count(f, 0.4) for n, f in widths.items()}
    c = summary["compact"]
    assert c["flops"] == summary["flops_pruned"] and c["params"] == summary["params_pruned"]
    assert c["flops_reduction"] > 0.3 and c["max_rel_error"] <= 1e-5
    assert os.path.exists(os.path.join(save, "model_compact.pt"))


def test_full_size_end_to_end_with_a_timm_model_from_a_local_file(folder_root, tmp_path):
    """``--arch timm:NAME``: timm's MobileNetV3 (BatchNormAct2d with hard-swish everywhere,
    squeeze-excitation) from weights in a local file — what ``--use_pretrain`` needs offline —
    through FSDP's 3 epochs (CS passes on the fused BatchNorms), to an exact compact network."""
    import timm

    from utils.compaction import load_compact

    torch.manual_seed(0)
    arch = "timm:mobilenetv3_small_050"
    weights = timm.create_model("mobilenetv3_small_050", num_classes=3)
    torch.save(weights.state_dict(), tmp_path / "w.pt")
    save = str(tmp_path / "timm")
    argv = ["--dataset", "imagenet", "--arch", arch, "--crop_size", "32", "--resize_size", "36",
            "--data_path", folder_root, "--save_path", save, "--epochs", "3", "--batch_size",
            "4", "--batch_prune_size", "8", "--learning_rate", "0.01", "--workers", "0",
            "--manualSeed", "3", "--use_pretrain", "--pretrain_path", str(tmp_path / "w.pt")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert entry(notebook_imagenet, argv) == 0
    finally:
        torch.set_num_threads(threads)
    summary = _check_snapshot(save, arch, 3)
    assert len(summary["selected_per_layer"]) == 34  # every conv feeding a BatchNormAct2d
    # the run started from the file's weights: its first evaluation is ours of that model
    data = imagenet_data(folder_root, 3, 50000, 32, 36)
    x, y = default_collate([data.test[i] for i in range(len(data.test))])
    with torch.no_grad():
        logits = weights.eval()(data.batch_transform(x, None, "test"))
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    log = open(os.path.join(save, "log.txt")).read()
    assert f"before training: test top1 {100 * (logits.argmax(1) == y).double().mean().item():.2f}"\
        f" loss {loss:.4f}" in log
    assert summary["compact"]["max_rel_error"] <= 1e-5
    # the saved compact network computes what the final soft-pruned one does
    model = timm.create_model("mobilenetv3_small_050", num_classes=3)
    model.load_state_dict(torch.load(os.path.join(save, "checkpoint.pt"),
                                     weights_only=True)["model"])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.eval()(images)
        out = load_compact(os.path.join(save, "model_compact.pt"))(images)
    assert ((ref - out).abs().max() / ref.abs().max()).item() <= 1e-5
