"""Prune to a budget: the compact network's count meets the target, the allocations' rules
(every layer keeps a filter, the global one is blind to a layer's scale), the mask moves each
layer towards its own count and a resumed pruner keeps its plan (DDP ranks agreeing on it:
tests/test_ddp.py, which starts its processes once)."""

import json

import pytest
import torch
import torchvision
from torch import nn

import notebook_cifar
from models import build_model
from tests.fakedata import write_cifar
from tests.snapshots import assert_same_run
from tests.soft_pruning import small_cnn
from utils.compaction.cost import compact_cost, network_cost
from utils.method.allocation import Allocator, normalised
from utils.method.budget import Target, counted_once
from utils.compaction import find_prunable_convs
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule, split_counts
from utils.pruner import Pruner
from utils.run.driver import main

SHAPE = (3, 16, 16)


def tiny_mobilenet():
    """Depthwise convs and residual adds: three inverted-residual stages, width 0.25."""
    return torchvision.models.MobileNetV2(
        num_classes=10, width_mult=0.25,
        inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]])


def tiny_densenet():
    """Concatenation: two dense blocks of two layers each."""
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2),
                                       num_init_features=16, bn_size=2, num_classes=10)


BUILDERS = {"resnet20": lambda: build_model("resnet20", 10), "mobilenet_v2": tiny_mobilenet,
            "densenet": tiny_densenet}


