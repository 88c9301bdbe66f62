"""CIFAR/Fashion-MNIST loaders and ImageDataset: round trips, bad input, safety, augmentation."""
import os
import pickle

import numpy as np
import pytest
import torch

from datasets.cifar import load_cifar
from datasets.fashion import DEMO_DIR, load_fashion_demo, read_idx
from datasets.images import ImageDataset, ImageSplits
from tests.fakedata import (corrupt_cifar_batch, plant_malicious_batch, py2_cifar_batch,
                            read_batch, write_cifar)
from utils.errors import DataError, UserError


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# --- CIFAR round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_round_trip(tmp_path, name, classes):
    folder = write_cifar(tmp_path, name=name, n_train=250, n_test=120, seed=3)
    splits = load_cifar(str(tmp_path), name, download=False)
    assert isinstance(splits, ImageSplits)
    assert splits.train_x.shape == (250, 3, 32, 32) and splits.train_x.dtype == torch.uint8
    assert splits.test_x.shape == (120, 3, 32, 32)
    assert splits.train_y.dtype == torch.int64 and splits.train_y.shape == (250,)
    assert splits.num_classes == classes and splits.in_channels == 3
    assert splits.classes[1] == "class1"
    assert len(splits.mean) == len(splits.std) == 3
    assert int(splits.train_y.max()) < classes
    # Pixels survive the trip: R plane of the first image of the last training batch.
    last = "data_batch_5" if name == "cifar10" else "train"
    raw = read_batch(os.path.join(folder, last))[b"data"]
    assert torch.equal(splits.train_x[-len(raw):].reshape(len(raw), -1), torch.from_numpy(raw))


def test_cifar_constants_match_reference(tmp_path):
    write_cifar(tmp_path, n_train=10, n_test=10)
    splits = load_cifar(str(tmp_path), download=False)
    assert splits.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert splits.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))


def test_cifar_reads_python2_pickles_and_missing_meta(tmp_path):
    folder = write_cifar(tmp_path, n_train=10, n_test=10)
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        f.write(py2_cifar_batch(data, [0, 3, 9, 1]))
    os.remove(os.path.join(folder, "batches.meta"))
    splits = load_cifar(str(tmp_path), download=False)
    assert splits.test_y.tolist() == [0, 3, 9, 1]
    assert torch.equal(splits.test_x.reshape(4, -1), torch.from_numpy(data))
    assert splits.classes == [str(i) for i in range(10)]


def test_cifar_accepts_the_batches_folder_itself(tmp_path):
    folder = write_cifar(tmp_path, n_train=10, n_test=10)
    assert len(load_cifar(folder, download=False).train_y) == 10


# --- CIFAR bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,fragment", [
    ("truncate", "truncated or corrupt"),
    ("garbage", "truncated or corrupt"),
    ("labels_range", "outside [0, 10)"),
    ("labels_length", "labels"),
    ("shape", "expected uint8 N×3072"),
    ("dtype", "float32"),
    ("missing_key", "no 'data' entry"),
    ("not_dict", "not a dict"),
])
def test_cifar_malformed_batch(tmp_path, kind, fragment):
    folder = write_cifar(tmp_path, n_train=50, n_test=20)
    corrupt_cifar_batch(os.path.join(folder, "data_batch_3"), kind)
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), download=False)
    _one_line_error(excinfo, "data_batch_3", fragment)


def test_cifar100_labels_out_of_range(tmp_path):
    folder = write_cifar(tmp_path, name="cifar100", n_train=50, n_test=20)
    corrupt_cifar_batch(os.path.join(folder, "test"), "labels_range")
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), "cifar100", download=False)
    _one_line_error(excinfo, "outside [0, 100)")


def test_cifar_missing_file_and_empty_split(tmp_path):
    folder = write_cifar(tmp_path, n_train=50, n_test=20)
    os.remove(os.path.join(folder, "data_batch_2"))
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), download=True)  # reported, not downloaded over
    _one_line_error(excinfo, "lacks data_batch_2", "delete the folder")

    write_cifar(tmp_path / "empty", n_train=0, n_test=20)
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path / "empty"), download=False)
    _one_line_error(excinfo, "train split", "no images")


def test_cifar_meta_disagrees(tmp_path):
    folder = write_cifar(tmp_path, n_train=10, n_test=10)
    meta = os.path.join(folder, "batches.meta")
    with open(meta, "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b"]}, f)
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), download=False)
    _one_line_error(excinfo, "batches.meta", "lists 2")


def test_cifar_refuses_malicious_pickle(tmp_path):
    folder = write_cifar(tmp_path, n_train=10, n_test=10)
    target = tmp_path / "pwned"
    plant_malicious_batch(os.path.join(folder, "data_batch_1"), target)
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), download=False)
    _one_line_error(excinfo, "data_batch_1", "io.open")
    assert not target.exists()


def test_cifar_missing_folder_without_download(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path), download=False)
    _one_line_error(excinfo, "cifar-10-batches-py", "not found")
    with pytest.raises(UserError):
        load_cifar(str(tmp_path), "cifar1000")


def test_cifar_failed_download_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def half_then_fail(url, download_root, extract_root=None, md5=None, **_):
        # Simulate an extraction cut short: some files land, then the network drops.
        os.makedirs(os.path.join(extract_root, "cifar-10-batches-py"))
        open(os.path.join(extract_root, "cifar-10-batches-py", "test_batch"), "wb").close()
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", half_then_fail)
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path))
    _one_line_error(excinfo, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    str(tmp_path), "Network is unreachable")
    assert os.listdir(tmp_path) == []


