"""Architecture registry: ``build_model(name, num_classes, in_channels)``.

CIFAR-style ResNets (``resnet20`` … ``resnet110``) and torchvision's ImageNet ResNets
(``resnet18`` … ``resnet152``, randomly initialised; ``in_channels`` replaces the stem conv).
"""
from torch import nn

from . import resnet_cifar


def _torchvision(name):
    def build(num_classes=1000, in_channels=3):
        import torchvision  # imported lazily: the CIFAR scripts never need it

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model

    return build


MODELS = {f"resnet{d}": getattr(resnet_cifar, f"resnet{d}") for d in (20, 32, 44, 56, 110)}
MODELS.update({f"imagenet_resnet{d}": _torchvision(f"resnet{d}") for d in (18, 34, 50, 101, 152)})


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown arch {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
