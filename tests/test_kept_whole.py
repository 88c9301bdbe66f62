"""Any CNN, including the parts the compactor does not understand: the rules for the common ops
of timm's hybrids (each exact in float64 on a small network that uses it), what is kept whole
and how selection, the compact network, its costs and its file follow, the input a model
declares, and failures that print nothing but their one line. (The families: the zoo.)"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import randomize_bn
from tests.soft_pruning import one_thread, rel_error  # noqa: F401 (autouse)
from utils.compaction import (compact_cost, compact_model, export_pt2, find_prunable_convs,
                              kept_line, network_cost, save_compact)
from utils.compaction.inputs import declared_input_shape
from utils.errors import UserError

SHAPE = (3, 8, 8)


class Around(nn.Module):
    """conv → BN → ReLU, then ``op`` (a module), then conv → BN → ReLU, pooled into a linear
    layer: the first conv's pruned channels reach ``op`` as constants."""

    def __init__(self, op: nn.Module, width: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.op = op
        self.conv2, self.bn2 = nn.Conv2d(width, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.op(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class Pad(nn.Module):
    """A constant pad other than zero (a uniform channel becomes a map) and a reflection."""

    def forward(self, x):
        return F.pad(F.pad(x, (1, 2, 0, 1), value=0.5), (1, 1, 1, 1), mode="reflect")


class LearnableAffine(nn.Module):
    """HGNetV2's learnable affine block (one scale and one shift) and a layer scale (one
    value per channel, viewed as (1, C, 1, 1)), then their inverse by division."""

    def __init__(self, width=8):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([1.5])), nn.Parameter(torch.tensor([0.2]))
        self.gamma = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        x = self.scale * x + self.bias
        return (x * self.gamma.view(1, -1, 1, 1)) / self.gamma.view(-1, 1, 1) - self.bias


class Difference(nn.Module):
    """FastViT's RepMixer: ``x + scale · (mixer(x) − norm(x))``, and ``1 − x``."""

    def __init__(self, width=8):
        super().__init__()
        self.mixer = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width),
                                   nn.BatchNorm2d(width))
        self.norm = nn.BatchNorm2d(width)
        self.scale = nn.Parameter(torch.rand(width, 1, 1))

    def forward(self, x):
        return 1.0 - (x + self.scale * (self.mixer(x) - self.norm(x)))


class ResizeLike(nn.Module):
    """GhostNetV2's attention: a gate from a pooled branch (a depthwise conv: a pruned
    channel's constant stays a map through it), resized to the block's size."""

    def __init__(self, width=8):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        g = self.gate(F.avg_pool2d(x, 2))
        return x * torch.sigmoid(F.interpolate(g, size=(x.shape[-2], x.shape[-1]),
                                               mode="nearest"))


class SplitMean(nn.Module):
    """A split attention's centring: the channels viewed as (2, C/2), less their mean over the
    split (a difference computed at full width)."""

    def forward(self, x):
        v = x.view(x.shape[0], 2, -1, x.shape[2], x.shape[3])
        return (v - v.mean(1, keepdim=True)).reshape(x.shape)


def blur():
    """timm's blur pool: a reflection pad, then ``F.conv2d`` with a fixed filter (a buffer)."""
    from timm.layers import BlurPool2d

    return BlurPool2d(channels=8, filt_size=3, stride=2)


class Head(nn.Module):
    """RepViT's head: a BatchNorm1d of the pooled features before the classifier."""

    def __init__(self, body=None):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.body = body or nn.Identity()
        self.norm, self.fc = nn.BatchNorm1d(8), nn.Linear(8, 4)

    def forward(self, x):
        x = self.body(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.norm(x.mean((2, 3))))


def every_rule() -> nn.Module:
    """One network of every op above (tests/test_compact_file_safety.py's third file)."""
    return Head(nn.Sequential(Pad(), ResizeLike(), LearnableAffine(), Difference(), blur(),
                              SplitMean()))


RULES = [  # (id, model, an op the compact graph has for it)
    ("pad", lambda: Around(Pad()), "pad"),
    ("learnable-scale-and-shift", lambda: Around(LearnableAffine()), "affine"),
    ("sub", lambda: Around(Difference()), "join"),
    ("resize-to-a-tensors-size", lambda: Around(ResizeLike()), "pool"),
    ("blur-pool", lambda: Around(blur()), "conv"),
    ("sub-at-full-width", lambda: Around(SplitMean()), "tensor"),
    ("batchnorm1d-of-features", Head, "affine"),
    ("every-rule-at-once", every_rule, "pad"),
]


@pytest.mark.parametrize("make,op", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_compacts_exactly_and_counts_right(make, op):
    """In float64, at the traced size and another: nothing kept whole, every conv prunable,
    the costs those of the dense network's own parameters and of torch's FLOP counter."""
    torch.manual_seed(0)
    model = make().double().eval()
    randomize_bn(model, torch.Generator().manual_seed(1))
    dense = network_cost(model, SHAPE)
    assert dense[1] == sum(p.numel() for p in model.parameters())
    convs = find_prunable_convs(model, input_shape=SHAPE)
    pruned = {}
    with torch.no_grad():
        for c in convs:
            pruned[c.name] = torch.randperm(c.filters, generator=torch.Generator().manual_seed(2))[:3]
            c.conv.weight[pruned[c.name]] = 0
    compact = compact_model(model, pruned, input_shape=SHAPE)
    assert compact.kept_whole == [] and not compact.holds()
    assert op in {n["op"] for n in compact.manifest["nodes"]}
    gen = torch.Generator().manual_seed(3)
    for side in (8, 11):
        x = torch.randn(3, 3, side, side, dtype=torch.float64, generator=gen)
        with torch.no_grad():
            ref = model(x)
            assert rel_error(ref, compact(x)) <= 1e-12
    assert (ref[0] - ref[1]).abs().max() > 1e-6 * ref.abs().max()
    assert compact_cost(compact, SHAPE) == network_cost(model, SHAPE, pruned)


# -- what is kept whole -------------------------------------------------------------------------

class Attention(nn.Module):
    """Attention over the pixels: matmuls of the image's tokens."""

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2)
        a = torch.softmax(t.transpose(1, 2) @ t / c, -1)
        return (t @ a).view(n, c, h, w)


