"""Speech Commands data: splits by the lists, silence and unknown, background noise rows, the
wav cache (reused, rebuilt when the data change, never in the data folder), resampling and
stereo, the archive route, the balanced sampler and the CS data."""
import os
import shutil
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

import notebook_gsc
from datasets import gsc
from datasets.gsc import CLASSES, load_gsc
from datasets.wav_cache import resample
from tests.fake_gsc import write_gsc, write_wav
from tests.snapshots import files_of
from utils.errors import DataError

WORDS = ("yes", "no", "up", "bed", "cat")  # bed, cat: unknown


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gsc") / "speech")
    counts = write_gsc(root, WORDS, clips_per_word=12, speakers=6, seed=1)
    return root, counts


def load(root, cache, **kw):
    lines = []
    data = load_gsc(root, kw.pop("dataset", "gsc"), cache, log=lines.append, **kw)
    return data, lines


def test_splits_follow_the_lists_with_silence_and_unknown(folder, tmp_path):
    root, counts = folder
    data, lines = load(root, str(tmp_path / "cache"))
    for split, name, silence in ((data.train, "training", True), (data.valid, "validation", True),
                                 (data.test, "testing", False)):
        n = sum(counts[name].values())
        assert n > 0
        got = split.class_counts()
        assert got[CLASSES.index("silence")] == (int(0.1 * n) if silence else 0)
        assert got[CLASSES.index("unknown")] == counts[name]["bed"] + counts[name]["cat"]
        for word in ("yes", "no", "up"):
            assert got[CLASSES.index(word)] == counts[name][word]
        assert len(split) == n + got[1]
    assert any("no folder for the keywords" in line and "'down'" in line for line in lines)
    # items: the clip's samples, zero-padded to 1 s, with the true length; silence: zeros
    listed = open(os.path.join(root, "validation_list.txt")).read().split()
    first = sorted(listed)[0]
    samples, rate = soundfile.read(os.path.join(root, first), dtype="int16")
    x, y = data.valid[0]
    assert rate == 16000 and y == CLASSES.index(first.split("/")[0] if first.split("/")[0] in
                                                 CLASSES else "unknown")
    assert x["wave"].dtype == torch.int16 and x["wave"].shape == (16000,)
    assert x["length"] == len(samples) < 16000
    assert np.array_equal(x["wave"][:len(samples)].numpy(), samples)
    assert not x["wave"][len(samples):].any()
    x, y = data.valid[len(data.valid) - 1]
    assert y == CLASSES.index("silence") and x["length"] == 16000 and not x["wave"].any()
    # the background noise: both files concatenated (sorted), cut into 1-s rows
    folder = os.path.join(root, "_background_noise_")
    noise = np.concatenate([soundfile.read(os.path.join(folder, f), dtype="int16")[0]
                            for f in ("noise_0.wav", "noise_1.wav")])
    rows = len(noise) // 16000
    assert data.noise.shape == (rows, 16000) and rows == 4
    assert np.array_equal(data.noise.numpy().ravel(), noise[:rows * 16000])


