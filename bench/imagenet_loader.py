"""ImageNet data pipelines: memory of the ImageNet32 data, and loader speed against training.

    python -m bench.imagenet_loader [--scale 0.1] [--jpegs 128] [--rounds 3] [--tmp DIR]

Memory (generated official-format npz files at ``--scale`` of the real size, 10 training files
and the val file): peak resident memory added by loading, ÷ the images' uint8 size, each in a
fresh process, with the peak counter reset after the imports.
``imagenet32_peak_vs_uint8`` is ours (target ≤ 1.2): one preallocated uint8 tensor filled
straight from the archives. ``reference_peak_vs_uint8`` is the reference's approach, rewritten
here for measurement only: each file decoded to float32, the mean subtracted, concatenated
with its mirror as FloatTensors; the CS file and the validation set held as float32 all run.

Speed, on this machine's CPU, interleaving the sides and taking medians:
``imagenet_loader_vs_training`` = images/s of the full-size train loader (RandomResizedCrop 224
+ flip on generated ImageNet-size JPEGs, 2 workers, normalised per batch) ÷ ResNet-50 training
images/s (224×224, 1000 classes, SGD step); ``imagenet32_loader_vs_training`` = the ImageNet32
train loader (file-by-file order with mirrors, 2 workers, normalised per batch) ÷ ResNet-56
training images/s (32×32, 1000 classes). Targets ≥ 2: the loader never starves the model.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REAL_TRAIN_PER_FILE, REAL_VAL = 128116, 50000  # ImageNet32: 1 281 167 train images in 10 files


def write_npz(root: str, scale: float) -> int:
    """Random official-format files; returns the images' uint8 bytes (train + val)."""
    from datasets.imagenet32 import TRAIN_FILES, VAL_FILE

    rng = np.random.default_rng(0)
    n, total = int(REAL_TRAIN_PER_FILE * scale), 0
    mean = rng.uniform(80, 160, 3072)
    for name in TRAIN_FILES:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        np.savez(os.path.join(root, name), data=x, labels=rng.integers(1, 1001, n), mean=mean)
        total += x.nbytes
    x = rng.integers(0, 256, (int(REAL_VAL * scale), 3072), dtype=np.uint8)
    np.savez(os.path.join(root, VAL_FILE), data=x, labels=rng.integers(1, 1001, len(x)))
    return total + x.nbytes


# --- memory: run in a child process each --------------------------------------------------------

def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _ours(root):
    from datasets.imagenet32 import imagenet32_data
    return imagenet32_data(root, seed=1)


def _reference(root):
    """The reference's data handling (its notebook_imnet.py and imagenet_utils.py), retyped."""
    from datasets.imagenet32 import TRAIN_FILES, VAL_FILE

    def load(name, mean=None):
        with np.load(os.path.join(root, name)) as f:
            x, y = f["data"], f["labels"]
            mean = f["mean"] / np.float32(255) if mean is None else mean
        x = x / np.float32(255)
        x -= mean
        s = 32 * 32
        x = np.dstack((x[:, :s], x[:, s:2 * s], x[:, 2 * s:]))
        return x.reshape((x.shape[0], 32, 32, 3)).transpose(0, 3, 1, 2), np.asarray(y) - 1, mean

    def mirrored(x, y):
        return (torch.cat([torch.FloatTensor(x), torch.FloatTensor(x[:, :, :, ::-1].copy())]),
                torch.cat([torch.LongTensor(y), torch.LongTensor(y)]))

    x, y, mean = load(TRAIN_FILES[0])
    cs = mirrored(x, y)  # the prune loader's data, kept all run
    del x, y
    x, y, _ = load(VAL_FILE, mean)
    test = (torch.FloatTensor(x), torch.LongTensor(y))
    del x, y
    for name in TRAIN_FILES:  # one epoch: each file decoded again
        x, y, _ = load(name)
        train = mirrored(x, y)
        del x, y, train
    return cs, test


def child(which: str, root: str) -> None:
    import datasets.imagenet32  # noqa: F401 - imports before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    base = _status("VmRSS")
    kept = (_ours if which == "ours" else _reference)(root)
    print(_status("VmHWM") - base, _status("VmRSS") - base)
    del kept


