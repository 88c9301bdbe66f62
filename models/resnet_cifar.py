"""CIFAR-style ResNets (He et al. 2016, §4.2): 6n+2 layers, widths 16/32/64.

The shortcut across a stride-2 stage boundary is "option A" (parameter-free): subsample by 2 and
pad the new channels with zeros, as in the FPGM/SFP code FSDP extends. Parameter order is stem
conv, bn, then conv/bn pairs of every block, then the classifier, so the reference's
``--layer_begin 0 --layer_end 54 --layer_inter 3`` (ResNet-20) selects exactly the convs.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` followed by zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.extra = out_channels - in_channels

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return torch.cat([x, x.new_zeros(x.shape[0], self.extra, x.shape[2], x.shape[3])], 1)


class GlobalAvgPool(nn.Module):
    """An average pool whose window is the whole map: on the 8×8 maps of 32×32 inputs it is the
    authors' ``AvgPool2d(8)``, with its summation order and so its exact numbers (docs/method.md:
    ``AdaptiveAvgPool2d(1)`` differs in the last bits, enough to flip a selection after a few
    epochs), and any other input size still works. No branch: fx can trace it."""

    def forward(self, x):
        return F.avg_pool2d(x, x.shape[-2:])


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv_a = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(residual + out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv_1_3x3 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.stage_1 = self._stage(16, 16, n, 1)
        self.stage_2 = self._stage(16, 32, n, 2)
        self.stage_3 = self._stage(32, 64, n, 2)
        self.avgpool = GlobalAvgPool()
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                m.bias.data.zero_()

    @staticmethod
    def _stage(in_planes, planes, blocks, stride):
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes=10, in_channels=3):
    return CifarResNet(20, num_classes, in_channels)


def resnet32(num_classes=10, in_channels=3):
    return CifarResNet(32, num_classes, in_channels)


def resnet44(num_classes=10, in_channels=3):
    return CifarResNet(44, num_classes, in_channels)


def resnet56(num_classes=10, in_channels=3):
    return CifarResNet(56, num_classes, in_channels)


def resnet110(num_classes=10, in_channels=3):
    return CifarResNet(110, num_classes, in_channels)
