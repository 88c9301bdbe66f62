import io

import pytest
import torch
import torchvision
from torch import nn

from models import build_model
from utils.compaction import find_prunable_convs
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule, count


def _random_ranker(convs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return lambda model, epoch, initial=False: {c.name: torch.rand(c.filters, generator=gen) for c in convs}


FSDP = METHODS["fsdp"]


def _zero_filters(conv):
    return int((conv.weight.detach().flatten(1).abs().sum(1) == 0).sum())


def test_discovers_every_conv_followed_by_bn_in_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=7)
    convs = find_prunable_convs(model)
    all_convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [c.name for c in convs] == all_convs  # 17 main convs + 3 downsample convs
    assert len(convs) == 20 and "layer2.0.downsample.0" in {c.name for c in convs}
    assert all(isinstance(c.bn, nn.BatchNorm2d) and c.bn.num_features == c.filters for c in convs)
    assert {c.name: c.source for c in convs}["layer1.0.conv1"] == "conv1"  # via relu + maxpool
    assert {c.name: c.source for c in convs}["layer1.1.conv1"] is None  # after a residual add


@pytest.mark.parametrize("make,block", [
    (torchvision.models.mobilenet_v3_small, "features.1.block.0.0"),  # BN, Hardswish
    (torchvision.models.efficientnet_b0, "features.2.0.block.1.0")])  # BN, SiLU
def test_a_depthwise_conv_is_fed_through_any_activation(make, block):
    """One table of channel-wise ops (the compactor's rules): the liveness pass and discovery
    pass a channel through every activation alike, so a target counts the pair once."""
    convs = {c.name: c for c in find_prunable_convs(make(num_classes=4))}
    assert convs[block].conv.groups == convs[block].filters
    assert convs[block].source == {"features.1.block.0.0": "features.0.0",
                                   "features.2.0.block.1.0": "features.2.0.block.0.0"}[block]


def test_reference_layer_indices_select_the_cifar_resnet_convs():
    model = build_model("resnet56", 10)
    convs = find_prunable_convs(model, layer_begin=0, layer_end=162, layer_inter=3)
    assert len(convs) == 55 and [c.param_index for c in convs] == list(range(0, 163, 3))
    assert len(find_prunable_convs(model, layer_begin=3, layer_end=162, layer_inter=3)) == 54
    assert len(find_prunable_convs(model, exclude=r"^conv_1_3x3$")) == 54
    assert len(find_prunable_convs(model, include=r"stage_3")) == 18


# ResNet-18's GM scores cost ~5 s an update on one thread (float64 differences, as the
# reference's cdist): 3 epochs, whose last update has its own CS pass
@pytest.mark.parametrize("arch,epochs", [("resnet20", 6), ("imagenet_resnet18", 3)])
def test_final_selected_filters_are_exactly_zero_with_floor_counts(arch, epochs):
    torch.manual_seed(0)
    model = build_model(arch, 10)
    convs = find_prunable_convs(model)
    mask = Mask(convs, FSDP, asymptotic_schedule(0.1, 0.4, epochs), _random_ranker(convs), pass_every=2)
    mask.update(model, 0)
    assert mask.total_selected() == 0
    for e in range(epochs):
        mask.update(model, e)
    for c in convs:
        expected = count(c.filters, 0.1) + count(c.filters, 0.4)
        assert mask.selected_counts()[c.name] == expected
        sel = mask.selected(c.name)
        assert len(set(sel.tolist())) == expected  # CS and GM picks are disjoint
        assert torch.all(c.conv.weight[sel] == 0)
        assert _zero_filters(c.conv) == expected  # nothing else was zeroed
    assert mask.selected_counts()["conv_1_3x3" if arch == "resnet20" else "conv1"] == (
        7 if arch == "resnet20" else 31)  # 7 of 16 (the reference's figure); 6 + 25 of 64


