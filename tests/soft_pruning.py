"""Soft-pruned networks for the compaction tests: random BN statistics, filters zeroed."""
import pytest
import torch
from torch import nn

from bench.common import randomize_bn
from models import build_model
from utils.compaction import find_prunable_convs


def random_model(arch, seed=0, num_classes=10):
    """BN statistics and affine parameters random, so every pruned channel carries a
    non-trivial constant (a freshly initialised BN would map zero to zero)."""
    gen = torch.Generator().manual_seed(seed)
    if arch == "tiny_bottleneck":  # bottlenecks with and without downsample, few convs
        from torchvision.models.resnet import Bottleneck, ResNet
        model = ResNet(Bottleneck, [2, 1, 1, 1], num_classes=num_classes)
    else:
        model = build_model(arch, num_classes)
    randomize_bn(model, gen)
    return model.eval()


@torch.no_grad()
def prune(model, rate, seed=0):
    """Zero filters as FSDP leaves them; returns {conv name: indices}. ``rate``: fraction per
    conv; "one": all but one; "mixed": a random count per conv from none to all but one, so
    narrow and full-width tensors meet in every combination. ``model`` may be its
    ``ModelGraph`` (traced once for several selections)."""
    gen = torch.Generator().manual_seed(seed)
    pruned = {}
    for c in find_prunable_convs(model):
        f = c.filters
        k = {"one": f - 1, "mixed": int(torch.randint(f, (), generator=gen))}.get(rate)
        k = int(rate * f) if k is None else k
        idx = torch.randperm(f, generator=gen)[:k]
        c.conv.weight[idx] = 0
        pruned[c.name] = idx
    return pruned


def soft_pruned(arch, rate, seed=0):
    model = random_model(arch, seed)
    return model, prune(model, rate, seed)


def rel_error(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def assert_exact_in_float64(model, compact, shape) -> None:
    """The compact network computes the float64 soft-pruned one's outputs within 1e-10
    (relative) on two random inputs that the network does not map to one constant."""
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), compact(x)
    assert rel_error(ref, out) <= 1e-10
    assert (ref[0] - ref[1]).abs().max() > 1e-3 * ref.abs().max()  # not a constant network


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread for the tests of a module that imports this fixture (autouse there):
    two threads spin against the other processes of a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn(widths=(8, 16, 16), num_classes=10) -> nn.Module:
    """Three conv → BN → ReLU layers, pooled into a linear classifier: the cheapest network
    with prunable convs (a graph walk over it takes milliseconds)."""
    layers, width = [], 3
    for out in widths:
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU()]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))
