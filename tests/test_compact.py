"""Compaction of the ResNets, the compact file and its runtimes: the compact network computes
what the soft-pruned one does, and is smaller. (Every other family: test_compact_zoo.py.)"""
import copy
import importlib.util
import json

import pytest
import torch
from torch import nn

import compact as compact_cli
from utils.compaction import (FORMAT, FORMAT_VERSION, compact_cost, compact_model, export_onnx,
                              load_compact, network_cost, save_compact)
from utils.report.figures import compaction_figures
from utils.report.fpgm import fpgm_flops_reduction
from utils.run.compact_run import compact_checkpoint
from utils.compaction.layers import FoldedConv
from utils.compaction.tracing import ModelGraph
from utils.errors import UserError
from bench.common import randomize_bn
from tests.soft_pruning import prune, random_model, rel_error, soft_pruned

SHAPE = (3, 32, 32)


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
    graph = ModelGraph(model, (3, size, size))  # traced once for the four selections
    for rate in (0.3, 0.5, "one", "mixed"):
        model.load_state_dict(weights)
        pruned = prune(graph, rate)
        compact = compact_model(graph, pruned, input_shape=(3, size, size))
        with torch.no_grad():
            ref, out = model(x), compact(x)
        assert rel_error(ref, out) <= 1e-5, rate
        if rate == "one":  # every prunable conv keeps exactly one filter
            assert all(m.conv.out_channels == 1 for m in compact.modules()
                       if isinstance(m, FoldedConv))


def test_every_correction_is_exercised():
    """Random BN parameters must produce each way a constant is carried in a ResNet; without
    them (the widths-only network of the bench) the outputs differ."""
    model, pruned = soft_pruned("resnet56", 0.4)
    compact = compact_model(model, pruned, input_shape=SHAPE)
    nodes = compact.manifest["nodes"]
    joins = [n for n in nodes if n["op"] == "join"]
    assert len(joins) == 27  # every block's add
    assert any(n["op"] == "conv" and n["attrs"]["map"] for n in nodes)  # a border map
    assert any(len(n["attrs"]["operands"]) == 2 and n["attrs"]["term"] == "map" and
               n["attrs"]["relu"] for n in joins)  # narrow main path, constants, fused ReLU
    assert not any(isinstance(m, nn.BatchNorm2d) for m in compact.modules())  # all folded
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        widths = compact_model(model, pruned, exact=False, input_shape=SHAPE)
        assert rel_error(model(x), widths(x)) > 1e-2
    assert not any(n["attrs"].get("map") or n["attrs"].get("term") for n in
                   widths.manifest["nodes"])
    model, pruned = soft_pruned("tiny_bottleneck", 0.4)  # 1×1 convs: constants in the bias
    exact = compact_model(model, pruned, input_shape=SHAPE)
    widths = compact_model(model, pruned, exact=False, input_shape=SHAPE)
    biases = [[m.conv.bias for m in net.modules() if isinstance(m, FoldedConv) and
               m.conv.kernel_size == (1, 1)] for net in (exact, widths)]
    assert any(not torch.allclose(a, b) for a, b in zip(*biases) if a.shape == b.shape)


def test_unpruned_model_compacts_to_the_same_size():
    model, _ = soft_pruned("resnet20", 0.0)
    compact = compact_model(model, {}, input_shape=SHAPE)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-6
    assert compact_cost(compact, SHAPE) == network_cost(model, SHAPE)
    assert network_cost(model, SHAPE)[1] == sum(p.numel() for p in model.parameters())


def test_fewer_flops_and_params():
    model, pruned = soft_pruned("resnet56", 0.4375)  # 7 of 16, the paper's 50% setting
    compact = compact_model(model, pruned, input_shape=SHAPE)
    flops_d, params_d = network_cost(model, SHAPE)
    flops_c, params_c = compact_cost(compact, SHAPE)
    assert flops_d == 125_485_696  # the 125.5 M of the FPGM/SFP tables: MACs, not 2×MACs
    assert flops_c < 0.45 * flops_d and params_c < 0.45 * params_d
    assert (flops_c, params_c) == network_cost(model, SHAPE, pruned)  # the same walk


