"""timm's CNNs: BatchNorm subclasses are BatchNorms (discovery, the CS pass, ``--attenuate bn``,
compaction) and the ops of timm's families, on tiny networks of timm's own layers; the families
themselves are in tests/test_compact_zoo.py."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import BatchNormAct2d, EcaModule, MixedConv2d, convert_sync_batchnorm

from bench.common import calibrate_bn, randomize_bn
from utils.compaction import compact_model, find_prunable_convs
from utils.errors import UserError
from utils.method.criteria.cs import cs_scores
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import Schedule
from utils.pruner import Pruner
from utils.run.pretrained import initial_model
from tests.soft_pruning import one_thread, rel_error  # noqa: F401 (autouse)


class Tiny(nn.Module):
    """conv → BN + SiLU, twice, and a classifier: with timm's BatchNormAct2d (``fused``), or
    a plain BatchNorm2d and a separate SiLU."""

    def __init__(self, fused: bool):
        super().__init__()
        norm = (lambda c: BatchNormAct2d(c, act_layer=nn.SiLU)) if fused else \
            (lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.SiLU()))
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), norm(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, bias=False), norm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _twins():
    """The two spellings with the same weights and BN statistics."""
    torch.manual_seed(0)
    fused = calibrate_bn(Tiny(True), (3, 8, 8), torch.Generator().manual_seed(1))
    plain = Tiny(False)
    own = {k.replace("bn1.0.", "bn1.").replace("bn2.0.", "bn2."): v
           for k, v in plain.state_dict().items()}
    assert own.keys() == fused.state_dict().keys()
    plain.load_state_dict({k: fused.state_dict()[v] for k, v in zip(plain.state_dict(), own)})
    return fused, plain


def test_a_batchnorm_subclass_pairs_with_its_conv():
    fused, plain = _twins()
    assert [(c.name, c.bn_name) for c in find_prunable_convs(fused)] == [
        ("conv1", "bn1"), ("conv2", "bn2")]
    assert [c.bn_name for c in find_prunable_convs(plain)] == ["bn1.0", "bn2.0"]
    assert all(isinstance(c.bn, BatchNormAct2d) for c in find_prunable_convs(fused))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cs_scores_a_fused_activation_as_the_paper_scores_any_bn(mode):
    """The CS criterion (README.md) scores max ReLU(BN(conv)): a BatchNorm that applies its own
    SiLU is scored on its normalisation, as the plain BN before a separate SiLU — in train mode
    with the batch's statistics (and both update their running ones alike)."""
    fused, plain = _twins()
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 4, (6,), generator=gen))
               for _ in range(3)]
    scores = []
    for model in (fused, plain):
        model.train(mode == "train")
        convs = find_prunable_convs(model)
        scores.append(cs_scores(model, [c.bn for c in convs], [c.name for c in convs], batches,
                                4, torch.device("cpu"))[0])
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(scores[0][name], scores[1][name], rtol=1e-6, atol=1e-9)
        assert scores[0][name].abs().sum() > 0
    torch.testing.assert_close(fused.bn2.running_var, plain.bn2[0].running_var)


def test_attenuate_bn_scales_the_subclass_and_leaves_no_constant():
    """``--attenuate bn`` multiplies the subclass's γ and β (with ζ = 0: the selected channels
    emit exactly 0 through the SiLU), and the compact network then needs no constant map."""
    fused, _ = _twins()
    convs = find_prunable_convs(fused)
    sched = Schedule(np.array([0.5]), np.zeros(1), np.array([0.5]), np.zeros(1))
    mask = Mask(convs, METHODS["fpgm"].with_attenuate("bn"), sched)
    mask.update(fused, 0)
    pruned = {c.name: mask.selected(c.name) for c in convs}
    for c in convs:
        assert len(pruned[c.name]) == 4
        assert not c.bn.weight[pruned[c.name]].any() and not c.bn.bias[pruned[c.name]].any()
    compact = compact_model(fused, pruned, input_shape=(3, 8, 8))
    assert not any(n["attrs"].get("map") or n["attrs"].get("term")
                   for n in compact.manifest["nodes"])
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert rel_error(fused(x), compact(x)) <= 1e-6


