"""FSDP in a plain PyTorch training loop: prune a torchvision ResNet-18 on the bundled
Fashion-MNIST demo through the public API, and save the exact smaller network.

    python -m examples.own_loop [--epochs 5] [--images 1000] [--out snapshots/own_loop/model_compact.pt]

A short budget on purpose (about 75 s on a 2-core CPU), which is why the pruner
attenuates the selected channels' BatchNorm too (``attenuate="bn"``): with the weights alone,
train-mode BatchNorm undoes the attenuation until its very end and a run this short ends near
chance (docs/soft-pruning-and-batchnorm.md).
"""
import argparse
import os

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from datasets.fashion import DEMO_DIR, load_fashion_demo
from datasets.images import ImageDataset
from fsdp_pruning import Pruner, save_compact


def loaders(images: int, test_images: int | None, batch: int):
    d = load_fashion_demo(str(DEMO_DIR))
    train = ImageDataset(d.train_x[:images], d.train_y[:images], d.mean, d.std, train=True)
    test = ImageDataset(d.test_x[:test_images], d.test_y[:test_images], d.mean, d.std,
                        train=False)
    cs = ImageDataset(d.train_x[:images], d.train_y[:images], d.mean, d.std, train=False)
    return (DataLoader(train, batch, shuffle=True), DataLoader(test, 256),
            DataLoader(cs, 256))  # the CS pass reads labelled data in a fixed order


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--images", type=int, default=1000, help="training images used")
    ap.add_argument("--test_images", type=int, default=None, help="test images used (all)")
    ap.add_argument("--out", default="snapshots/own_loop/model_compact.pt")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    torch.manual_seed(0)
    train, test, cs = loaders(args.images, args.test_images, 64)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # 1×32×32 inputs
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)

    # the only FSDP lines: the pruner hooks its gradient scaling onto opt.step()
    pruner = Pruner(model, method="fsdp", rates={"cs": 0.1, "gm": 0.4}, epochs=args.epochs,
                    cs_data=cs, optimizer=opt, attenuate="bn")
    for epoch in range(args.epochs):
        model.train()
        for x, y in train:  # an ordinary epoch: nothing of the pruner in it
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        pruner.step(epoch)  # the CS pass when due, then the mask update
        print(f"epoch {epoch}: loss {loss.item():.3f}, test top-1 {accuracy(model, test):.1f}%, "
              f"{sum(len(s) for s in pruner.selected().values())} filters selected")

    small = pruner.compact()  # the exact smaller network of the final, fully pruned one
    print(f"compact: top-1 {accuracy(small, test):.1f}%, parameters "
          f"{count(model) / 1e6:.2f}M -> {count(small) / 1e6:.2f}M")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_compact(small, args.out)
    print(f"saved {args.out} (fsdp_pruning.load_compact reads it back)")
    return model, small


@torch.no_grad()
def accuracy(net, loader) -> float:
    net.eval()
    hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in loader)
    return 100 * hits / len(loader.dataset)


def count(net) -> int:
    return sum(p.numel() for p in net.parameters())


if __name__ == "__main__":
    # FSDP attenuates the selected filters towards 0: late in a run their values can underflow
    # into subnormal floats, which many CPUs compute with 7x more slowly. Flush them to zero,
    # first thing (the mode is per thread; the intra-op threads inherit it when the first
    # parallel op starts them)
    torch.set_flush_denormal(True)
    main()
