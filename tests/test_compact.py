"""Compaction: the compact network computes what the soft-pruned one does, and is smaller."""
import copy
import importlib.util
import json

import pytest
import torch
from torch import nn

import compact as compact_cli
from bench.common import randomize_bn
from models import build_model
from utils.compact import (FORMAT, compact_checkpoint, compact_model, compaction_figures,
                           count_flops_params, export_onnx, fpgm_flops_reduction, load_compact,
                           save_compact)
from utils.compact_modules import Block, FoldedConv
from utils.errors import UserError
from utils.graph import find_prunable_convs


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
                "input_shape": [3, 32, 32],
                "args": {"prune_rate_cs": 0.1, "prune_rate_norm": 0.0, "prune_rate_gm": 0.4},
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
            assert all(m.conv.out_channels == 1 for m in compact.modules()
                       if isinstance(m, FoldedConv))


def test_every_correction_is_exercised():
    """Random BN parameters must produce each way a constant is carried; without them (the
    widths-only network of the bench) the outputs differ."""
    model, pruned = soft_pruned("resnet56", 0.4)
    compact = compact_model(model, pruned)
    blocks = [m for m in compact.modules() if isinstance(m, Block)]
    assert all(b.last.taps is not None and b.const is not None and b.join.main_index is not None
               for b in blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in compact.modules())  # all folded
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x), compact_model(model, pruned, exact=False)(x)) > 1e-2
    model, pruned = soft_pruned("tiny_bottleneck", 0.4)  # 1×1 convs: constants in the bias
    exact, widths = compact_model(model, pruned), compact_model(model, pruned, exact=False)
    conv3 = exact.blocks[0].last
    assert conv3.taps is None
    assert not torch.allclose(conv3.conv.bias, widths.blocks[0].last.conv.bias)


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
    assert blob["manifest"]["arch"] == "imagenet_resnet18" and blob["version"] == 2
    kept = sorted(set(range(64)) - set(pruned["conv1"].tolist()))
    assert blob["manifest"]["kept"]["conv1"] == kept
    loaded = load_compact(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(compact(x), loaded(x))


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
    assert fig["input_shape"] == [3, 32, 32] and fig["max_rel_error"] <= 1e-5
    assert fig["flops"] < fig["flops_dense"] and fig["params"] < fig["params_dense"]
    assert abs(fig["keep_ratio"] - (1 - sum(int(0.4 * f) for f in [16] * 7 + [32] * 6 + [64] * 6)
                                    / (16 * 7 + 32 * 6 + 64 * 6))) < 1e-9
    assert 0.4 < fig["fpgm_analytic_flops_reduction"] < 0.6
    assert fig["keep_ratio_nominal"] == pytest.approx(0.5)  # the checkpoint's CS 10% + GM 40%
    assert fig["fpgm_analytic_flops_reduction_nominal"] == fpgm_flops_reduction("resnet20", 0.5)
    ts = tmp_path / "m_ts.pt"
    assert compact_cli.main([str(run / "checkpoint.pt"), "--out", str(tmp_path / "c.pt"),
                             "--torchscript", str(ts)]) == 0
    out = capsys.readouterr().out
    assert f"reduction {fig['flops_reduction']:.1%}" in out and "keep ratio 0.500 (nominal" in out
    assert load_compact(tmp_path / "c.pt") is not None and ts.is_file()


def test_compaction_figures_use_the_summary_keys():
    """One function for compact.py and the end of a training run: summary.json's keys."""
    model, pruned = soft_pruned("resnet20", 0.4)
    compact = compact_model(model, pruned)
    fig = compaction_figures(model, compact, (1, 3, 32, 32), "resnet20", 0.6, 0.5)
    assert set(fig) == {"flops_unit", "flops_dense", "flops", "flops_reduction", "params_dense",
                        "params", "params_reduction", "keep_ratio",
                        "fpgm_analytic_flops_reduction", "keep_ratio_nominal",
                        "fpgm_analytic_flops_reduction_nominal", "max_rel_error"}
    assert (fig["flops_dense"], fig["params_dense"]) == count_flops_params(model, (1, 3, 32, 32))
    assert fig["flops"] == count_flops_params(compact, (1, 3, 32, 32))[0]
    assert fig["fpgm_analytic_flops_reduction"] == fpgm_flops_reduction("resnet20", 0.6)
    assert fig["max_rel_error"] <= 1e-5
    # parameters as the dense network counts them: folded BN still counts γ and β per filter
    kept = sum(m.conv.out_channels for m in compact.modules() if isinstance(m, FoldedConv))
    own = sum(p.numel() for p in compact.parameters())
    assert fig["params"] == own + kept
    fig = compaction_figures(model, compact_model(model, pruned, exact=False),
                             (1, 3, 32, 32), "vgg", 0.6)
    assert fig["fpgm_analytic_flops_reduction"] is None and "keep_ratio_nominal" not in fig
    assert fig["max_rel_error"] > 1e-2


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
    import onnxruntime

    model = fake_checkpoint(tmp_path / "checkpoint.pt")
    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m_ts.pt"
    assert compact_cli.main([str(tmp_path / "checkpoint.pt"), "--onnx", str(onnx_path),
                             "--torchscript", str(ts_path)]) == 0
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's: the axis is dynamic
    with torch.no_grad():
        ref = model(x)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options,
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert rel_error(ref, torch.from_numpy(got)) <= 1e-5
    assert rel_error(ref, torch.jit.load(str(ts_path))(x)) <= 1e-5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_onnx_graph_is_what_the_widths_need(tmp_path):
    """No BatchNormalization, no scatter, no transposes; ONNX Runtime matches."""
    import onnx
    import onnxruntime

    model, pruned = soft_pruned("imagenet_resnet18", "mixed")  # both operands narrow, too
    compact = compact_model(model, pruned)
    path = tmp_path / "m.onnx"
    export_onnx(compact, path, (1, 3, 64, 64))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"BatchNormalization", "ScatterND", "ScatterElements", "Transpose"}, ops
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_error(model(x), torch.from_numpy(session.run(None, {"input": x.numpy()})[0])) \
            <= 1e-5


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


