"""The Pruner's options checked when it is built: a wrong type, range or name is one
``OptionError`` naming the keyword and the fix (the closest names for a misspelt string),
raised by ``Pruner(...)`` itself, before the first epoch. The method's own options (method,
rates, epochs, τ, the target) are checked where they are resolved (``method.methods``)."""
import difflib
import re

import torch
from torch import nn

from ..errors import OptionError
from ..method.graph import unwrap

CS_MODES = ("train", "reference", "eval")
AMP_DTYPES = (torch.float16, torch.bfloat16)


def model_of(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise OptionError(f"Pruner needs an nn.Module to prune (got a {type(model).__name__})")
    model = unwrap(model)
    if next(model.parameters(), None) is None:
        raise OptionError(f"this {type(model).__name__} has no parameters: nothing to prune")
    return model


def choice(key: str, value, allowed: tuple) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    near = difflib.get_close_matches(str(value), allowed, 3, 0.4)
    raise OptionError(f"⟨{key}⟩ must be one of {', '.join(map(repr, allowed))} (got {value!r}"
                      + (f"; did you mean {' or '.join(map(repr, near))}?)" if near else ")"))


def whole(key: str, value, least: int = 1, optional: bool = False):
    """A whole number ≥ ``least`` (None where ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"⟨{key}⟩ must be a whole number ≥ {least} (got {value!r})")
    if value < least:
        raise OptionError(f"⟨{key}⟩ must be ≥ {least} (got {value})")
    return value


def switch(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"⟨{key}⟩ must be True or False (got {value!r})")
    return value


def regex(key: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionError(f"⟨{key}⟩ must be a regular expression on module names (got "
                          f"{value!r})")
    try:
        re.compile(value)
    except re.error as e:
        raise OptionError(f"⟨{key}⟩ {value!r} is not a regular expression ({e})") from None
    return value


def input_shape_of(value) -> tuple[int, int, int] | None:
    """(C, H, W): the size of one input, as the model takes it."""
    if value is None:
        return None
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or len(value) not in (3, 4) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise OptionError(f"⟨input_shape⟩ must be (C, H, W), the size of one input, e.g. "
                          f"(3, 224, 224) (got {value!r})")
    return tuple(value)[-3:]


def amp_dtype_of(value):
    if value is None or value in AMP_DTYPES:
        return value
    raise OptionError(f"⟨amp_dtype⟩ must be torch.bfloat16, torch.float16 or None (got "
                      f"{value!r})")


def callable_or_none(key: str, value):
    if value is not None and not callable(value):
        raise OptionError(f"⟨{key}⟩ must be callable (got a {type(value).__name__})")
    return value


def optimizer_of(value):
    if value is not None and not isinstance(value, torch.optim.Optimizer):
        raise OptionError(f"⟨optimizer⟩ must be a torch.optim.Optimizer (got a "
                          f"{type(value).__name__})")
    return value


def num_classes_of(value, model: nn.Module) -> int:
    """The class count: given, or the last Linear's outputs."""
    if value is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise OptionError("give ⟨num_classes⟩: this model has no Linear classifier to read "
                              "the class count from")
        value = linears[-1].out_features
    return whole("num_classes", value, least=2)


def class_names_of(value, num_classes: int):
    if value is None:
        return None
    names = list(value) if isinstance(value, (list, tuple)) else None
    if names is None or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise OptionError(f"⟨class_names⟩ must be {num_classes} strings, one per class (got "
                          f"{value!r:.80})")
    return names