def peak_bytes(which: str, root: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-m", "bench.imagenet_loader", "--child", which, root],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


# --- speed ----------------------------------------------------------------------------------------

def write_jpegs(root: str, n: int, classes: int = 4) -> float:
    """ImageNet-like JPEGs: 500×375 or 375×500, quality 90, smooth content with texture, ~110 kB
    each like ILSVRC-2012's average; returns their mean size in kB."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        base = rng.uniform(0, 255, 3)[:, None, None] * (0.5 + 0.5 * np.sin(
            rng.uniform(2, 12) * (xx * rng.uniform(-1, 1) + yy) + rng.uniform(0, 6)))
        img = np.clip(base + rng.normal(0, 28, (3, h, w)), 0, 255).astype(np.uint8)
        folder = os.path.join(root, "train", f"n{i % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"img_{i}.JPEG")
        Image.fromarray(img.transpose(1, 2, 0)).save(path, quality=90)
        sizes.append(os.path.getsize(path))
    return sum(sizes) / len(sizes) / 1000


def loader_rate(dataset, order, transform, batch: int, images: int, workers: int = 2):
    """A loader built as the driver builds its own; returns a function timing ``images``."""
    from utils.run.sampling import EpochSampler, SeededDataset

    sampler = EpochSampler(len(dataset), 1, 0, order=order)
    loader = DataLoader(SeededDataset(dataset), batch_size=batch, sampler=sampler,
                        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4)
    state = {"epoch": 0}

    def run() -> float:
        state["epoch"] += 1
        sampler.set_epoch(state["epoch"])
        seen, t0 = 0, None
        for x, y, seeds in loader:
            transform(x, seeds, "train")
            if t0 is None:  # the first batch pays for the workers' start
                t0, seen = time.perf_counter(), 0
                continue
            seen += len(y)
            if seen >= images:
                break
        return seen / (time.perf_counter() - t0)

    return run


def training_rate(arch: str, size: int, batch: int, steps: int):
    from models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 1000).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return steps * batch / (time.perf_counter() - t0)

    return run


def interleaved_rates(fns: dict, rounds: int) -> dict:
    for fn in fns.values():  # warm-up: workers, allocator, kernels
        fn()
    rates = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            rates[k].append(fn())
    return {k: statistics.median(v) for k, v in rates.items()}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="of the real ImageNet32 size")
    ap.add_argument("--jpegs", type=int, default=128, help="generated ImageNet-size JPEGs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    return ap


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    args = parser().parse_args()
    tmp = tempfile.mkdtemp(prefix="imagenet-bench-", dir=args.tmp)
    try:
        memory(tmp, args.scale)
        speed(tmp, args.jpegs, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def memory(tmp: str, scale: float) -> None:
    root = os.path.join(tmp, "imagenet32")
    os.makedirs(root)
    size = write_npz(root, scale)
    ours, ours_kept = peak_bytes("ours", root)
    ref, ref_kept = peak_bytes("reference", root)
    mb = 1 / 2 ** 20
    print(f"ImageNet32 at {scale:g}× the real size: images {size * mb:.0f} MiB as uint8")
    print(f"ours: peak +{ours * mb:.0f} MiB, held after loading +{ours_kept * mb:.0f} MiB; "
          f"reference approach: peak +{ref * mb:.0f} MiB, held +{ref_kept * mb:.0f} MiB")
    print(f"imagenet32_peak_vs_uint8: {ours / size:.3f}")
    print(f"reference_peak_vs_uint8: {ref / size:.3f}")


def speed(tmp: str, jpegs: int, rounds: int) -> None:
    from datasets.imagenet32 import imagenet32_data
    from datasets.imagenet_folder import imagenet_data

    jpeg_root = os.path.join(tmp, "imagenet")
    kb = write_jpegs(jpeg_root, jpegs)
    os.symlink(os.path.join(jpeg_root, "train"), os.path.join(jpeg_root, "val"))
    full = imagenet_data(jpeg_root, seed=1, cs_samples=16)
    small = imagenet32_data(os.path.join(tmp, "imagenet32"), seed=1)
    batch = 32
    rates = interleaved_rates({
        "imagenet_loader": loader_rate(full.train, None, full.batch_transform, batch,
                                       images=jpegs - batch),
        "resnet50_training": training_rate("imagenet_resnet50", 224, 16, 1),
        "imagenet32_loader": loader_rate(small.train, small.train_order, small.batch_transform,
                                         128, images=20 * 128),
        "resnet56_training": training_rate("resnet56", 32, 128, 2),
    }, rounds)
    print(f"CPU threads {torch.get_num_threads()}, loaders with 2 workers; JPEGs 500×375, "
          f"{kb:.0f} kB on average")
    for k, v in rates.items():
        print(f"{k}: {v:.1f} images/s")
    print(f"imagenet_loader_vs_training: "
          f"{rates['imagenet_loader'] / rates['resnet50_training']:.1f}")
    print(f"imagenet32_loader_vs_training: "
          f"{rates['imagenet32_loader'] / rates['resnet56_training']:.1f}")


if __name__ == "__main__":
    main()
