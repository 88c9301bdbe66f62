"""Compaction: the compact network computes what the soft-pruned one does, and is smaller."""
import importlib.util
import json

import pytest
import torch
from torch import nn

import compact as compact_cli
from bench.common import randomize_bn
from models import build_model
from utils.compact import (compact_checkpoint, compact_model, count_flops_params,
                           export_torchscript, fpgm_flops_reduction, load_compact, save_compact)
from utils.compact_modules import ConvBN, Join
from utils.errors import UserError
from utils.graph import find_prunable_convs


def random_model(arch, seed=0, num_classes=10):
    """BN statistics and affine parameters random, so every pruned channel carries a
    non-trivial constant (a freshly initialised BN would map zero to zero)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch, num_classes)
    randomize_bn(model, gen)
    return model.eval()


@torch.no_grad()
def prune(model, rate, seed=0):
    """Zero filters as FSDP leaves them; returns {conv name: indices}. ``rate``: fraction per
    conv; "one": all but one; "mixed": a random count per conv from none to all but one, so
    narrow and full-width tensors meet in every combination."""
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


def fake_checkpoint(path, arch="resnet20", rate=0.4):
    """The fields compaction reads from a training checkpoint.pt."""
    model, pruned = soft_pruned(arch, rate)
    torch.save({"arch": arch, "num_classes": 10, "in_channels": 3, "epoch": 3,
                "model": model.state_dict(), "mask": {"selected": pruned, "zeta": 0.0}}, path)
    return model


CIFAR = [("resnet20", 32), ("resnet32", 32), ("resnet44", 32), ("resnet56", 32),
         ("resnet110", 32)]
IMAGENET = [("imagenet_resnet18", 64), ("imagenet_resnet34", 64), ("imagenet_resnet50", 64),
            ("imagenet_resnet101", 64)]


@pytest.mark.parametrize("arch,size", CIFAR + IMAGENET)
def test_compact_equals_soft_pruned(arch, size):
    model = random_model(arch)  # built once: torchvision's initialisation is the slow part
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for rate in (0.3, 0.5, "one", "mixed"):
        model.load_state_dict(weights)
        pruned = prune(model, rate)
        compact = compact_model(model, pruned)
        with torch.no_grad():
            ref, out = model(x), compact(x)
        assert rel_error(ref, out) <= 1e-5, rate
        if rate == "one":  # every prunable conv keeps exactly one filter
            assert all(m.conv.out_channels == 1 for m in compact.modules() if isinstance(m, ConvBN))


def test_every_correction_is_exercised():
    """Random BN parameters must produce each way a constant is carried."""
    model, pruned = soft_pruned("resnet56", 0.4)
    compact = compact_model(model, pruned)
    convs = [m for m in compact.modules() if isinstance(m, ConvBN)]
    joins = [m for m in compact.modules() if isinstance(m, Join)]
    assert any(m.has_pad_const for m in convs)
    assert all(j.has_const and j.main_narrow for j in joins)
    model, pruned = soft_pruned("imagenet_resnet50", 0.4)  # 1×1 convs: shifted BN means
    compact = compact_model(model, pruned)
    kept = compact.manifest["kept"]["layer1.0.conv3"]
    shifted = compact.blocks[0].convs[2].bn.running_mean
    assert not torch.allclose(shifted, model.layer1[0].bn3.running_mean[kept])


def test_unpruned_model_compacts_to_the_same_size():
    model, _ = soft_pruned("resnet20", 0.0)
    compact = compact_model(model, {})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-6
    assert count_flops_params(compact, (1, 3, 32, 32)) == count_flops_params(model, (1, 3, 32, 32))


def test_fewer_flops_and_params():
    model, pruned = soft_pruned("resnet56", 0.4375)  # 7 of 16, the paper's 50% setting
    compact = compact_model(model, pruned)
    flops_d, params_d = count_flops_params(model, (1, 3, 32, 32))
    flops_c, params_c = count_flops_params(compact, (1, 3, 32, 32))
    assert flops_d == 125_485_696  # the 125.5 M of the FPGM/SFP tables: MACs, not 2×MACs
    assert flops_c < 0.45 * flops_d and params_c < 0.45 * params_d


def test_training_mode_and_inputs_untouched():
    """The in-place join only runs without autograd; the caller's input is never modified."""
    model, pruned = soft_pruned("resnet20", 0.4)
    compact = compact_model(model, pruned)
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    with torch.no_grad():
        compact(x)
    assert torch.equal(x, x0)
    compact.train()
    compact(x).sum().backward()
    assert compact.stem.conv.weight.grad is not None


