"""FSDP on CIFAR-10/100 (docs/datasets.md): ResNet-20/56/110, 200 epochs, the paper's recipe.

    python notebook_cifar.py --dataset cifar10 --arch resnet20 --prune_rate_cs 0.1 \\
        --prune_rate_gm 0.4 --data_path datasets --save_path snapshots/fsdp-cifar10-resnet20-rate50

``--dataset fashion_demo --data_path datasets/fashion_demo`` runs the bundled offline demo.
"""
import sys

from datasets.cifar import load_cifar
from datasets.fashion import load_fashion_demo
from datasets.images import ImageDataset
from utils.run.cli import build_parser
from utils.run.data import Data
from utils.run.driver import main

DEFAULTS = dict(arch="resnet20", epochs=200, batch_size=128, learning_rate=0.01,
                schedule=[1, 60, 120, 160], gammas=[10, 0.2, 0.2, 0.2], decay=5e-4,
                attenuation=1.0, data_path="datasets")


def make_data(args) -> Data:
    if args.dataset == "fashion_demo":
        splits = load_fashion_demo(args.data_path)
    else:
        splits = load_cifar(args.data_path, args.dataset)
    train = ImageDataset(splits.train_x, splits.train_y, splits.mean, splits.std, train=True)
    test = ImageDataset(splits.test_x, splits.test_y, splits.mean, splits.std, train=False)
    # the CS data is the training set with its training transform (docs/method.md)
    return Data(train=train, cs=train, test=test, num_classes=splits.num_classes,
                in_channels=splits.in_channels, input_shape=(splits.in_channels, 32, 32),
                classes=splits.classes)


def parser():
    return build_parser("Fractional Step Discriminant Pruning on CIFAR",
                        ["cifar10", "cifar100", "fashion_demo"], DEFAULTS, script="cifar")


if __name__ == "__main__":
    sys.exit(main(parser(), make_data))