class Branching(nn.Module):
    """A forward that branches on its input's size: fx cannot trace into it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x) if x.shape[-1] > 4 else x


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Mixed(nn.Module):
    """Convs around a GroupNorm, an attention and a module fx cannot trace into."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (conv_bn(i, o) for i, o in
                                                  ((3, 8), (8, 8), (8, 8), (8, 8), (8, 8)))
        self.norm, self.attn, self.branch = nn.GroupNorm(2, 8), Attention(), Branching()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.norm(self.b(self.a(x)))
        x = self.branch(self.d(self.attn(self.c(x))))
        return self.fc(self.e(x).mean((2, 3)))


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    model = Mixed().double().eval()
    randomize_bn(model, torch.Generator().manual_seed(1))
    pruned = {name: torch.tensor([1, 4, 6]) for name in ("a.0", "e.0")}
    with torch.no_grad():
        for name, idx in pruned.items():
            model.get_submodule(name).weight[idx] = 0
    return model, pruned


def test_what_no_rule_takes_is_kept_whole_and_the_rest_compacts_exactly(mixed):
    """The convs feeding the GroupNorm, the attention and the untraceable module keep every
    filter (selection leaves them out: one graph decides), the others are pruned; the compact
    network runs the parts as the dense one does, exactly, at any size; its costs are the
    walk's."""
    model, pruned = mixed
    assert [c.name for c in find_prunable_convs(model, input_shape=SHAPE)] == ["a.0", "e.0"]
    compact = compact_model(model, pruned, input_shape=SHAPE)
    assert kept_line(compact.kept_whole) == (
        "kept whole: 1 conv feeding 'norm' (GroupNorm), 1 conv feeding 'attn' (flatten, "
        "matmul, truediv, view), 1 conv feeding 'branch' (Branching: fx cannot trace it)")
    gen = torch.Generator().manual_seed(2)
    for side in (8, 12):
        x = torch.randn(2, 3, side, side, dtype=torch.float64, generator=gen)
        with torch.no_grad():
            assert rel_error(model(x), compact(x)) <= 1e-12
    assert compact_cost(compact, SHAPE) == network_cost(model, SHAPE, pruned)
    assert compact_cost(compact, SHAPE)[0] < network_cost(model, SHAPE)[0]


def test_a_network_with_parts_kept_whole_is_saved_as_a_program_not_as_plain_data(mixed,
                                                                                 tmp_path):
    """model_compact.pt holds plain data only, so save_compact refuses code in one line and
    points to export_pt2; the torch.export program computes the same."""
    model, pruned = mixed
    compact = compact_model(model, pruned, input_shape=SHAPE).float()
    with pytest.raises(UserError) as e:
        save_compact(compact, tmp_path / "c.pt")
    assert str(e.value) == (
        "save_compact: this compact network keeps 'norm' and 2 more of the dense one whole, "
        "which runs code a model_compact.pt does not hold; save it with export_pt2(model, "
        "path, input_shape) instead (a torch.export program: it loads with no pickled code)")
    assert not (tmp_path / "c.pt").exists()
    export_pt2(compact, tmp_path / "c.pt2", (1, *SHAPE))
    program = torch.export.load(tmp_path / "c.pt2").module()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert rel_error(model.float()(x), program(x)) <= 1e-5
    model.double()


# -- the input ------------------------------------------------------------------------------------

def test_the_input_comes_from_what_the_model_declares_or_is_asked_for():
    """timm's pretrained_cfg (TResNet's space-to-depth stem takes 3 channels into a conv of
    48), torchvision's default weights (Inception-v3: 299), else a one-line request."""
    import timm
    import torchvision

    with torch.device("meta"):
        tresnet = timm.create_model("tresnet_m", layers=[1, 1, 1, 1], width_factor=0.5)
        inception = torchvision.models.inception_v3(init_weights=False, aux_logits=False)
    assert next(m for m in tresnet.modules() if isinstance(m, nn.Conv2d)).in_channels == 48
    assert declared_input_shape(tresnet) == (3, 224, 224)
    assert declared_input_shape(inception) == (3, 299, 299)
    with pytest.raises(UserError) as e:
        compact_model(Head().eval(), {})
    assert str(e.value) == ("compact_model: this Head declares no input size (timm's "
                            "pretrained_cfg, torchvision's default weights); pass "
                            "input_shape=(C, H, W), the size it is trained with")


def test_a_model_that_does_not_run_at_the_size_is_refused_quietly(capfd):
    """Shape propagation fails in one line, with nothing printed before it."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4)).eval()
    with pytest.raises(UserError) as e:
        compact_model(model, {}, input_shape=(3, 9, 9))
    assert str(e.value).startswith("the model does not run on a (1, 3, 9, 9) input (")
    assert "\n" not in str(e.value)
    out, err = capfd.readouterr()
    assert out == err == ""
