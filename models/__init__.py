"""Architecture registry: ``build_model(name, num_classes, in_channels)``.

The 32×32 networks of the pruning papers — CIFAR ResNets (``resnet20`` … ``resnet110``),
VGG-16/19 with BN (``vgg16_bn``, ``vgg19_bn``) and MobileNetV2 (``mobilenet_v2``) — and, as
``imagenet_NAME``, every torchvision classification model NAME (``imagenet_resnet50``,
``imagenet_mobilenet_v3_small``, …; randomly initialised, ``in_channels`` replaces the stem
conv), and as ``timm:NAME`` every timm model NAME (``timm:efficientnet_b0``; ``timm_models``).
``notebook_imagenet.py --dataset imagenet`` also takes the bare torchvision name
(``resolve_imagenet``): there ``vgg16_bn`` and ``mobilenet_v2`` are torchvision's, while the
32×32 scripts keep the CIFAR networks under those names.
"""
import difflib

from torch import nn

from . import mobilenet_cifar, resnet_cifar, timm_models, torchvision_models, vgg_cifar

MODELS = {f"resnet{d}": getattr(resnet_cifar, f"resnet{d}") for d in (20, 32, 44, 56, 110)}
MODELS.update(vgg16_bn=vgg_cifar.vgg16_bn, vgg19_bn=vgg_cifar.vgg19_bn,
              mobilenet_v2=mobilenet_cifar.mobilenet_v2)
PREFIX = "imagenet_"
TIMM = timm_models.PREFIX


def arch_problem(name: str) -> str | None:
    """None for an arch ``build_model`` builds, else one line: what is wrong, the closest few
    names (never the whole list) or the command that installs timm."""
    if name in MODELS or (name.startswith(PREFIX) and
                          name[len(PREFIX):] in torchvision_models.names()):
        return None
    if name.startswith(TIMM):
        return _timm_problem(name[len(TIMM):])
    known = list(MODELS) + [PREFIX + n for n in torchvision_models.names()]
    return (f"unknown --arch {name!r}; the closest: "
            f"{', '.join(difflib.get_close_matches(name, known, 4, 0.6)) or 'none'} "
            f"(see --help; timm's models are --arch {TIMM}NAME)")


def _timm_problem(name: str) -> str | None:
    if not timm_models.installed():
        return (f"--arch {TIMM}{name} needs timm, which is not installed: "
                f"pip install {timm_models.PIN}")
    if timm_models.is_name(name):
        return None
    near = ", ".join(TIMM + n for n in timm_models.closest(name)) or "none"
    return (f"unknown timm model {name!r} (--arch {TIMM}{name}); the closest: {near} "
            "(timm.list_models() lists them all)")


def resolve_imagenet(name: str) -> str:
    """The registry name of ``--arch NAME`` for full-size ImageNet: a torchvision name means
    torchvision's model; the CIFAR ResNet names, which torchvision has not, keep theirs."""
    if not name.startswith(PREFIX) and name in torchvision_models.names():
        return PREFIX + name
    return name


def build_model(name: str, num_classes: int, in_channels: int = 3,
                pretrained: bool = False) -> nn.Module:
    """``pretrained``: timm's published weights (``timm:NAME`` only; downloaded)."""
    problem = arch_problem(name)
    if problem is not None:
        raise KeyError(problem)
    if pretrained and not name.startswith(TIMM):
        raise ValueError(f"{name}: weights by name exist for timm's models only")
    if name in MODELS:
        model = MODELS[name](num_classes=num_classes, in_channels=in_channels)
        # the input it is made for, declared as timm declares its models' (the compactor's
        # example size when none is given)
        model.default_cfg = {"input_size": (in_channels, 32, 32)}
        return model
    if name.startswith(TIMM):
        return timm_models.build(name[len(TIMM):], num_classes, in_channels, pretrained)
    return torchvision_models.build(name[len(PREFIX):], num_classes, in_channels)
