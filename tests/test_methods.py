"""The four methods as presets of one Mask (docs/methods.md): selections, weights and gradients on
hand-built filters, the schedules, the flags, and a dense run that is a plain training loop."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import notebook_cifar
from tests.fakedata import write_cifar
from utils import subnormals
from utils.compaction import find_prunable_convs
from utils.errors import OptionError, UserError
from utils.run.cli import cli_words
from utils.method.mask import Mask
from utils.method.methods import resolve
from utils.method.schedule import asymptotic_schedule
from utils.run.trainer import Trainer

NORMS = [5.0, 1.0, 7.0, 3.0, 2.0, 8.0, 4.0, 6.0]  # filter i has L2 norm NORMS[i]


def _net(filters: list[torch.Tensor]) -> nn.Module:
    """One prunable conv (1×1, 2 input channels) whose filters are the given 2-vectors."""
    net = nn.Sequential(nn.Conv2d(2, len(filters), 1, bias=False), nn.BatchNorm2d(len(filters)),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(len(filters), 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.stack(filters).view(len(filters), 2, 1, 1))
        net[1].bias.fill_(0.5)  # a zeroed channel still passes the ReLU, so gradients reach it
    return net


def _mask(method, net, epochs=4, **rates):
    p = resolve(method, rates, epochs)
    return Mask(find_prunable_convs(net), p.method, p.schedule())


def _step(net, opt, mask):
    x = torch.randn(16, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    loss = F.cross_entropy(net(x), torch.arange(16) % 3)
    opt.zero_grad()
    loss.backward()
    mask.scale_gradients()
    opt.step()


def test_sfp_selects_the_smallest_l2_filters_among_all_and_they_regrow():
    net = _net([torch.tensor([n, 0.0]) for n in NORMS])
    mask = _mask("sfp", net, norm=0.5)
    mask.update(net, 0)  # SFP masks before epoch 0 (constant rate)
    assert sorted(mask.selected("0").tolist()) == [1, 3, 4, 6]  # norms 1, 3, 2, 4
    w = net[0].weight.detach().flatten(1)
    assert torch.all(w[[1, 3, 4, 6]] == 0) and torch.all(w[[0, 2, 5, 7]].abs().sum(1) > 0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _step(net, opt, mask)  # gradients are not masked: the zeroed filters move again
    assert torch.all(net[0].weight.detach().flatten(1)[[1, 3, 4, 6]].abs().sum(1) > 0)
    # every update re-ranks among all filters: the regrown ones compete again
    with torch.no_grad():
        net[0].weight[1] = 100.0
    mask.update(net, 1)
    assert 1 not in mask.selected("0").tolist() and len(mask.selected("0")) == 4


def test_fpgm_takes_the_norm_share_then_gm_among_the_rest_and_they_stay_zero():
    # filter 0 is the smallest; among the rest, 3 sits in the middle of the cluster 2, 3, 4
    # (closest to the geometric median); 1 and 5 are far away
    filters = [[0.1, 0.0], [9.0, 9.0], [2.0, 1.0], [2.2, 1.1], [2.4, 1.2], [-8.0, 7.0]]
    net = _net([torch.tensor(f) for f in filters])
    mask = _mask("fpgm", net, norm=1 / 6, gm=1 / 6)
    mask.update(net, 0)
    assert mask.selected_first["0"].tolist() == [0] and mask.selected_second["0"].tolist() == [3]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # FPGM masks the gradients too: the zeroed filters stay zero
        _step(net, opt, mask)
    w = net[0].weight.detach().flatten(1)
    assert torch.all(w[[0, 3]] == 0) and torch.all(w[[1, 2, 4, 5]].abs().sum(1) > 0)


def test_fsdp_and_fpgm_scale_gradients_sfp_and_asfp_leave_them():
    for method, rates, factor in (("fpgm", dict(norm=0.25, gm=0.25), 0.0),
                                  ("sfp", dict(norm=0.5), None), ("asfp", dict(norm=0.5), None)):
        net = _net([torch.tensor([n, 1.0]) for n in NORMS])
        mask = _mask(method, net, epochs=4, **rates)
        mask.update(net, 0)
        mask.update(net, 3)  # the last epoch: every method at its final rate
        sel = mask.selected("0")
        assert len(sel) == 4
        net(torch.randn(4, 2, 3, 3)).sum().backward()
        before = net[0].weight.grad.clone()
        mask.scale_gradients()
        after = net[0].weight.grad
        if factor is None:
            assert torch.equal(after, before), method
        else:
            assert torch.all(after[sel] == 0) and torch.equal(after[[i for i in range(8)
                                                                   if i not in sel]],
                                                              before[[i for i in range(8)
                                                                      if i not in sel]])


def test_schedules_of_the_presets():
    asfp = resolve("asfp", {"norm": 0.4}, 30)
    sched = asfp.schedule()
    # ASFP's D = 1/8, its target reached at the last update with training after it (epoch 28)
    ref = asymptotic_schedule(0.4, 0.0, 30, tau=8, final_epoch=28)
    assert asfp.tau == 8.0
    np.testing.assert_array_equal(sched.theta, ref.theta)
    assert sched.theta[0] == 0 and np.all(sched.zeta == 0)
    assert sched.theta[27] < 0.4 and sched.theta[28] == sched.theta[29] == 0.4
    for name in ("sfp", "fpgm", "l1"):
        sched = resolve(name, None, 5).schedule()
        assert np.all(sched.theta == 0.5) and np.all(sched.zeta == 0)  # from epoch 0 on
    fsdp = resolve("fsdp", None, 200)
    sched = fsdp.schedule()
    assert (fsdp.rates, fsdp.tau) == ({"cs": 0.1, "gm": 0.4}, 10.0)
    assert sched.theta[1] == pytest.approx(0.033646, abs=1e-6)  # the schedule's known value


@pytest.mark.parametrize("method,flag,match", [
    ("sfp", dict(cs=0.1), "does not use --prune_rate_cs"),
    ("fsdp", dict(norm=0.2), "does not use --prune_rate_norm"),
    ("asfp", dict(gm=0.3), "does not use --prune_rate_gm"),
    ("fpgm", dict(norm=0.6, gm=0.5), "must be < 1"),
])
def test_a_method_refuses_a_rate_it_does_not_use(method, flag, match):
    """(Worded as the scripts word the core's option errors: with their flags.)"""
    with pytest.raises(UserError, match=match):
        try:
            resolve(method, flag, 4)
        except OptionError as e:
            raise UserError(e.render(cli_words)) from None
    resolve(method, {k: 0.0 for k in flag}, 4)  # zero is fine


def test_round_to_keeps_multiples_of_n_selecting_fewer():
    net = _net([torch.tensor([n, 0.0]) for n in NORMS] * 5)  # 40 filters
    p = resolve("fsdp", None, 3)
    mask = Mask(find_prunable_convs(net), p.method, p.schedule(),
                lambda m, e, i: {"0": torch.arange(40.0)}, round_to=16)
    # plain: ⌊4⌋ CS + ⌊16⌋ GM = 20 selected, 20 kept → 32 kept: GM gives up 12 filters
    assert mask.counts(40, 2) == (4, 4)
    for e in range(3):
        mask.update(net, e)
    assert len(mask.selected("0")) == 8 and 40 - 8 == 32


# -- a dense run is a plain training loop ----------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=64, n_test=32, seed=1, num_classes=4)
    return str(root)


def test_all_rates_zero_is_bit_identical_to_a_plain_loop(data_root, tmp_path):
    args = notebook_cifar.parser().parse_args([
        "--dataset", "cifar10", "--data_path", data_root, "--save_path", str(tmp_path / "run"),
        "--arch", "resnet20", "--epochs", "3", "--batch_size", "16", "--schedule", "1",
        "--gammas", "2", "--prune_rate_cs", "0", "--prune_rate_gm", "0", "--workers", "0",
        "--manualSeed", "3", "--device", "cpu"])
    ours = Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))
    calls = []
    real = ours.mask.data_pass
    ours.mask.data_pass = lambda *a: calls.append(a) or real(*a)
    plain = copy.deepcopy(ours.model)
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    for epoch in range(3):
        for group in opt.param_groups:
            group["lr"] = 0.01 * (2 if epoch >= 1 else 1)
        ours.train_loader.sampler.set_epoch(epoch)
        plain.train()
        for x, y, _ in ours.train_loader:
            opt.zero_grad()
            F.cross_entropy(plain(x), y).backward()
            opt.step()
    with subnormals.flushed():  # the scripts' default mode: it changes nothing here
        ours.start()
        for epoch in range(3):
            assert ours.run_epoch(epoch)
    assert not ours.mask.active and calls == []  # no CS pass, no GM, no mask work
    for k, v in ours.model.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k


