"""``cs_data`` checked by its first batch, at ``Pruner(...)``: what the class-separability pass
will read an epoch later, refused now in one line if it cannot serve.

A one-pass iterable (a generator) is refused without being touched; a loader gives its first
batch through an iterator of its own (a ``DataLoader`` draws from the global RNG to seed its
workers: ``hands_off.rng_untouched`` puts it back), so the passes later read it whole.
"""
import torch

from ..batches import prepare
from ..errors import OptionError
from ..hands_off import rng_untouched


def first_batch(data, num_classes: int, device, transform=None):
    """The first batch of ``data`` as the model will get it: (inputs, labels) on ``device``
    after ``transform``, every part checked; OptionError naming what is wrong otherwise."""
    if isinstance(data, torch.Tensor):
        raise OptionError("⟨cs_data⟩ is a tensor; give its batches of (inputs, labels): a "
                          "DataLoader, or a list of (inputs, labels) pairs")
    with rng_untouched():  # a DataLoader's iterator draws its workers' seed when made
        try:
            it = iter(data)
        except TypeError:
            raise OptionError(f"⟨cs_data⟩ must be batches of (inputs, labels), a DataLoader "
                              f"or a list (got a {type(data).__name__})") from None
        if it is data:  # a generator: the check would use up what the first pass needs
            raise OptionError("⟨cs_data⟩ is an iterator, used up by the first CS pass; give a "
                              "DataLoader or a list of (inputs, labels) batches")
        batch = next(it, None)
        del it  # a DataLoader's workers stop with their iterator
    if batch is None:
        raise OptionError("⟨cs_data⟩ holds no batch; give (inputs, labels) batches of "
                          "labelled samples (the CS pass scores filters on them)")
    return check_batch(batch, num_classes, device, transform)


def check_batch(batch, num_classes: int, device, transform=None):
    if isinstance(batch, dict):
        raise OptionError(f"⟨cs_data⟩ batches must be (inputs, labels) pairs, not dicts (keys "
                          f"{', '.join(map(repr, list(batch)[:4]))}); yield (inputs, labels)")
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise OptionError(f"⟨cs_data⟩ batches must be (inputs, labels) pairs (got a "
                          f"{type(batch).__name__}{_length(batch)})")
    labels = batch[1]
    if not isinstance(labels, torch.Tensor):
        raise OptionError(f"⟨cs_data⟩'s labels must be a tensor of class indices (got a "
                          f"{type(labels).__name__})")
    _check_labels(labels, num_classes)
    with rng_untouched():
        x, y = prepare(batch, device, transform, "cs")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise OptionError("⟨cs_data⟩'s inputs must be a floating-point tensor with the batch "
                          f"first (got {_describe(x)})")
    if x.shape[0] != y.shape[0]:
        raise OptionError(f"⟨cs_data⟩'s first batch has {x.shape[0]} inputs and {y.shape[0]} "
                          "labels; give one label per input")
    if not bool(torch.isfinite(x).all()):
        raise OptionError("⟨cs_data⟩'s first batch holds NaN or inf inputs; clean the data")
    return x, y


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        hint = " (one-hot: give labels.argmax(1))" if labels.dim() == 2 else ""
        raise OptionError(f"⟨cs_data⟩'s labels must be integer class indices (got {labels.dtype}"
                          f"{hint})")
    if labels.dim() != 1:
        hint = "; give labels.view(-1)" if labels.dim() == 2 and labels.shape[1] == 1 else ""
        raise OptionError(f"⟨cs_data⟩'s labels must be one class index per sample, a 1-D "
                          f"tensor (got shape {list(labels.shape)}){hint}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise OptionError(f"⟨cs_data⟩'s labels lie in [{int(labels.min())}, {int(labels.max())}], "
                          f"outside [0, {num_classes}) for ⟨num_classes⟩ {num_classes}; give "
                          "class indices from 0, or the model's class count")


def _length(x) -> str:
    return f" of {len(x)}" if hasattr(x, "__len__") else ""


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return f"a {type(x).__name__}"
