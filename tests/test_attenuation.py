"""Soft pruning against BatchNorm: the mechanism on a conv→BN pair, the `--attenuate bn` variant,
the probe that measures the effective attenuation, and ASFP's count reaching its target early."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import notebook_cifar
from tests.fakedata import write_cifar
from tests.snapshots import assert_same_run
from models import build_model
from utils.method.attenuation import AttenuationProbe, channel_stds
from utils.files import safe_load
from utils.compaction import compact_model, find_prunable_convs, load_compact
from utils.errors import UserError
from utils.method.mask import Mask
from utils.method.methods import METHODS, resolve
from utils.method.schedule import Schedule, asymptotic_schedule, count, target_epoch
from utils.run.driver import main
from utils.run.trainer import Trainer

EPS = 1e-5  # BatchNorm2d's default


def _pair(affine=True):
    """conv → BN → ReLU → classifier, every filter's train-mode output std scaled to σ = 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, affine=affine),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        sigma = net[0](_x()).transpose(0, 1).flatten(1).std(1, correction=0)
        net[0].weight.div_(sigma.view(-1, 1, 1, 1))
    return net


def _x():
    return torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _mask(net, method, attenuate, zeta):
    """A mask whose update at epoch 1 selects filters 0 and 1 (the CS share, or the smallest
    norms) and applies ``zeta`` to them."""
    with torch.no_grad():
        net[0].weight[:2] *= 0.5  # the smallest filters, for the norm criterion
    sched = Schedule(np.array([0, 0.25]), np.array([0, 0.25]), np.zeros(2), np.array([1, zeta]))
    ranker = lambda *a: {"0": torch.arange(8.0)}  # noqa: E731 (filters 0, 1 score lowest)
    return Mask(find_prunable_convs(net), METHODS[method].with_attenuate(attenuate), sched,
                ranker, pass_every=1)


def _weights_factor(zeta, sigma=1.0):
    """What a filter factor ζ leaves of a channel's train-mode BN output: ζσ/√(ζ²σ²+ε) ÷
    σ/√(σ²+ε)."""
    return zeta * np.sqrt(sigma ** 2 + EPS) / np.sqrt(zeta ** 2 * sigma ** 2 + EPS)


@pytest.mark.parametrize("zeta", [0.3, 0.001])
@pytest.mark.parametrize("attenuate", ["weights", "bn"])
def test_train_mode_bn_undoes_the_filter_factor_and_the_bn_variant_does_not(attenuate, zeta):
    net = _pair()
    mask = _mask(net, "fsdp", attenuate, zeta)
    convs = mask.convs
    probe = AttenuationProbe(convs, _x())
    mask.update(net, 0)
    assert probe.observe(net, {}) is None  # nothing selected yet
    before = channel_stds(net, convs, _x())["0"]
    mask.update(net, 1)
    selected = {"0": mask.selected("0")}
    assert sorted(selected["0"].tolist()) == [0, 1]
    probe.selected(selected)
    measured = probe.observe(net, selected)
    # the conv input is unchanged, so a selected channel's conv output std goes from σ to ζσ;
    # filters 0 and 1 were halved from σ = 1, so σ = 0.5 before the update
    weights = _weights_factor(zeta, 0.5)
    expected = weights * (zeta if attenuate == "bn" else 1.0)
    assert measured == pytest.approx(expected, rel=1e-3)
    if attenuate == "weights":
        assert measured > (0.99 if zeta == 0.3 else 100 * zeta)  # BN undoes the factor
    else:
        assert measured == pytest.approx(zeta * weights, rel=1e-3) and measured <= zeta
    assert torch.equal(channel_stds(net, convs, _x())["0"][2:], before[2:])  # others untouched


def test_a_factor_of_0_001_at_sigma_1_still_leaves_a_third_of_the_output():
    assert _weights_factor(0.001) == pytest.approx(0.30, abs=0.005)  # the example


