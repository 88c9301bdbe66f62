"""What one training epoch costs under each method, against a plain training epoch.

ResNet-20 on 2 000 CIFAR-format images (random pixels; the cost does not depend on them), the
driver's own epoch of training and pruning (``Trainer.train_and_prune``: the training epoch
with the pruner's gradient hook, the attenuation probe and the pruner's step; not the
evaluation and checkpoint that follow it in ``run_epoch``) for dense (all rates 0), fsdp, fpgm
and sfp, each ÷ a plain loop (forward, loss, backward, SGD step) over the same loader,
interleaved. FSDP recomputes its CS scores every second epoch, so its figure is
the mean of an epoch with and one without a CS pass; the CS pass's own share is printed
beside it. Targets: dense ≤ 1.02, sfp/fpgm ≤ 1.05, fsdp ≤ 1.25.

    python -m bench.epoch_cost [--images 2000] [--repeats 3] [--device cpu]
"""
import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import notebook_cifar
from datasets.images import ImageDataset
from utils.run.data import Data
from utils.batches import prepare
from utils.run.trainer import Trainer

from .common import sync

METHODS = {"dense": ["--prune_rate_cs", "0", "--prune_rate_gm", "0"],
           "fsdp": ["--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4"],
           "fpgm": ["--method", "fpgm", "--prune_rate_gm", "0.5"],
           "sfp": ["--method", "sfp", "--prune_rate_norm", "0.5"]}


def _data(n: int) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = ImageDataset(x, y, mean, std, train=True)
    test = ImageDataset(x[:64], y[:64], mean, std, train=False)
    return Data(train=train, cs=train, test=test, num_classes=10, in_channels=3,
                input_shape=(3, 32, 32))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def main():
    args = parser().parse_args()
    device = torch.device(args.device)
    data = _data(args.images)
    trainers, tmp = {}, tempfile.mkdtemp(prefix="epoch-cost-")
    for name, flags in METHODS.items():
        a = notebook_cifar.parser().parse_args(
            ["--save_path", f"{tmp}/{name}", "--epochs", "200", "--workers", "0",
             "--schedule", "1", "--gammas", "1", "--manualSeed", "1", "--device", args.device,
             "--print_freq", "100000", *flags])
        torch.manual_seed(0)
        t = Trainer(a, data, device)
        t.log.enabled = False
        t.start()
        trainers[name] = t
    plain_model = copy.deepcopy(trainers["dense"].model)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    loader = trainers["dense"].train_loader

    def plain_epoch(epoch):
        loader.sampler.set_epoch(epoch)
        plain_model.train()
        for batch in loader:
            x, y = prepare(batch, device)
            loss = F.cross_entropy(plain_model(x), y)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()  # no read of the loss: the driver's epoch waits for none either

    def timed(fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    times = {k: [] for k in ["plain", *METHODS]}
    epoch = 10  # past the start: every method selects filters; even, so FSDP runs its pass
    for t in trainers.values():  # the schedule advanced to that epoch, without training
        for e in range(epoch):
            t.pruner.step(e)
    plain_epoch(0)  # warm-up
    ranker = trainers["fsdp"].mask.data_pass
    passes_before = ranker.seconds
    for r in range(args.repeats):
        for e in (epoch + 2 * r, epoch + 2 * r + 1):  # one epoch with a CS pass, one without
            times["plain"].append(timed(lambda: plain_epoch(e)))
            for name, t in trainers.items():
                times[name].append(timed(lambda: t.train_and_prune(e)))
    plain = statistics.median(times["plain"])
    print(f"device {device}, threads {torch.get_num_threads()}, ResNet-20, {args.images} images, "
          f"batch 128; medians over {len(times['plain'])} epochs (half with an FSDP CS pass)")
    print(f"plain epoch {plain:.2f}s")
    for name in METHODS:
        extra = ""
        if name == "fsdp":  # one pass per epoch with a pass: half of the timed epochs
            cs_total = ranker.seconds - passes_before
            per_pass = cs_total / (len(times[name]) // 2)
            extra = (f"  (CS pass {per_pass:.2f}s per pass, "
                     f"{100 * cs_total / sum(times[name]):.0f}% of FSDP's epochs)")
        print(f"{name:<6} epoch {statistics.median(times[name]):.2f}s{extra}")
    for name in METHODS:
        print(f"epoch_cost_{name}: "
              f"{statistics.mean(times[name]) / statistics.mean(times['plain']):.3f}")


if __name__ == "__main__":
    main()