RUNTIME_ARCHS = [("resnet20", 32), ("tiny_bottleneck", 32)]  # option A; bottleneck + downsample


@pytest.mark.parametrize("arch,size", RUNTIME_ARCHS)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_every_runtime_mode(arch, size, tmp_path):
    """no_grad, inference_mode (building, loading and moving inside it: inference tensors have
    no version counter), channels_last, traced and scripted: all equal the soft-pruned net."""
    model, pruned = soft_pruned(arch, "mixed")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    compact = compact_model(model, pruned)
    save_compact(compact, tmp_path / "c.pt")
    with torch.no_grad():
        assert rel_error(ref, compact(x)) <= 1e-5
    with torch.inference_mode():
        built = compact_model(model, pruned)
        loaded = load_compact(tmp_path / "c.pt").to(torch.float64).to(torch.float32)
        for m in (built, loaded, compact):
            assert rel_error(ref, m(x)) <= 1e-5
    with torch.no_grad():  # inference-mode tensors used outside it
        assert rel_error(ref, built(x)) <= 1e-5 and rel_error(ref, loaded(x)) <= 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 operands, float32 maps
            assert rel_error(ref, compact(x).float()) < 0.05
    cl = copy.deepcopy(compact).to(memory_format=torch.channels_last)
    for _ in range(2):  # the second run takes the cached maps
        with torch.no_grad():
            assert rel_error(ref, cl(x.contiguous(memory_format=torch.channels_last))) <= 1e-5
            assert rel_error(ref, cl(x)) <= 1e-5  # a contiguous input into the same model
    traced = torch.jit.trace(compact, x)
    scripted = torch.jit.script(compact)
    other = torch.randn(3, 3, size + 8, size + 8)  # another batch and image size
    with torch.no_grad():
        ref_other = model(other)
        for m in (traced, scripted):
            assert rel_error(ref, m(x)) <= 1e-5 and rel_error(ref_other, m(other)) <= 1e-5
    compact.train()  # autograd through the in-place ops
    compact(x).sum().backward()
    assert compact.blocks[0].last.conv.weight.grad is not None


