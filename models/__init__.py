"""Architecture registry: ``build_model(name, num_classes, in_channels)``.

The 32×32 networks of the pruning papers — CIFAR ResNets (``resnet20`` … ``resnet110``),
VGG-16/19 with BN (``vgg16_bn``, ``vgg19_bn``) and MobileNetV2 (``mobilenet_v2``) — and, as
``imagenet_NAME``, every torchvision classification model NAME (``imagenet_resnet50``,
``imagenet_mobilenet_v3_small``, …; randomly initialised, ``in_channels`` replaces the stem
conv). ``notebook_imagenet.py --dataset imagenet`` also takes the bare torchvision name
(``resolve_imagenet``): there ``vgg16_bn`` and ``mobilenet_v2`` are torchvision's, while the
32×32 scripts keep the CIFAR networks under those names.
"""
from torch import nn

from . import mobilenet_cifar, resnet_cifar, torchvision_models, vgg_cifar

MODELS = {f"resnet{d}": getattr(resnet_cifar, f"resnet{d}") for d in (20, 32, 44, 56, 110)}
MODELS.update(vgg16_bn=vgg_cifar.vgg16_bn, vgg19_bn=vgg_cifar.vgg19_bn,
              mobilenet_v2=mobilenet_cifar.mobilenet_v2)
PREFIX = "imagenet_"


def is_arch(name: str) -> bool:
    if name in MODELS:
        return True
    return name.startswith(PREFIX) and name[len(PREFIX):] in torchvision_models.names()


def resolve_imagenet(name: str) -> str:
    """The registry name of ``--arch NAME`` for full-size ImageNet: a torchvision name means
    torchvision's model; the CIFAR ResNet names, which torchvision has not, keep theirs."""
    if not name.startswith(PREFIX) and name in torchvision_models.names():
        return PREFIX + name
    return name


def arch_help() -> str:
    """What ``--arch`` accepts, in one line."""
    tv = torchvision_models.names()
    shown = ", ".join(tv[:3] + ["…"] + tv[-2:])
    return (f"{', '.join(MODELS)}, or {PREFIX}NAME for a torchvision classification model "
            f"NAME ({shown}: {len(tv)} in all; --dataset imagenet takes NAME alone)")


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name in MODELS:
        return MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if is_arch(name):
        return torchvision_models.build(name[len(PREFIX):], num_classes, in_channels)
    raise KeyError(f"unknown arch {name!r}; choose one of: {arch_help()}")