@pytest.mark.parametrize("method,grads", [("fsdp", True), ("fpgm", True), ("sfp", False)])
def test_bn_variant_scales_gamma_beta_and_their_gradients_as_the_method_does(method, grads):
    net = _pair()
    zeta = 0.4 if method == "fsdp" else 0.0
    mask = _mask(net, method, "bn", zeta)
    if method != "fsdp":  # the baselines: the norm share of a constant schedule, × 0
        mask.schedule = Schedule(np.full(2, 0.25), np.full(2, 0.25), np.zeros(2), np.zeros(2))
    bn = net[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    mask.update(net, 0)
    mask.update(net, 1)
    sel = sorted(mask.selected("0").tolist())
    assert sel == [0, 1]
    factor = torch.ones(8)
    factor[sel] = zeta
    assert torch.equal(bn.weight.detach(), gamma * factor)
    assert torch.equal(bn.bias.detach(), beta * factor)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    net.train()
    net(_x()).square().sum().backward()
    before = (bn.weight.grad.clone(), bn.bias.grad.clone())
    mask.scale_gradients()
    for g, b in zip((bn.weight.grad, bn.bias.grad), before):
        assert torch.equal(g, b * factor if grads else b), method
    if zeta == 0:  # a pruned channel now emits exactly 0, in train and in eval mode
        for mode in (True, False):
            net.train(mode)
            out = {}
            h = bn.register_forward_hook(lambda m, i, o: out.update(y=o))
            net(_x())
            h.remove()
            assert torch.all(out["y"][:, sel] == 0)


def test_bn_variant_refuses_a_batchnorm_without_affine_parameters():
    net = _pair(affine=False)
    with pytest.raises(UserError, match="has none \\(affine=False\\)"):
        Mask(find_prunable_convs(net), METHODS["sfp"].with_attenuate("bn"),
             asymptotic_schedule(0.5, 0, 3))


# -- ASFP's count reaches its target while training is still to come --------------------------
def test_asfp_reaches_its_count_at_the_last_update_with_training_after_it():
    sched = resolve("asfp", {"norm": 0.5}, 200).schedule()
    assert target_epoch(200) == 198 and target_epoch(200, 3) == 198 and target_epoch(10, 4) == 8
    # 16 filters at 0.5 is exactly 8: the authors' rule reaches it only at the very last update
    authors = asymptotic_schedule(0.5, 0.0, 200, tau=8)
    assert [count(16, authors.theta[e]) for e in (198, 199)] == [7, 8]
    assert [count(16, sched.theta[e]) for e in (197, 198, 199)] == [7, 8, 8]
    fsdp = asymptotic_schedule(0.1, 0.4, 200)  # FSDP keeps the authors' rule (bit-exactness)
    assert fsdp.theta[198] < 0.5 and fsdp.theta[199] == 0.5


# -- through the driver: bit-identical with the probe, and the variant end to end --------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=64, n_test=32, seed=1, num_classes=4)
    return str(root)


def _argv(data_root, save, *extra):
    return ["--dataset", "cifar10", "--data_path", data_root, "--save_path", save,
            "--arch", "resnet20", "--epochs", "3", "--batch_size", "16", "--batch_prune_size",
            "32", "--schedule", "1", "--gammas", "5", "--workers", "0", "--manualSeed", "3",
            "--device", "cpu", "--deterministic", *extra]


def _trainer(data_root, save, *extra):
    args = notebook_cifar.parser().parse_args(_argv(data_root, save, *extra))
    torch.manual_seed(3)  # the same initial weights (run() seeds before building)
    return Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))


def test_the_probe_leaves_the_run_bit_identical(data_root, tmp_path):
    runs = []
    for probed in (True, False):
        t = _trainer(data_root, str(tmp_path / str(probed)))
        if not probed:
            t.probe = None
        t.start()
        for epoch in range(3):
            assert t.run_epoch(epoch)
        runs.append(t)
    for k, v in runs[0].model.state_dict().items():  # weights and BN statistics
        assert torch.equal(v, runs[1].model.state_dict()[k]), k
    strip = lambda r: {k: v for k, v in r.items()  # noqa: E731
                       if k not in ("epoch_seconds", "effective_attenuation")}
    assert [strip(r) for r in runs[0].history] == [strip(r) for r in runs[1].history]
    # epochs 0 and 1 train with the selections of θ(0) = 0: none; epoch 2 with that of θ(1)
    measured = [r["effective_attenuation"] for r in runs[0].history]
    assert measured[:2] == [None, None] and 0.9 < measured[2] < 1.1, measured  # BN undid ζ


def test_bn_variant_end_to_end_resumes_exactly_and_compacts_without_constants(data_root,
                                                                               tmp_path):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    entry = lambda argv: main(notebook_cifar.parser(), notebook_cifar.make_data, argv)  # noqa
    assert entry(_argv(data_root, full, "--attenuate", "bn")) == 0
    assert entry(_argv(data_root, resumed, "--attenuate", "bn", "--stop_after", "1")) == 0
    assert entry(_argv(data_root, resumed, "--attenuate", "bn", "--resume", "auto")) == 0
    assert_same_run(full, resumed)

    summary = json.load(open(os.path.join(full, "summary.json")))
    assert summary["attenuate"] == "bn"
    assert summary["zero_filters_per_layer"] == summary["selected_per_layer"]
    ckpt = safe_load(os.path.join(full, "checkpoint.pt"))
    dense = build_model("resnet20", 10)
    dense.load_state_dict(ckpt["model"])
    for c in find_prunable_convs(dense):
        sel = ckpt["mask"]["selected"][c.name]
        assert torch.all(c.bn.weight[sel] == 0) and torch.all(c.bn.bias[sel] == 0), c.name
    # no constant is left to carry: the exact compact network is the widths-only one
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact = load_compact(os.path.join(full, "model_compact.pt"))
    widths = compact_model(dense, ckpt["mask"]["selected"], exact=False)
    ref = dense.eval()(x)
    assert torch.allclose(exact(x), widths(x), atol=1e-6 * ref.abs().max().item())
    assert ((exact(x) - ref).abs().max() / ref.abs().max()) < 1e-5
    measured = [r["effective_attenuation"] for r in ckpt["history"]]
    assert measured[:2] == [None, None] and measured[2] < 0.01, measured  # ζ(1) = 0.001 arrived