def test_cached_maps_follow_new_weights():
    """load_state_dict and .to() drop the cached constant maps."""
    model, pruned = soft_pruned("resnet20", 0.5)
    other = random_model("resnet20", seed=5)  # other BN statistics, the same pruned filters
    with torch.no_grad():
        for name, idx in pruned.items():
            other.get_submodule(name).weight[idx] = 0
    a, b = compact_model(model, pruned), compact_model(other, pruned)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a(x)  # fills the caches
        a.load_state_dict(b.state_dict())
        assert rel_error(other(x), a(x)) <= 1e-5
        a.double()(x.double())
    maps = [m._cache[1] for m in a.modules() if getattr(m, "_cache", (0, None))[1] is not None]
    assert maps and all(t.dtype == torch.float64 for t in maps)


def _write_v1(compact, path, gen):
    """A format-1 file of the same function, as the previous code wrote it: a BN (random
    statistics) beside each conv, the padding correction before it, the join's constants."""
    state, net = {}, json.loads(json.dumps(compact.manifest["net"]))

    def unfold(spec, module, prefix):
        w, b = module.conv.weight.double(), module.conv.bias.double()
        n = w.shape[0]
        gamma, var = torch.rand(n, generator=gen) + 0.5, torch.rand(n, generator=gen) + 0.5
        beta, mean = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        scale = gamma / torch.sqrt(var + 1e-5)
        state.update({f"{prefix}.conv.weight": w / scale.view(-1, 1, 1, 1),
                      f"{prefix}.conv.bias": (b - beta) / scale + mean,
                      f"{prefix}.bn.weight": gamma, f"{prefix}.bn.bias": beta,
                      f"{prefix}.bn.running_mean": mean, f"{prefix}.bn.running_var": var,
                      f"{prefix}.bn.num_batches_tracked": torch.tensor(0)})
        if module.taps is not None:
            state[f"{prefix}.pad_const"] = module.taps.double() / scale.view(-1, 1, 1, 1)
        border = spec.pop("border")
        spec.update({"bias": True, "pad_const": border, "eps": 1e-5, "momentum": 0.1})

    unfold(net["stem"], compact.stem, "stem")
    for i, (spec, blk) in enumerate(zip(net["blocks"], compact.blocks)):
        convs = list(blk.first) + [blk.last]
        for j, (s, m) in enumerate(zip(spec["convs"], convs)):
            unfold(s, m, f"blocks.{i}.convs.{j}")
        if spec["downsample"]:
            unfold(spec["downsample"], blk.downsample, f"blocks.{i}.downsample")
        for side in ("main", "short"):
            if getattr(blk.join, f"{side}_index") is not None:
                state[f"blocks.{i}.join.{side}_index"] = getattr(blk.join, f"{side}_index")
        if blk.const is not None:
            state[f"blocks.{i}.join.const"] = blk.const
    del net["pool"]
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state.update({k: v for k, v in compact.state_dict().items() if k.startswith("classifier")})
    torch.save({"format": FORMAT, "version": 1, "manifest": {**compact.manifest, "net": net},
                "state_dict": state}, path)


@pytest.mark.parametrize("arch", ["resnet20", "imagenet_resnet18"])
def test_format_1_files_still_load(arch, tmp_path):
    model, pruned = soft_pruned(arch, "mixed")
    _write_v1(compact_model(model, pruned), tmp_path / "v1.pt", torch.Generator().manual_seed(0))
    loaded = load_compact(tmp_path / "v1.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x), loaded(x)) <= 1e-5


@pytest.mark.parametrize("blob,match", [
    ({"format": FORMAT, "version": 7, "manifest": {}, "state_dict": {}}, "version 7"),
    ({"format": FORMAT, "version": 2, "manifest": {"net": {}}, "state_dict": {}}, "damaged"),
    ({"format": FORMAT, "version": 1, "manifest": {"net": {}}, "state_dict": {}}, "damaged"),
    ({"model": {}}, "not a compact model")])
def test_load_compact_refuses_other_files_in_one_line(tmp_path, blob, match):
    torch.save(blob, tmp_path / "x.pt")
    with pytest.raises(UserError, match=match) as e:
        load_compact(tmp_path / "x.pt")
    assert "\n" not in str(e.value)