def test_model_is_not_modified_and_device_dtype_follow():
    model, pruned = soft_pruned("resnet20", 0.4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact = compact_model(model.double(), pruned)
    assert next(compact.parameters()).dtype == torch.float64
    for k, v in model.state_dict().items():
        assert torch.equal(v.to(before[k].dtype), before[k])


def test_save_load_round_trip(tmp_path):
    model, pruned = soft_pruned("imagenet_resnet18", 0.4)
    compact = compact_model(model, pruned)
    path = tmp_path / "model_compact.pt"
    save_compact(compact, path)
    blob = torch.load(path, weights_only=True)  # no pickled code in the file
    json.dumps(blob["manifest"])  # the manifest is plain data
    assert blob["manifest"]["arch"] == "imagenet_resnet18"
    kept = sorted(set(range(64)) - set(pruned["conv1"].tolist()))
    assert blob["manifest"]["kept"]["conv1"] == kept
    loaded = load_compact(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(compact(x), loaded(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip_any_input_size(tmp_path):
    model, pruned = soft_pruned("resnet20", 0.5)
    compact = compact_model(model, pruned)
    path = tmp_path / "model_ts.pt"
    export_torchscript(compact, path, (1, 3, 32, 32))
    scripted = torch.jit.load(str(path))
    for size in (32, 40):  # the padding corrections are graph ops, not size-bound constants
        x = torch.randn(3, 3, size, size)
        with torch.no_grad():
            assert rel_error(model(x), scripted(x)) <= 1e-5


@pytest.mark.parametrize("arch,keep,published", [
    # FPGM (He et al., CVPR 2019) Tables 1-2, "FPGM-only" rows; ResNet-110 at 30%: SFP
    # (He et al., IJCAI 2018) Table 1. Both count with the same script.
    ("resnet20", 0.6, 54.0), ("resnet32", 0.6, 53.2), ("resnet56", 0.6, 52.6),
    ("resnet110", 0.6, 52.3), ("resnet110", 0.7, 40.8), ("imagenet_resnet18", 0.7, 41.8),
    ("imagenet_resnet34", 0.7, 41.1), ("imagenet_resnet50", 0.7, 42.2),
    ("imagenet_resnet50", 0.6, 53.5)])
def test_fpgm_analytic_reduction_matches_published(arch, keep, published):
    assert abs(100 * fpgm_flops_reduction(arch, keep) - published) < 0.06
    assert fpgm_flops_reduction(arch, 1.0) == 0


def test_compact_checkpoint_and_cli(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fake_checkpoint(run / "checkpoint.pt")
    fig = compact_checkpoint(run)
    assert fig["compact_path"] == str(run / "model_compact.pt")
    assert fig["max_rel_error"] <= 1e-5
    assert fig["flops_compact"] < fig["flops_dense"] and fig["params_compact"] < fig["params_dense"]
    assert abs(fig["keep_ratio"] - (1 - sum(int(0.4 * f) for f in [16] * 7 + [32] * 6 + [64] * 6)
                                    / (16 * 7 + 32 * 6 + 64 * 6))) < 1e-9
    assert 0.4 < fig["fpgm_analytic_flops_reduction"] < 0.6
    ts = tmp_path / "m_ts.pt"
    assert compact_cli.main([str(run / "checkpoint.pt"), "--out", str(tmp_path / "c.pt"),
                             "--torchscript", str(ts)]) == 0
    assert "flops" in capsys.readouterr().out
    assert load_compact(tmp_path / "c.pt") is not None and ts.is_file()


@pytest.mark.parametrize("make_input", ["missing", "not_a_checkpoint", "no_mask"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, make_input):
    path = tmp_path / "checkpoint.pt"
    if make_input == "not_a_checkpoint":
        path.write_text("hello")
    elif make_input == "no_mask":
        torch.save({"arch": "resnet20", "model": {}}, path)
    assert compact_cli.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err


def test_onnx_and_torchscript_from_the_same_command(tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    fake_checkpoint(tmp_path / "checkpoint.pt")
    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m_ts.pt"
    assert compact_cli.main([str(tmp_path / "checkpoint.pt"), "--onnx", str(onnx_path),
                             "--torchscript", str(ts_path)]) == 0
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    compact = load_compact(tmp_path / "model_compact.pt")
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's: the axis is dynamic
    ref = compact(x).detach()
    got = ReferenceEvaluator(str(onnx_path)).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - ref.numpy()).max() / ref.abs().max().item() < 1e-5
    torch.testing.assert_close(torch.jit.load(str(ts_path))(x), ref, rtol=1e-5, atol=1e-5)


def test_onnx_without_packages_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    fake_checkpoint(tmp_path / "checkpoint.pt")
    argv = [str(tmp_path / "checkpoint.pt"), "--onnx", str(tmp_path / "m.onnx")]
    assert compact_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install" in err and "onnxscript" in err and "\n" not in err


def test_user_errors():
    model, pruned = soft_pruned("resnet20", 0.4)
    with pytest.raises(UserError, match="not zero"):
        kept = [i for i in range(16) if i not in pruned["conv_1_3x3"]]
        compact_model(model, {"conv_1_3x3": kept})
    with torch.no_grad():
        model.conv_1_3x3.weight.zero_()
    with pytest.raises(UserError, match="all 16 filters"):
        compact_model(model, {"conv_1_3x3": list(range(16))})
    with pytest.raises(UserError, match="not prunable convs"):
        compact_model(model, {"stage_9.conv": [0]})
    with pytest.raises(UserError, match="only the CIFAR ResNets"):
        compact_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), {})
    with pytest.raises(UserError, match="FPGM"):
        fpgm_flops_reduction("vgg16", 0.6)


def test_load_compact_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(UserError, match="not a compact model"):
        load_compact(path)