def test_update_attenuates_selected_filters_and_scales_their_gradients():
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    convs = find_prunable_convs(model)
    sched = asymptotic_schedule(0.1, 0.4, 20)
    mask = Mask(convs, FSDP, sched, _random_ranker(convs))
    before = {c.name: c.conv.weight.detach().clone() for c in convs}
    mask.update(model, 3)
    zeta = sched.zeta[3]
    assert 0 < zeta < 1 and mask.zeta == zeta
    c = convs[5]
    sel = mask.selected(c.name)
    keep = torch.ones(c.filters, dtype=torch.bool)
    keep[sel] = False
    assert len(sel) == count(c.filters, sched.theta_first[3]) + count(c.filters, sched.theta_second[3])
    torch.testing.assert_close(c.conv.weight[sel], before[c.name][sel] * zeta)
    assert torch.equal(c.conv.weight[keep], before[c.name][keep])
    # CS picks are the lowest scores
    assert torch.equal(mask.selected_first[c.name], mask.ranking[c.name][:count(c.filters, 0.1)])
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    grads = {c.name: c.conv.weight.grad.clone() for c in convs}
    mask.scale_gradients()
    torch.testing.assert_close(c.conv.weight.grad[sel], grads[c.name][sel] * zeta)
    assert torch.equal(c.conv.weight.grad[keep], grads[c.name][keep])


def test_cs_scores_are_recomputed_every_epoch_apply_cs_epochs():
    model = build_model("resnet20", 10)
    convs = find_prunable_convs(model)
    calls = []
    ranker = _random_ranker(convs)
    mask = Mask(convs, FSDP, asymptotic_schedule(0.1, 0.4, 10),
                lambda m, e, i: calls.append(e) or ranker(m, e), pass_every=3)
    for e in [0, 0, 1, 2, 3, 4, 5, 6]:
        mask.update(model, e)
    # epochs divisible by 3; the pass before training is skipped: θ(0) = 0 and the pass after
    # epoch 0 replaces its ranking before anything uses it
    assert calls == [0, 3, 6]


def test_state_dict_round_trips_through_weights_only_load():
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    convs = find_prunable_convs(model)
    sched = asymptotic_schedule(0.1, 0.4, 10)
    mask = Mask(convs, FSDP, sched, _random_ranker(convs))
    for e in range(4):
        mask.update(model, e)
    buf = io.BytesIO()
    torch.save(mask.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = Mask(convs, FSDP, sched, _random_ranker(convs, seed=1))
    other.load_state_dict(state)
    assert other.selected_counts() == mask.selected_counts() and other.zeta == mask.zeta
    for c in convs:
        assert torch.equal(other.selected(c.name), mask.selected(c.name))
    # the next update (not a CS epoch) continues from the restored ranking
    m2 = build_model("resnet20", 10)
    m2.load_state_dict(model.state_dict())
    other2 = Mask(find_prunable_convs(m2), FSDP, sched, _random_ranker(convs, seed=2))
    other2.load_state_dict(state)
    mask.update(model, 5)
    other2.update(m2, 5)
    for c, c2 in zip(convs, other2.convs):
        assert torch.equal(c.conv.weight, c2.conv.weight)


def test_mask_of_another_model_is_refused():
    a = Mask(find_prunable_convs(build_model("resnet20", 10)), FSDP,
             asymptotic_schedule(0.1, 0.4, 5), lambda m, e, i: {})
    b = Mask(find_prunable_convs(build_model("resnet32", 10)), FSDP,
             asymptotic_schedule(0.1, 0.4, 5), lambda m, e, i: {})
    with pytest.raises(ValueError, match="other layers"):
        b.load_state_dict(a.state_dict())


def test_cifar_resnets_trace_with_fx():
    """The final pool must stay traceable: the prunable convs, the effective FLOPs and the
    compact network all come from the fx graph (a model fx cannot trace is refused)."""
    from utils.compaction.tracing import trace as _trace
    assert _trace(build_model("resnet20", 10)) is not None
