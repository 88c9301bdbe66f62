"""The CIFAR VGG of the pruning papers (32×32 inputs): 3×3 conv + BN + ReLU stacks with
max-pools, then a 2×2 average pool and one linear classifier.

This is network slimming's CIFAR VGG (Liu et al., ICCV 2017; rethinking-network-pruning), the
network FPGM, ThiNet-style and SFP comparisons on CIFAR-10 use: FPGM's ``vgg_cifar10.py`` has
the same convs with a two-layer classifier; the single 512 → classes layer is the common
choice. BN after every conv makes every conv prunable.
"""
import math

import torch
from torch import nn

CONFIGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, width = [], in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                width = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)  # the 2×2 map of a 32×32 input
        self.classifier = nn.Linear(width, num_classes)
        for m in self.modules():  # their initialisation
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(0.5)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16_bn(num_classes=10, in_channels=3):
    return CifarVGG(16, num_classes, in_channels)


def vgg19_bn(num_classes=10, in_channels=3):
    return CifarVGG(19, num_classes, in_channels)
