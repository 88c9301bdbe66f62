"""FSDP on ImageNet32 (the paper's recipe) and full-size ImageNet (FPGM's).

    python notebook_imagenet.py --dataset imagenet32 --arch resnet56 --prune_rate_cs 0.1 \\
        --prune_rate_gm 0.4 --data_path datasets/imagenet32 \\
        --save_path snapshots/fsdp-imgnet32-resnet56-rate50
    torchrun --nproc_per_node=8 notebook_imagenet.py --dataset imagenet \\
        --arch imagenet_resnet50 --method fpgm --prune_rate_gm 0.4 \\
        --data_path /data/ILSVRC2012 --save_path snapshots/fpgm-r50-40

``--dataset`` picks the recipe the other flags default to; flags given explicitly win. With
``--dataset imagenet``, ``--arch`` takes any torchvision classification model name
(``--arch mobilenet_v3_small``; recorded as ``imagenet_mobilenet_v3_small``).
"""
import os
import sys

from datasets.imagenet32 import imagenet32_data
from datasets.imagenet_folder import imagenet_data
from models import resolve_imagenet
from utils.run.cli import build_parser
from utils.run.data import Data
from utils.run.driver import main

# the authors' README command for ImageNet32 (docs/datasets.md)
IMAGENET32 = dict(arch="resnet56", epochs=40, batch_size=128, learning_rate=0.01,
                  schedule=[1, 10, 20, 30], gammas=[1, 0.1, 0.1, 0.1], decay=5e-4,
                  attenuation=0.2, cs_mode="eval", data_path="datasets/imagenet32")
# FPGM's ImageNet recipe (docs/datasets.md) (lr 0.1, ×0.1 every 30 epochs)
IMAGENET = dict(IMAGENET32, arch="imagenet_resnet50", epochs=100, batch_size=256,
                learning_rate=0.1, schedule=[30, 60, 90], gammas=[0.1, 0.1, 0.1], decay=1e-4,
                nesterov=0, data_path="datasets/ILSVRC2012")  # FPGM's SGD: plain momentum
RECIPES = {"imagenet32": IMAGENET32, "imagenet": IMAGENET}


def recipe(dataset: str) -> dict:
    if dataset == "imagenet32":
        return IMAGENET32
    # JPEG decoding needs more loader processes than the 2 that suffice for arrays: one per
    # core, at most 8 per rank
    return dict(IMAGENET, workers=min(8, os.cpu_count() or 1))


def make_data(args) -> Data:
    if args.dataset == "imagenet32":
        return imagenet32_data(args.data_path, args.manualSeed)
    return imagenet_data(args.data_path, args.manualSeed, args.cs_samples, args.crop_size,
                         args.resize_size)


class RecipeParser:
    """Reads the command line twice: once for ``--dataset``, then with that dataset's recipe
    as the defaults, so an explicit flag always wins over the recipe."""

    def __init__(self, parser):
        self.parser = parser

    def parse_args(self, argv=None):
        known, _ = self.parser.parse_known_args(argv)
        self.parser.set_defaults(**recipe(known.dataset))
        args = self.parser.parse_args(argv)
        if args.dataset == "imagenet":  # --arch mobilenet_v3_small: torchvision's
            args.arch = resolve_imagenet(args.arch)
        return args

    def __getattr__(self, name):
        return getattr(self.parser, name)


def parser() -> RecipeParser:
    p = build_parser("Fractional Step Discriminant Pruning on ImageNet32 and ImageNet "
                     "(--dataset imagenet switches the defaults to FPGM's ImageNet recipe: "
                     "imagenet_resnet50, 100 epochs, batch 256, lr 0.1 ×0.1 at 30/60/90, "
                     "wd 1e-4)", list(RECIPES), IMAGENET32, script="imagenet")
    return RecipeParser(p)


if __name__ == "__main__":
    sys.exit(main(parser(), make_data))
