"""timm's models (PyTorch Image Models), ``--arch timm:NAME``: ``timm.create_model(NAME, ...)``.

timm is imported only when such an arch is asked for (it takes seconds); without it, the arch
is refused with the pip command. ``pretrained=True`` downloads the weights timm publishes under
NAME (from the Hugging Face Hub: the machine must be online); offline, save them once and pass
``--pretrain_path FILE``.
"""
import contextlib
import difflib
import importlib.util
import logging

from torch import nn

PREFIX = "timm:"
PIN = "timm==1.0.31"  # requirements.txt


def installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def names() -> list[str]:
    import timm

    return timm.list_models()


def is_name(name: str) -> bool:
    import timm

    return timm.is_model(name)


def closest(name: str, count: int = 4) -> list[str]:
    return difflib.get_close_matches(name, names(), count, 0.6)


def build(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    import timm

    with _hub_quiet() if pretrained else contextlib.nullcontext():
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                 in_chans=in_channels)


@contextlib.contextmanager
def _hub_quiet():
    """The Hub's client logs every failed request (offline: one line per retry); the caller
    reports a failed download in one line of its own."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)