def test_a_graph_traced_before_the_model_was_cast_still_compacts_it():
    """The Pruner traces at construction; the model may be cast or moved before ``compact()``
    (``.to`` gives a module new buffers: the shapes are taken with the model's own)."""
    fused, _ = _twins()
    pruner = Pruner(fused, "sfp", {"norm": 0.5}, 1, input_shape=(3, 8, 8))
    fused.double()
    pruner.step(0)
    compact = pruner.compact()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(fused.eval()(x), compact(x)) <= 1e-12


@pytest.mark.parametrize("convert", ["torch", "timm"])
def test_sync_batchnorm_is_a_batchnorm(convert):
    """torch's SyncBatchNorm, and timm's SyncBatchNormAct (which reaches the normalisation
    through ``super().forward``): discovered, and compacted exactly (eval mode, one process)."""
    fused, plain = _twins()
    model = (nn.SyncBatchNorm.convert_sync_batchnorm(plain) if convert == "torch"
             else convert_sync_batchnorm(fused)).double().eval()
    convs = find_prunable_convs(model)
    assert len(convs) == 2 and all(isinstance(c.bn, nn.SyncBatchNorm) for c in convs)
    pruned = {c.name: torch.tensor([1, 4, 6]) for c in convs}
    with torch.no_grad():
        for c in convs:
            c.conv.weight[pruned[c.name]] = 0
    reference = copy.deepcopy(fused).double().eval()  # the same network, not synchronised
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    compact = compact_model(model, pruned, input_shape=(3, 8, 8))
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-12
        for c in find_prunable_convs(reference):
            c.conv.weight[pruned[c.name]] = 0
        assert rel_error(reference(x), model(x)) <= 1e-12


# -- the ops of timm's families, on one small network of timm's own layers ---------------------

def _conv_bn(cin, cout, act, k=3, **kw):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False, **kw),
                         BatchNormAct2d(cout, act_layer=act))


