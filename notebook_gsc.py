"""FSDP on Google Speech Commands, 12-class keyword spotting (docs/datasets.md): ResNet-56 with one
input channel, 70 epochs, the paper's recipe.

    python notebook_gsc.py --dataset gsc --arch resnet56 --prune_rate_cs 0.1 \\
        --prune_rate_gm 0.4 --data_path datasets/gsc --save_path snapshots/fsdp-gsc-resnet56-rate50

``--data_path`` is the folder the archive was extracted into (downloaded there when it holds
none); the clips are decoded once into a cache beside the snapshot folder (or
``--cache_dir``). The features are computed on the training device, batch by batch.
"""
import os
import sys

import torch

from datasets.audio_features import N_MELS
from datasets.gsc import CLASSES, load_gsc
from datasets.gsc_transform import FRAMES, GscTransform
from utils import distributed as dist
from utils.run.cli import build_parser
from utils.run.data import Data, weighted_order
from utils.run.driver import main

DEFAULTS = dict(arch="resnet56", epochs=70, batch_size=96, learning_rate=0.01, schedule=[50],
                gammas=[0.1], decay=5e-4, attenuation=1.0, max_iter_cs=10000,
                data_path="datasets/gsc")


def cache_root(args) -> str:
    """``--cache_dir``, else a ``gsc_cache`` folder beside the snapshot folder, which runs
    of other rates or methods share."""
    if args.cache_dir:
        return args.cache_dir
    return os.path.join(os.path.dirname(os.path.abspath(args.save_path)), "gsc_cache")


def make_data(args) -> Data:
    log = print if dist.is_main() else (lambda *_: None)  # one copy of the notes under DDP
    gsc = load_gsc(args.data_path, args.dataset, cache_root(args), log=log)
    counts = gsc.train.class_counts()
    # the balanced sampler: weight N/count[label] per clip, drawn with replacement
    # (docs/datasets.md)
    weights = len(gsc.train) / counts[gsc.train.labels]
    return Data(train=gsc.train, cs=gsc.valid, test=gsc.test, num_classes=len(CLASSES),
                in_channels=1, input_shape=(1, N_MELS, FRAMES), classes=list(CLASSES),
                train_order=weighted_order(torch.from_numpy(weights)),
                batch_transform=GscTransform(gsc.noise, args.multi_crop))


def parser():
    p = build_parser("Fractional Step Discriminant Pruning on Google Speech Commands",
                     ["gsc", "gsc_v2"], DEFAULTS, script="gsc")
    return p


if __name__ == "__main__":
    sys.exit(main(parser(), make_data))