def test_the_cache_is_reused_rebuilt_when_the_data_change_and_kept_out_of_the_data(
        folder, tmp_path):
    root = str(tmp_path / "speech")
    shutil.copytree(folder[0], root)
    before = files_of(root)
    cache = str(tmp_path / "cache")
    data, lines = load(root, cache)
    assert any(line.startswith("decoding ") for line in lines)
    (entry,) = [n for n in os.listdir(cache) if not n.startswith(".")]
    manifest = os.path.join(cache, entry, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    again, lines = load(root, cache)
    assert not any(line.startswith("decoding ") for line in lines)  # reused
    assert os.stat(manifest).st_mtime_ns == stamp
    assert torch.equal(again.train[3][0]["wave"], data.train[3][0]["wave"])
    assert files_of(root) == before  # nothing written into the user's folder
    # a clip changes: the next run decodes again and sees the new samples
    name = sorted(open(os.path.join(root, "testing_list.txt")).read().split())[0]
    new = (np.arange(16000) % 200 - 100).astype(np.int16) * 50
    write_wav(os.path.join(root, name), new)
    changed, lines = load(root, cache)
    assert any(line.startswith("decoding ") for line in lines)
    assert np.array_equal(changed.test[0][0]["wave"].numpy(), new)
    assert changed.test[0][0]["length"] == 16000
    assert [n for n in os.listdir(cache) if not n.startswith(".")] == [entry]  # replaced


def test_other_sample_rates_are_resampled_and_stereo_averaged(tmp_path):
    root = str(tmp_path / "speech")
    write_gsc(root, ("yes", "no"), clips_per_word=4, speakers=2, seed=2)
    t8 = np.arange(8000) / 8000
    write_wav(os.path.join(root, "yes", "slow_nohash_0.wav"),
              np.round(0.5 * np.sin(2 * np.pi * 440 * t8) * 32767).astype(np.int16), rate=8000)
    left = np.round(0.4 * np.sin(2 * np.pi * 300 * np.arange(12000) / 16000) * 32767)
    stereo = np.stack([left, np.zeros_like(left)], 1).astype(np.int16)
    soundfile.write(os.path.join(root, "no", "wide_nohash_0.wav"), stereo, 16000, subtype="PCM_16")
    data, lines = load(root, str(tmp_path / "cache"))
    warnings = [line for line in lines if line.startswith("warning: under")]
    assert len(warnings) == 1 and "1 clips are not at 16 kHz" in warnings[0] \
        and "1 stereo clips" in warnings[0]
    by_length = {int(data.train[i][0]["length"]): data.train[i][0]["wave"]
                 for i in range(len(data.train))}
    t16 = np.arange(16000) / 16000
    assert 16000 in by_length and 12000 in by_length
    sine = by_length[16000].numpy() / 32768
    assert np.abs(sine - 0.5 * np.sin(2 * np.pi * 440 * t16)).max() < 2e-3
    assert np.abs(by_length[12000][:12000].numpy() - left / 2).max() <= 1


def test_resample_keeps_a_band_limited_signal():
    t = np.arange(4410) / 44100
    x = np.sin(2 * np.pi * 1000 * t) + 0.3 * np.cos(2 * np.pi * 3000 * t)
    y = resample(x, 44100, 16000)
    t16 = np.arange(1600) / 16000
    assert len(y) == 1600
    assert np.abs(y - (np.sin(2 * np.pi * 1000 * t16) + 0.3 * np.cos(2 * np.pi * 3000 * t16))
                  ).max() < 1e-9


def test_v002_folders_need_gsc_v2(tmp_path):
    root = str(tmp_path / "v2")
    write_gsc(root, ("yes", "backward"), clips_per_word=4, speakers=2, seed=3)
    with pytest.raises(DataError, match="holds Speech Commands v0.02 .* pass --dataset gsc_v2"):
        load(root, str(tmp_path / "cache"))
    data, _ = load(root, str(tmp_path / "cache"), dataset="gsc_v2")
    unknown = sum(int(s.class_counts()[0]) for s in (data.train, data.valid, data.test))
    assert unknown == 4  # backward is an unknown word
    v1 = str(tmp_path / "v1")
    write_gsc(v1, ("yes",), clips_per_word=4, speakers=2, seed=3)
    with pytest.raises(DataError, match="holds Speech Commands v0.01"):
        load(v1, str(tmp_path / "cache"), dataset="gsc_v2")


def test_an_archive_placed_in_the_folder_is_extracted_there(folder, tmp_path, monkeypatch):
    """The offline route for a machine that cannot download: the .tar.gz in --data_path."""
    import hashlib
    archive_dir = tmp_path / "archive"
    shutil.copytree(folder[0], archive_dir)
    root = tmp_path / "data"
    root.mkdir()
    tar_path = root / "speech_commands_v0.01.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:  # flat, like the real archive
        for name in sorted(os.listdir(archive_dir)):
            tar.add(archive_dir / name, arcname=f"./{name}")
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    monkeypatch.setitem(gsc.VERSIONS, "gsc", gsc._Version(
        "Speech Commands v0.01", "https://example.invalid/speech_commands_v0.01.tar.gz", md5))
    data, _ = load(str(root), str(tmp_path / "cache"))
    assert sorted(os.listdir(root)) == sorted(os.listdir(archive_dir) + [tar_path.name])
    original, _ = load(folder[0], str(tmp_path / "cache2"))
    assert [len(s) for s in (data.train, data.valid, data.test)] == \
        [len(s) for s in (original.train, original.valid, original.test)]


def make_args(root, tmp_path, **kw):
    args = notebook_gsc.parser().parse_args(
        ["--data_path", root, "--save_path", str(tmp_path / "run"), "--manualSeed", "3"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_the_sampler_balances_the_classes(folder, tmp_path):
    data = notebook_gsc.make_data(make_args(folder[0], tmp_path))
    labels = torch.as_tensor(data.train.labels)
    counts = torch.bincount(labels, minlength=12)
    present = counts > 0
    assert int(present.sum()) == 5  # unknown, silence, yes, no, up
    drawn = torch.cat([data.train_order(3, epoch) for epoch in range(400)])
    assert len(data.train_order(3, 0)) == len(data.train)
    assert torch.equal(data.train_order(3, 5), data.train_order(3, 5))  # f(seed, epoch)
    share = torch.bincount(labels[drawn], minlength=12)[present].double() / len(drawn)
    # unknown has 4× the clips of silence, yet each class gets ~1/5 of the draws
    assert counts[0] >= 4 * counts[1]
    assert (share - 0.2).abs().max() < 0.02, share


def test_the_cs_data_is_the_validation_split_with_the_evaluation_features(folder, tmp_path):
    data = notebook_gsc.make_data(make_args(folder[0], tmp_path))
    assert data.cs is not data.train and data.cs is not data.test
    assert data.cs.class_counts()[1] == int(0.1 * sum(folder[1]["validation"].values()))
    assert data.input_shape == (1, 32, 32) and data.in_channels == 1 and data.num_classes == 12
    assert data.classes == CLASSES
    batch = torch.utils.data.default_collate([data.cs[i] for i in range(len(data.cs))])
    x, _ = batch
    cs = data.batch_transform(x, torch.arange(len(data.cs)), "cs")
    test = data.batch_transform(x, None, "test")
    assert cs.shape == (len(data.cs), 1, 32, 32) and torch.equal(cs, test)  # no randomness
    multi = notebook_gsc.make_data(make_args(folder[0], tmp_path, multi_crop=True))
    assert multi.batch_transform(x, None, "test").shape == (len(data.cs), 4, 1, 32, 32)
    assert torch.equal(multi.batch_transform(x, None, "cs"), cs)


def test_the_cache_sits_beside_the_snapshot_unless_cache_dir_says(tmp_path):
    args = SimpleNamespace(cache_dir=None, save_path=str(tmp_path / "snapshots" / "run1"))
    assert notebook_gsc.cache_root(args) == str(tmp_path / "snapshots" / "gsc_cache")
    args.cache_dir = str(tmp_path / "elsewhere")
    assert notebook_gsc.cache_root(args) == str(tmp_path / "elsewhere")
