"""The input a model declares: the example size the graph is traced at when none is given.

A guess (the first conv's input channels at the first of a few sizes that run) is wrong where
it matters — a space-to-depth stem takes 3 channels into a conv of 48, a network with a fixed
position table runs at its own size only — so the size comes from what the model says of
itself: timm's ``pretrained_cfg`` (or ``default_cfg``) ``input_size``, or the crop size of the
default weights of the torchvision builder that makes the model's class. A model that declares
none is asked for one (``compact_model(..., input_shape=(C, H, W))``).
"""
import functools
import typing

from torch import nn


def declared_input_shape(model: nn.Module) -> tuple | None:
    """(C, H, W) the model declares, or None."""
    for key in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, key, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size is not None and len(size) == 3:
            return tuple(int(s) for s in size)
    return _torchvision_input(type(model))


@functools.cache
def _torchvision_input(cls: type) -> tuple | None:
    """The crop size of the default weights of torchvision's builder of ``cls``."""
    if not cls.__module__.startswith("torchvision.models."):
        return None
    try:
        from torchvision import models

        for name in models.list_models(module=models):
            builder = models.get_model_builder(name)
            if typing.get_type_hints(builder).get("return") is not cls:
                continue
            crop = models.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size")
            if crop:
                return (3, int(crop), int(crop))
    except Exception:  # a torchvision without the registry or these annotations: no answer
        return None
    return None


def missing_input(model: nn.Module) -> str:
    return (f"this {type(model).__name__} declares no input size (timm's pretrained_cfg, "
            "torchvision's default weights); pass input_shape=(C, H, W), the size it is "
            "trained with")
