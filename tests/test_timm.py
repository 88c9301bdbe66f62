"""timm's CNNs: BatchNorm subclasses are BatchNorms (discovery, the CS pass, ``--attenuate bn``,
compaction), with the layers of timm itself on tiny networks; the families are in
tests/test_compact_zoo.py."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from timm.layers import BatchNormAct2d, convert_sync_batchnorm

from bench.common import calibrate_bn
from utils.compaction import compact_model
from utils.method.criteria.cs import cs_scores
from utils.method.graph import find_prunable_convs
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import Schedule
from tests.soft_pruning import rel_error


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
    """SPEC §3 scores max ReLU(BN(conv)): a BatchNorm that applies its own SiLU is scored on its
    normalisation, as the plain BN before a separate SiLU — in train mode with the batch's
    statistics (and both update their running ones alike)."""
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