def _randomised(model: nn.Module) -> nn.Module:
    """BN statistics and shifts away from their defaults, so pruned channels carry constants
    (what the compact network must fold) as in a trained network."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.running_mean, m.bias):
                t.data.copy_(torch.rand(t.shape, generator=gen) - 0.5)
    return model


@pytest.mark.parametrize("arch,kind,allocation", [
    ("resnet20", "flops", "uniform"), ("resnet20", "params", "global"),
    ("mobilenet_v2", "flops", "uniform"), ("mobilenet_v2", "flops", "global"),
    ("densenet", "flops", "uniform"), ("densenet", "flops", "global")])
def test_the_compact_network_meets_the_target_within_1_percent(arch, kind, allocation):
    """FPGM's selections on the initial weights fall where GM puts them, not where the search
    counted them: the count must not depend on it."""
    torch.manual_seed(0)
    model = _randomised(BUILDERS[arch]()).eval()
    pruner = Pruner(model, "fpgm", epochs=1, target={kind: 0.4}, allocation=allocation,
                    input_shape=SHAPE)
    pruner.step(0)
    dense = network_cost(model, SHAPE)[0 if kind == "flops" else 1]
    compact = compact_cost(pruner.compact(), SHAPE)[0 if kind == "flops" else 1]
    assert compact / dense == pytest.approx(0.4, abs=0.01)
    assert all(c.filters - len(pruner.mask.selected(c.name)) >= 1 for c in pruner.convs)


def test_a_depthwise_conv_is_pruned_through_its_producer_under_a_target():
    convs = find_prunable_convs(tiny_mobilenet())
    kept = counted_once(convs)
    dropped = [c for c in convs if c not in kept]
    assert dropped and all(c.conv.groups == c.conv.in_channels > 1 for c in dropped)
    assert all(c.source in {k.name for k in kept} for c in dropped)


# --- the allocations on a cost that is the sum of per-filter costs (no walk: fast) ----------

WIDTHS = {"a": 16, "b": 32, "c": 32, "d": 64}
PER_FILTER = {"a": 3.0, "b": 1.5, "c": 1.0, "d": 0.5}


class Conv:
    def __init__(self, name):
        self.name, self.filters = name, WIDTHS[name]


def _allocator(fraction, first_share=0.2, round_to=1, allocation="global"):
    def cost(pruned):
        return sum(PER_FILTER[n] * (f - len(pruned.get(n, ()))) for n, f in WIDTHS.items())
    return Allocator([Conv(n) for n in WIDTHS], cost, Target("flops", fraction, allocation),
                     first_share, round_to)


def _scores(spread=(1.0, 1.0, 1.0, 1.0)):
    """Per layer, scores spread uniformly around 1 (± half the layer's ``spread``)."""
    gen = torch.Generator().manual_seed(5)
    return {n: 1 + s * (torch.rand(f, generator=gen) - 0.5) for (n, f), s in
            zip(WIDTHS.items(), spread)}


def test_the_global_allocation_is_blind_to_a_layers_scale_and_follows_its_contrast():
    """Scores divided by their layer's mean: a layer's scores × c change nothing, and short of
    the mean a layer gives up the more filters, the further its scores spread below it (a's
    lie within 5 % of their mean, b's down to 5 % of it)."""
    a = _allocator(0.85)
    scores = _scores(spread=(0.1, 1.9, 1.0, 1.0))
    plan = a.global_(scores)
    rescaled = a.global_({**scores, "b": scores["b"] * 1e3, "c": scores["c"] * 1e-4})
    assert rescaled == plan
    assert a.global_({**scores, "b": scores["b"] * 1e3}) == plan
    share = {n: sum(plan[n]) / f for n, f in WIDTHS.items()}
    assert share["a"] == 0 < share["c"] < share["b"]
    assert normalised(scores["b"] * 7).mean().item() == pytest.approx(1.0)


def test_no_allocation_empties_a_layer_even_at_the_floor():
    zero = {n: torch.zeros(f) for n, f in WIDTHS.items()}  # no filter scores anything
    for round_to in (1, 4):
        a = _allocator(0.01, round_to=round_to)
        for plan in (a.global_(zero), a.global_(_scores())):
            assert all(f - sum(plan[n]) >= round_to for n, f in WIDTHS.items())
            assert all((f - sum(plan[n])) % round_to == 0 for n, f in WIDTHS.items())


@pytest.mark.parametrize("first_share", [0.2, 0.0])
def test_the_uniform_plan_is_one_rate_and_splits_each_count_by_the_given_ratio(first_share):
    for target in (0.3, 0.45, 0.6):
        a = _allocator(target, first_share, allocation="uniform")
        plan = a.uniform()
        assert a.fraction(plan) == pytest.approx(target, abs=0.01)
        low, high = a.rates  # every layer takes the counts of one of two neighbouring rates
        assert 0 < low < high < 1
        for n, f in WIDTHS.items():
            assert plan[n] in [split_counts(f, first_share * r, (1 - first_share) * r)
                               for r in (low, high)]


def test_a_target_one_rate_cannot_meet_is_refused_in_one_line():
    from utils.errors import UserError

    def cost(pruned):  # a filter of "a" is 40 % of the network, "b" costs nothing
        return 2.0 + 4.0 * (2 - len(pruned.get("a", ())))
    convs = [Conv("a"), Conv("b")]
    convs[0].filters = 2
    a = Allocator(convs, cost, Target("flops", 0.8, "uniform"), 0.0)
    with pytest.raises(UserError, match="cannot be met within 1 %.*nearest plan keeps"):
        a.uniform()


def test_a_target_below_every_layer_at_one_filter_is_refused_with_the_range():
    from utils.errors import UserError
    with pytest.raises(UserError, match=r"cannot be reached: the global allocation keeps "
                                        r"0\.[0-9]+–1"):
        _allocator(0.05, round_to=4).check_reachable()


def test_each_layer_count_follows_the_schedule_to_its_own_count():
    model = build_model("resnet20", 10)
    convs = find_prunable_convs(model)
    plan = {c.name: (i % 3, c.filters // 2 + i % 2) for i, c in enumerate(convs)}
    mask = Mask(convs, METHODS["fpgm"], asymptotic_schedule(0.1, 0.4, 20), plan=plan)
    for c in convs:
        counts = [mask.layer_counts(c, e) for e in range(20)]
        assert counts[0] == (0, 0) and counts[-1] == plan[c.name]
        totals = [sum(n) for n in counts]
        assert totals == sorted(totals)
        assert totals[-2] == totals[-1]  # reached before the last update, not cut after it
        assert all(n[0] == min(plan[c.name][0], sum(n)) for n in counts)  # the first share first


# --- resume (DDP ranks agreeing on a plan: tests/test_ddp.py) ---------------------------------

def test_a_resumed_pruner_keeps_the_plan_its_scores_made(tmp_path):
    """ASFP's global plan is made after epoch 0 from the norms then; other weights would make
    another plan, the resumed pruner keeps the saved one."""
    def pruner(seed):
        torch.manual_seed(seed)
        return Pruner(small_cnn(), "asfp", epochs=4, target={"flops": 0.5},
                      allocation="global", input_shape=(3, 8, 8))
    first = pruner(0)
    first.step(0)
    assert first.mask.plan is not None
    torch.save(first.state_dict(), tmp_path / "p.pt")
    other = pruner(1)
    other.step(0)
    assert other.mask.plan != first.mask.plan  # the test can fail: the plan depends on weights
    resumed = pruner(1)
    resumed.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    assert resumed.mask.plan == first.mask.plan
    resumed.step(1)
    assert resumed.mask.plan == first.mask.plan


def test_a_run_stopped_after_its_plan_resumes_with_it(tmp_path):
    """FSDP's global plan comes from the CS pass after epoch 0 (train mode, as the reference's
    passes after an epoch): stopped right after it, the run resumes with the saved plan and
    ends as the uninterrupted one, bit for bit (a plan made anew at epoch 1 would differ)."""
    data = str(tmp_path / "data")
    write_cifar(data, "cifar10", n_train=64, n_test=32, seed=2, num_classes=4)

    def run(folder, *more):
        return main(notebook_cifar.parser(), notebook_cifar.make_data, [
            "--dataset", "cifar10", "--data_path", data, "--save_path", str(tmp_path / folder),
            "--arch", "resnet20", "--epochs", "2", "--batch_size", "32", "--batch_prune_size",
            "32", "--schedule", "1", "--gammas", "1", "--workers", "0", "--manualSeed", "3",
            "--device", "cpu", "--target_flops", "0.5", "--allocation", "global",
            "--attenuate", "bn", *more])

    assert run("full") == 0
    assert run("stopped", "--stop_after", "1") == 0
    plan = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["mask"]["plan"]
    assert run("stopped", "--resume", "auto") == 0
    assert_same_run(tmp_path / "full", tmp_path / "stopped")
    summary = json.load(open(tmp_path / "full" / "summary.json"))
    widths = {c.name: c.filters for c in find_prunable_convs(build_model("resnet20", 4))}
    assert summary["kept_per_layer"] == {k: widths[k] - int(v.sum()) for k, v in plan.items()}
    target = summary["target"]
    assert (target["kind"], target["allocation"]) == ("flops", "global")
    assert abs(target["reached"] - 0.5) <= 0.01