class Ops(nn.Module):
    """Slices and their concatenation (dual-path), MixConv (split → convs of two kernels →
    concatenation), timm's activations fused into BatchNormAct2d (SiLU, GELU, Mish, hard-swish,
    hard-sigmoid, ReLU6, PReLU) and a separate per-channel PReLU, hard-sigmoid written
    ``relu6(x + 3) / 6``, bilinear and nearest upsampling, ECA's 1-D conv across the channels,
    a split attention's view, sum and softmax across the split, and a partial in-place
    residual ``x[:, a:b] += y``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv_bn(3, 16, "silu"), _conv_bn(16, 16, "gelu")
        self.c = _conv_bn(16, 24, "mish")
        self.mix = MixedConv2d(24, 24, [3, 5], padding="")
        self.bn_mix = BatchNormAct2d(24, act_layer="hard_swish")
        self.d, self.prelu = _conv_bn(24, 16, "prelu"), nn.PReLU(16)
        self.e, self.eca = _conv_bn(16, 16, "relu6"), EcaModule(16)
        self.f = _conv_bn(16, 16, "hard_sigmoid")
        self.radix = _conv_bn(16, 32, "relu", groups=2)  # radix 2 of 16 channels
        self.fc_attn = nn.Conv2d(16, 32, 1)
        self.g = _conv_bn(16, 8, "relu")
        self.fc = nn.Linear(8 + 4, 5)

    def forward(self, x):
        x = self.a(x)
        x = torch.cat([x[:, :8], self.b(x)[:, 8:]], 1)
        x = self.bn_mix(self.mix(self.c(x)))
        x = self.prelu(self.d(x))
        y = self.e(x)
        y[:, 4:12] += x[:, :8]
        x = self.eca(y)
        x = F.interpolate(F.relu6(self.f(x) + 3.0) / 6.0, scale_factor=2, mode="bilinear")
        splits = self.radix(x).reshape(x.shape[0], 2, 16, x.shape[2], x.shape[3])
        attn = self.fc_attn(splits.sum(1).mean((2, 3), keepdim=True))
        attn = torch.softmax(attn.view(x.shape[0], 2, 16, 1, 1), dim=1)
        x = self.g((splits * attn).sum(1))
        z = F.interpolate(x, size=(5, 5), mode="nearest")
        return self.fc(torch.cat([x.mean((2, 3)), F.adaptive_max_pool2d(z[:, :4], 1).flatten(1)],
                                 1))


def test_the_ops_of_timms_families_compact_exactly():
    torch.manual_seed(0)
    model = calibrate_bn(Ops(), (3, 12, 12), torch.Generator().manual_seed(1)).double()
    gen = torch.Generator().manual_seed(0)
    pruned = {}
    with torch.no_grad():
        for c in find_prunable_convs(model):  # every prunable conv loses 3 random filters
            pruned[c.name] = torch.randperm(c.filters, generator=gen)[:3]
            c.conv.weight[pruned[c.name]] = 0
    assert set(pruned) == {f"{k}.0" for k in "abcdefg"} | {"radix.0"}
    compact = compact_model(model, pruned, input_shape=(3, 12, 12))
    x = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64)
    other = torch.randn(2, 3, 16, 20, generator=gen, dtype=torch.float64)  # another image size
    with torch.no_grad():
        ref = model(x)
        assert rel_error(ref, compact(x)) <= 1e-12
        assert rel_error(model(other), compact(other)) <= 1e-12
    assert (ref[0] - ref[1]).abs().max() > 1e-3 * ref.abs().max()
    assert {"computed at full width", "concatenation", "channel split"} <= set(compact.rules_used)
    ops = {n["op"] for n in compact.manifest["nodes"]}
    assert {"tensor", "pool", "act"} <= ops  # the split attention; upsampling; PReLU


class KeptWhole(nn.Module):
    """conv → BN → ReLU → conv → BN, then ``rest``: what the compactor has no rule for."""

    def __init__(self, rest):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv, self.bn = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.rest = rest

    def forward(self, x):
        return self.rest(self.bn(self.conv(torch.relu(self.bn0(self.conv0(x))))))


def _stale_view(x):
    view = x[:, :4]
    x[:, :4] = x[:, 4:]
    return x + torch.cat([view, view], 1)  # the view reads the assigned values


@pytest.mark.parametrize("rest,ops", [
    (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), ["interpolate"]),
    (lambda x: x.reshape(x.shape[0], -1, 2, 2), ["reshape"]),
], ids=["bicubic", "reshape-into-pixels"])
def test_an_op_with_no_exact_conversion_is_kept_whole(rest, ops):
    """Bicubic resizing (its weights overshoot: a constant channel is no constant after it)
    and a reshape of channels into pixels: run as in the dense network, the conv feeding
    them unpruned (not selected), the conv before it pruned."""
    torch.manual_seed(0)
    model = KeptWhole(rest).double().eval()
    randomize_bn(model, torch.Generator().manual_seed(1))
    assert [c.name for c in find_prunable_convs(model, input_shape=(3, 8, 8))] == ["conv0"]
    with torch.no_grad():
        model.conv0.weight[[1, 5]] = 0
    compact = compact_model(model, {"conv0": [1, 5]}, input_shape=(3, 8, 8))
    assert compact.kept_whole == [{"part": "", "ops": ops, "convs": ["conv"]}]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-12


def test_an_assignment_read_through_a_stale_view_is_refused_in_one_line():
    """``x[:, a:b] = v`` changes ``x`` for every later reader: a view taken before and read
    after cannot be kept whole by running the assignment alone."""
    model = KeptWhole(_stale_view).eval()
    with pytest.raises(UserError) as e:
        compact_model(model, {}, input_shape=(3, 8, 8))
    assert "function setitem (fx node setitem) is not an operation the compactor understands " \
           "(fx node getitem views the tensor it changes and is read afterwards)" in str(e.value)
    assert "\n" not in str(e.value)


# -- --arch timm:NAME ---------------------------------------------------------------------------

def test_use_pretrain_without_a_path_asks_timm_for_the_weights_by_name(monkeypatch):
    """``--use_pretrain`` with ``--arch timm:NAME`` and no ``--pretrain_path``: timm's weights of
    NAME (timm downloads them; here its download is replaced by planted weights), with the
    run's classes; a resumed run builds the model plain (its checkpoint holds the weights)."""
    asked, create = [], timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        asked.append((name, pretrained, kwargs["num_classes"], kwargs["in_chans"]))
        torch.manual_seed(len(asked) if not pretrained else 123)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    args = SimpleNamespace(arch="timm:mobilenetv3_small_050", use_pretrain=True, pretrain_path="")
    model = initial_model(args, 7, 1)
    torch.manual_seed(123)
    planted = create("mobilenetv3_small_050", num_classes=7, in_chans=1)
    assert asked == [("mobilenetv3_small_050", True, 7, 1)]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  planted.state_dict().values()))
    initial_model(args, 7, 1, resuming=True)
    args.use_pretrain = False
    initial_model(args, 7, 1)
    assert [a[1] for a in asked] == [True, False, False]