def test_training_mode_and_inputs_untouched():
    """In-place joins only run without autograd; the caller's input is never modified."""
    model, pruned = soft_pruned("resnet20", 0.4)
    compact = compact_model(model, pruned, input_shape=SHAPE)
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    with torch.no_grad():
        compact(x)
    assert torch.equal(x, x0)
    compact.train()
    compact(x).sum().backward()
    assert all(m.conv.weight.grad is not None for m in compact.modules()
               if isinstance(m, FoldedConv))


def test_model_is_not_modified_and_device_dtype_follow():
    model, pruned = soft_pruned("resnet20", 0.4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact = compact_model(model.double(), pruned, input_shape=SHAPE)
    assert next(compact.parameters()).dtype == torch.float64
    for k, v in model.state_dict().items():
        assert torch.equal(v.to(before[k].dtype), before[k])
    assert not model.training


def test_save_load_round_trip(tmp_path):
    model, pruned = soft_pruned("imagenet_resnet18", 0.4)
    compact = compact_model(model, pruned, input_shape=SHAPE, arch="imagenet_resnet18")
    path = tmp_path / "model_compact.pt"
    save_compact(compact, path)
    blob = torch.load(path, weights_only=True)  # no pickled code in the file
    json.dumps(blob["manifest"])  # the manifest is plain data
    assert blob["manifest"]["arch"] == "imagenet_resnet18" and blob["version"] == FORMAT_VERSION
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
    assert load_compact(tmp_path / "c.pt").manifest["arch"] == "resnet20" and ts.is_file()


def test_compaction_figures_use_the_summary_keys():
    """One function for compact.py and the end of a training run: summary.json's keys."""
    model, pruned = soft_pruned("resnet20", 0.4)
    compact = compact_model(model, pruned, input_shape=SHAPE)
    fig = compaction_figures(model, compact, (1, 3, 32, 32), "resnet20", 0.6, 0.5)
    assert set(fig) == {"flops_unit", "flops_dense", "flops", "flops_reduction", "params_dense",
                        "params", "params_reduction", "keep_ratio",
                        "fpgm_analytic_flops_reduction", "keep_ratio_nominal",
                        "fpgm_analytic_flops_reduction_nominal", "max_rel_error"}
    assert (fig["flops_dense"], fig["params_dense"]) == network_cost(model, SHAPE)
    assert (fig["flops"], fig["params"]) == network_cost(model, SHAPE, pruned)
    assert fig["fpgm_analytic_flops_reduction"] == fpgm_flops_reduction("resnet20", 0.6)
    assert fig["max_rel_error"] <= 1e-5
    # parameters as the dense network counts them: folded BN still counts γ and β per filter
    # (the folded bias is one of them: these convs had none of their own)
    kept = sum(m.conv.out_channels for m in compact.modules() if isinstance(m, FoldedConv))
    own = sum(p.numel() for p in compact.parameters())
    assert fig["params"] == own + kept
    fig = compaction_figures(model, compact_model(model, pruned, exact=False, input_shape=SHAPE),
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


def test_every_export_from_the_same_command(tmp_path, capsys):
    """--pt2, --onnx and --torchscript: each file computes what the soft-pruned network does,
    at another batch size than the export's (the axis is dynamic)."""
    import onnxruntime

    model = fake_checkpoint(tmp_path / "checkpoint.pt")
    pt2_path, onnx_path, ts_path = tmp_path / "m.pt2", tmp_path / "m.onnx", tmp_path / "m_ts.pt"
    assert compact_cli.main([str(tmp_path / "checkpoint.pt"), "--pt2", str(pt2_path),
                             "--onnx", str(onnx_path), "--torchscript", str(ts_path)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("note: TorchScript is deprecated") and "--pt2" in err \
        and "\n" not in err
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    program = torch.export.load(str(pt2_path))
    assert {type(n.target) for n in program.graph.nodes if n.op == "call_function"} \
        == {torch._ops.OpOverload}  # aten ops only: no function of ours
    with torch.no_grad():
        assert rel_error(ref, program.module()(x)) <= 1e-5
        assert rel_error(ref[:1], program.module()(x[:1])) <= 1e-5
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options,
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert rel_error(ref, torch.from_numpy(got)) <= 1e-5
    with pytest.warns(FutureWarning, match=r"torch\.jit\.load.* is deprecated"):  # torch ≥ 2.9
        scripted = torch.jit.load(str(ts_path))
    assert rel_error(ref, scripted(x)) <= 1e-5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_onnx_graph_is_what_the_widths_need(tmp_path):
    """No BatchNormalization, no scatter, no transposes; ONNX Runtime matches."""
    import onnx
    import onnxruntime

    model, pruned = soft_pruned("imagenet_resnet18", "mixed")  # both operands narrow, too
    compact = compact_model(model, pruned, input_shape=(3, 64, 64))
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
        compact_model(model, {"conv_1_3x3": kept}, input_shape=SHAPE)
    with torch.no_grad():
        model.conv_1_3x3.weight.zero_()
    with pytest.raises(UserError, match="all 16 filters"):
        compact_model(model, {"conv_1_3x3": list(range(16))}, input_shape=SHAPE)
    with pytest.raises(UserError, match="not prunable convs"):
        compact_model(model, {"stage_9.conv": [0]}, input_shape=SHAPE)
    with pytest.raises(UserError, match="FPGM"):
        fpgm_flops_reduction("vgg16", 0.6)


def test_a_network_whose_every_pair_feeds_a_part_kept_whole_is_refused_in_one_line():
    """The one conv feeds a GroupNorm, which the compactor keeps whole: nothing is left."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                          nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError) as e:
        compact_model(model, {}, input_shape=(3, 8, 8))
    assert str(e.value) == ("cannot compact: nothing is left to prune: every conv → BatchNorm "
                            "pair of this Sequential feeds a part the compactor keeps whole "
                            "(1 conv feeding '2' (GroupNorm))")


class Unsqueezed(nn.Module):
    """``unsqueeze`` (GCNet's op) both ways the compactor reads it: an excitation's factors
    brought back to (N, C, 1, 1) by ``unsqueeze(-1)`` twice, and two maps given a new dim 2,
    multiplied and summed over it (at full width)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        x = x * s.unsqueeze(-1).unsqueeze(-1)
        y = torch.relu(self.bn2(self.conv2(x)))
        z = (x.unsqueeze(2) * torch.unsqueeze(y, 2)).sum(2)
        return self.head(self.bn3(self.conv3(z)).mean((2, 3)))


def test_unsqueeze_compacts_exactly_at_any_size():
    torch.manual_seed(0)
    model = Unsqueezed().double().eval()
    randomize_bn(model, torch.Generator().manual_seed(1))
    pruned = prune(model, 0.4)
    compact = compact_model(model, pruned, input_shape=(3, 8, 8))
    assert compact.rules_used["computed at full width"] > 0
    for size in (8, 13):  # traced at 8×8; the maps and views follow the size
        x = torch.randn(3, 3, size, size, dtype=torch.float64)
        with torch.no_grad():
            assert rel_error(model(x), compact(x)) <= 1e-12
    assert compact_cost(compact, (3, 8, 8)) == network_cost(model, (3, 8, 8), pruned)


def test_a_new_dim_before_the_batch_is_kept_whole():
    """``unsqueeze(0)`` has no rule (traced at batch 1 it would look like a new channel dim):
    it and the sum after it run as in the dense network, the conv feeding them unpruned."""
    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0, self.bn0 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.conv, self.bn = nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.bn(self.conv(torch.relu(self.bn0(self.conv0(x)))))
            return x.unsqueeze(0).sum(0).mean((2, 3))

    model = First().double().eval()
    randomize_bn(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.conv0.weight[[1, 4]] = 0
    compact = compact_model(model, {"conv0": [1, 4]}, input_shape=(3, 8, 8))
    assert [p["convs"] for p in compact.kept_whole] == [["conv"]]
    assert compact.kept_whole[0]["ops"] == ["unsqueeze", "sum"]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-12


RUNTIME_ARCHS = [("resnet20", 32), ("tiny_bottleneck", 32)]  # option A; bottleneck + downsample


@pytest.mark.parametrize("arch,size", RUNTIME_ARCHS)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_every_runtime_mode(arch, size, tmp_path):
    """no_grad, inference_mode (building, loading and moving inside it: inference tensors have
    no version counter), channels_last, traced: all equal the soft-pruned net."""
    model, pruned = soft_pruned(arch, "mixed")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    compact = compact_model(model, pruned, input_shape=(3, size, size))
    save_compact(compact, tmp_path / "c.pt")
    with torch.no_grad():
        assert rel_error(ref, compact(x)) <= 1e-5
    with torch.inference_mode():
        built = compact_model(model, pruned, input_shape=(3, size, size))
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
    other = torch.randn(3, 3, size + 8, size + 8)  # another batch and image size
    with torch.no_grad():
        ref_other = model(other)
        assert rel_error(ref, traced(x)) <= 1e-5 and rel_error(ref_other, traced(other)) <= 1e-5
        assert rel_error(ref_other, compact(other)) <= 1e-5  # eager: a new size, new maps
    compact.train()  # autograd through the joins
    compact(x).sum().backward()


def test_cached_maps_follow_new_weights():
    """load_state_dict and .to() drop the cached constant maps."""
    model, pruned = soft_pruned("resnet20", 0.5)
    other = random_model("resnet20", seed=5)  # other BN statistics, the same pruned filters
    with torch.no_grad():
        for name, idx in pruned.items():
            other.get_submodule(name).weight[idx] = 0
    a = compact_model(model, pruned, input_shape=SHAPE)
    b = compact_model(other, pruned, input_shape=SHAPE)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a(x)  # fills the caches
        a.load_state_dict(b.state_dict())
        assert rel_error(other(x), a(x)) <= 1e-5
        a.double()(x.double())
    maps = [m._cache[1] for m in a.modules() if getattr(m, "_cache", (0, None))[1] is not None]
    assert maps and all(t.dtype == torch.float64 for t in maps)


@pytest.mark.parametrize("blob,match", [
    ({"format": FORMAT, "version": 1, "manifest": {}, "state_dict": {}}, "re-run"),
    ({"format": FORMAT, "version": 2, "manifest": {"net": {}}, "state_dict": {}}, "version 2"),
    ({"format": FORMAT, "version": 7, "manifest": {}, "state_dict": {}}, "version 7"),
    ({"format": FORMAT, "version": FORMAT_VERSION, "manifest": {"nodes": [{}]},
      "state_dict": {}}, "damaged"),
    ({"model": {}}, "not a compact model")])
def test_load_compact_refuses_other_files_in_one_line(tmp_path, blob, match):
    torch.save(blob, tmp_path / "x.pt")
    with pytest.raises(UserError, match=match) as e:
        load_compact(tmp_path / "x.pt")
    assert "\n" not in str(e.value)


def test_the_nominal_keep_ratio_of_any_method(tmp_path):
    """1 − the run's rates, whichever criteria its method uses (an L1 run's own rate; a budget
    run's: what its plan keeps)."""
    run = tmp_path / "run"
    run.mkdir()
    fake_checkpoint(run / "checkpoint.pt")
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["args"] = {"prune_rate_cs": 0.0, "prune_rate_norm": 0.0, "prune_rate_l1": 0.5,
                    "prune_rate_gm": 0.0}
    torch.save(ckpt, run / "checkpoint.pt")
    assert compact_checkpoint(run)["keep_ratio_nominal"] == pytest.approx(0.5)
    ckpt["args"].update(prune_rate_l1=None, target_flops=0.5)
    torch.save(ckpt, run / "checkpoint.pt")
    fig = compact_checkpoint(run)
    assert fig["keep_ratio_nominal"] == fig["keep_ratio"]


def test_an_unfinished_run_is_not_compacted_unless_asked(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fake_checkpoint(run / "checkpoint.pt")
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["args"]["epochs"] = 5  # stopped after 3 of 5 epochs
    torch.save(ckpt, run / "checkpoint.pt")
    assert compact_cli.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "unfinished run (after 3 of 5 epochs)" in err and "--allow_unfinished" in err
    assert len(err.strip().splitlines()) == 1 and not (run / "model_compact.pt").exists()
    assert compact_cli.main([str(run), "--allow_unfinished"]) == 0
    assert (run / "model_compact.pt").exists()


def test_a_compact_network_used_under_autocast_first_keeps_full_precision_maps():
    """Its constant maps are computed once and kept: under bfloat16 autocast first, they were
    kept at 8 significant bits, and a later float32 check (a run with --amp evaluates before it
    measures) found an error of 5e-4 where the compaction is exact."""
    model, pruned = soft_pruned("resnet56", 0.4)
    compact = compact_model(model, pruned, input_shape=SHAPE)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        compact(x)
    assert compaction_figures(model, compact, SHAPE, "resnet56", 0.6)["max_rel_error"] <= 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the check runs in float32 inside too
        assert compaction_figures(model, compact, SHAPE, "resnet56", 0.6)["max_rel_error"] <= 1e-5
