"""Any torchvision classification model, randomly initialised (the scripts never download
weights: ``--use_pretrain --pretrain_path`` loads a state dict saved from one)."""
from torch import nn

# the training-mode auxiliary heads return tuples: trained here without them, as torchvision's
# pretrained GoogLeNet and Inception-v3 are used for inference
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
           "inception_v3": {"aux_logits": False, "init_weights": True}}


def names() -> list[str]:
    import torchvision  # imported lazily: the CIFAR scripts never need it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build(name: str, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                         **_NO_AUX.get(name, {}))
    if in_channels != 3:
        _replace_stem(model, in_channels)
    return model


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    """The first conv (the stem, in every torchvision classifier) reads ``in_channels``."""
    for parent in model.modules():
        for key, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, key, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                    child.padding_mode))
                return
