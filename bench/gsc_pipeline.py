"""Speech Commands features: our batched training chain (datasets/gsc_transform.py) against
the authors' per-sample librosa chain (bench/gsc_reference.py), and against ResNet-56
training, interleaved in one process.

    python -m bench.gsc_pipeline [--batches 5] [--threads 1] [--device cpu]

Both chains get the same clips (speech-like 16-bit clips, 0.5–1 s long), noise rows and draws,
and the same number of threads (``--threads``, numpy's BLAS limited alike; one by default:
on a shared machine a busy neighbour stalls a second OpenMP thread). The per-sample chain is
timed twice: from decoded float32 samples with its mel filter bank cached (the transforms
alone: the comparison below), and as the reference ran it, each clip read with librosa.load
and the filter bank rebuilt per clip. Training: ResNet-56 with one input channel and 12
classes, SGD steps on 1×32×32 inputs of the same batch. The last two lines:

    speedup_vs_per_sample: R   (our clips/s ÷ the per-sample transforms' clips/s)
    pipeline_vs_training: R    (our clips/s ÷ training images/s)
"""
import argparse
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from bench import gsc_reference as ref
from bench.common import interleaved
from datasets.gsc_transform import Draws, GscTransform
from models import build_model
from tests.fake_gsc import speechlike, write_wav


def make_clips(n: int, seed: int):
    rng = np.random.default_rng(seed)
    clips = [speechlike(rng, rng.uniform(0.5, 1.0)) for _ in range(n)]
    wave = torch.from_numpy(np.stack([np.pad(c, (0, 16000 - len(c))) for c in clips]))
    noise = torch.from_numpy(np.round(rng.normal(0, 0.1, (40, 16000)).clip(-1, 1) * 32767)
                             .astype(np.int16))
    return clips, wave, torch.tensor([len(c) for c in clips]), noise


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--batches", type=int, default=5, help="repeats of each side (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def main():
    args = parser().parse_args()
    from threadpoolctl import threadpool_limits  # comes with librosa (via scikit-learn)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clips, wave, length, noise = make_clips(args.batch, 0)
    floats = [c.astype(np.float32) / 32768 for c in clips]
    rows = noise.numpy().astype(np.float32) / 32768
    transform = GscTransform(noise)
    batch = {"wave": wave.to(device), "length": length.to(device)}
    seeds = torch.arange(args.batch)
    all_draws = Draws.from_seeds(seeds, len(noise))
    draws = [all_draws.per_clip(i) for i in range(args.batch)]

    model = build_model("resnet56", 12, 1).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    x = torch.randn(args.batch, 1, 32, 32, device=device)
    y = torch.arange(args.batch, device=device) % 12

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        paths = []
        for i, c in enumerate(clips):
            paths.append(os.path.join(tmp, f"{i}.wav"))
            write_wav(paths[-1], c)
        t = interleaved({
            "ours": lambda: transform(batch, seeds, "train"),
            "per_sample": lambda: [ref.train_features(c, d, rows) for c, d in zip(floats, draws)],
            "as_run": lambda: [_as_the_reference_ran(p, d, rows) for p, d in zip(paths, draws)],
            "train": train_step}, args.batches, device)
    rate = {k: args.batch / v for k, v in t.items()}
    print(f"device {device}, {args.threads} thread(s) each side, batch {args.batch}, "
          f"median of {args.batches} interleaved repeats")
    print(f"our batched chain: {rate['ours']:.0f} clips/s")
    print(f"per-sample librosa chain (transforms only): {rate['per_sample']:.0f} clips/s")
    print(f"per-sample chain as the reference ran it (librosa.load and the filter bank per "
          f"clip): {rate['as_run']:.0f} clips/s")
    print(f"ResNet-56 training (1×32×32, 12 classes): {rate['train']:.0f} images/s")
    print(f"speedup_vs_reference_as_run: {rate['ours'] / rate['as_run']:.2f}")
    print(f"speedup_vs_per_sample: {rate['ours'] / rate['per_sample']:.2f}")
    print(f"pipeline_vs_training: {rate['ours'] / rate['train']:.2f}")


def _as_the_reference_ran(path, d, rows):
    """One clip as the reference's Dataset produced it: read with librosa.load, the filter
    bank rebuilt for it (ToMelSpectrogramFromSTFT called librosa.filters.mel per clip)."""
    import librosa

    S = ref.augment(ref.load(path), d["clip"])
    if d["noise_fire"]:
        S = ref.add_noise(S, True, ref.augment(rows[d["noise_row"]], d["noise"]), d["noise_p"])
    basis = librosa.filters.mel(sr=16000, n_fft=2048, n_mels=32)
    return librosa.power_to_db(np.dot(basis, np.abs(S) ** 2.0), ref=np.max)


if __name__ == "__main__":
    main()