def test_cifar_download_extracts_into_place(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def fake_download(url, download_root, extract_root=None, md5=None, **_):
        assert md5 == "eb9058c3a382ffc7106e4002c42a8d85"
        write_cifar(extract_root, name="cifar100", n_train=20, n_test=10)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    splits = load_cifar(str(tmp_path / "data"), "cifar100")
    assert len(splits.train_y) == 20
    assert os.listdir(tmp_path / "data") == ["cifar-100-python"]


@pytest.mark.parametrize("files,fragment", [
    (["train_data_batch_1.npz", "val_data.npz"], "ImageNet32"),
    (["train_data_batch_1", "val_data"], "ImageNet32"),
    (["_background_noise_/", "validation_list.txt"], "Speech Commands"),
    (["cifar-100-python/"], "use dataset 'cifar100'"),
])
def test_cifar_rejects_other_layouts(tmp_path, monkeypatch, files, fragment):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", pytest.fail)  # must not download
    for name in files:
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_cifar(str(tmp_path))
    _one_line_error(excinfo, str(tmp_path), fragment)


# --- ImageDataset --------------------------------------------------------------------------------

def _images(n=6, c=3, h=32, w=32):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_image_dataset_eval_is_deterministic_and_normalised():
    x = _images()
    ds = ImageDataset(x, torch.arange(6), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)
    img, label = ds[2]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32) and label == 2
    assert isinstance(label, int)
    torch.testing.assert_close(img, (x[2].float() / 255 - 0.5) / 0.25)
    assert torch.equal(ds[2][0], img)


def test_image_dataset_pads_small_images():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    ds = ImageDataset(x, torch.tensor([0, 1]), (0.0,), (1.0,), train=False)
    img, _ = ds[0]
    assert img.shape == (1, 32, 32)
    assert img[:, 2:30, 2:30].eq(1).all()
    assert img.sum() == 28 * 28  # the 2-pixel border is zeros
    train_img, _ = ImageDataset(x, torch.tensor([0, 1]), (0.0,), (1.0,), train=True)[1]
    assert train_img.shape == (1, 32, 32)


def test_image_dataset_train_randomness_is_seeded():
    x = _images(n=4)
    ds = ImageDataset(x, torch.arange(4), (0.5,) * 3, (0.5,) * 3, train=True)
    torch.manual_seed(7)
    first = [ds[i % 4][0] for i in range(16)]
    torch.manual_seed(7)
    again = [ds[i % 4][0] for i in range(16)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # ...and it is actually random: crops/flips differ between draws of the same image.
    assert not all(torch.equal(first[i], first[i + 4]) for i in range(12))


def test_image_dataset_train_crop_is_a_shifted_window():
    x = _images(n=1)
    ds = ImageDataset(x, torch.tensor([0]), (0.0,) * 3, (1.0,) * 3, train=True, pad=4)
    padded = torch.nn.functional.pad(x[0], (4,) * 4).float() / 255
    torch.manual_seed(0)
    for _ in range(10):
        img, _ = ds[0]
        windows = [padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(-1)) for w in windows)


def test_image_dataset_rejects_bad_input():
    with pytest.raises(ValueError):
        ImageDataset(_images().float(), torch.arange(6), (0.5,) * 3, (0.5,) * 3, train=False)
    with pytest.raises(ValueError):
        ImageDataset(_images(), torch.arange(5), (0.5,) * 3, (0.5,) * 3, train=False)
    with pytest.raises(ValueError):
        ImageDataset(_images(), torch.arange(6), (0.5,), (0.5,), train=False)


# --- Fashion-MNIST demo --------------------------------------------------------------------------

def test_fashion_demo_loads():
    splits = load_fashion_demo(str(DEMO_DIR))
    assert splits.train_x.shape == (3000, 1, 28, 28) and splits.train_x.dtype == torch.uint8
    assert splits.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(splits.train_y).tolist() == [300] * 10
    assert torch.bincount(splits.test_y).tolist() == [100] * 10
    assert splits.classes[0] == "T-shirt/top" and splits.classes[-1] == "Ankle boot"
    assert splits.num_classes == 10 and splits.in_channels == 1
    assert 0.2 < splits.mean[0] < 0.4 and 0.25 < splits.std[0] < 0.45
    img, _ = ImageDataset(splits.train_x, splits.train_y, splits.mean, splits.std, train=True)[0]
    assert img.shape == (1, 32, 32)


def test_fashion_demo_is_small():
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir()) <= 5 * 2**20


def test_fashion_bad_files(tmp_path):
    import gzip

    with pytest.raises(DataError) as excinfo:
        load_fashion_demo(str(tmp_path))
    _one_line_error(excinfo, "train-images-idx3-ubyte.gz", "not found")

    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError) as excinfo:
        read_idx(str(bad), ndim=1)
    _one_line_error(excinfo, "not a valid gzip")

    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 5])))  # image magic in a label file
    with pytest.raises(DataError) as excinfo:
        read_idx(str(bad), ndim=1)
    _one_line_error(excinfo, "magic number")

    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2])))  # 5 promised, 2 given
    with pytest.raises(DataError) as excinfo:
        read_idx(str(bad), ndim=1)
    _one_line_error(excinfo, "holds 2 bytes")