def test_eval_bn_refresh_reports_a_refreshed_curve_and_leaves_the_run_alone(data_root, tmp_path):
    runs = {}
    for refresh in ("0", "2"):
        args = notebook_cifar.parser().parse_args([
            "--dataset", "cifar10", "--data_path", data_root,
            "--save_path", str(tmp_path / f"refresh{refresh}"), "--arch", "resnet20",
            "--epochs", "3", "--batch_size", "16", "--batch_prune_size", "32", "--schedule", "1",
            "--gammas", "2", "--workers", "0", "--manualSeed", "3", "--device", "cpu",
            "--eval_bn_refresh", refresh])
        torch.manual_seed(3)  # the same initial weights (run() seeds before building)
        t = Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))
        t.start()
        for epoch in range(3):
            assert t.run_epoch(epoch)
        runs[refresh] = t
    plain, refreshed = runs["0"], runs["2"]
    for k, v in plain.model.state_dict().items():  # weights and BN statistics: bit-identical
        assert torch.equal(v, refreshed.model.state_dict()[k]), k
    strip = lambda r: {k: v for k, v in r.items() if k != "epoch_seconds"}  # noqa: E731
    assert [strip(r) for r in plain.history] == [
        {k: v for k, v in strip(r).items() if not k.endswith("_refreshed")}
        for r in refreshed.history]
    assert "test_top1_refreshed" not in plain.history[0]
    assert all(0 <= r["test_top1_refreshed"] <= 100 for r in refreshed.history)
    header = open(tmp_path / "refresh2" / "metrics.csv").readline()
    assert "test_top1_refreshed" in header
