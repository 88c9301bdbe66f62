"""Narrow residual streams (issue 31, item 2): where every operand of a residual sum computes
the same channels — a coupled selection's (``coupling="residual"``) — the compact network
keeps the sum at those channels, with no pad or gather, and stays exact (in float64, with
random BN statistics, so the removed channels carry constants into the stream)."""
import collections
import copy
import warnings

import pytest
import torch
import torchvision

from bench.common import calibrate_bn
from models import build_model
from utils.compaction import (NetworkCost, compact_cost, compact_model, export_onnx,
                              find_prunable_convs)
from utils.pruner import Pruner, PruningWarning
from tests.soft_pruning import assert_exact_in_float64, one_thread  # noqa: F401 (autouse)


class LayerScaled(torch.nn.Module):
    """A stem and two residual blocks whose branch ends in a layer scale, x + γ·BN(conv(…)),
    as ConvNeXt-style CNNs with BatchNorm write their streams."""

    def __init__(self, width=16):
        super().__init__()
        self.stem = self.conv_bn(3, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(
            self.conv_bn(width, width), torch.nn.ReLU(), self.conv_bn(width, width))
            for _ in range(2))
        self.gammas = torch.nn.ParameterList(
            torch.nn.Parameter(torch.rand(width, 1, 1) + 0.5) for _ in range(2))
        self.head = torch.nn.Linear(width, 10)

    @staticmethod
    def conv_bn(cin, cout):
        return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                   torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        x = self.stem(x)
        for block, gamma in zip(self.blocks, self.gammas):
            x = x + block(x) * gamma
        return self.head(x.mean((2, 3)))


NETWORKS = {  # name: (builder, image side)
    "resnet20": (lambda: build_model("resnet20", 10), 32),  # option-A shortcuts
    "mobilenet_v2": (lambda: build_model("mobilenet_v2", 10), 32),
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32),
    "layer-scaled": (LayerScaled, 16),
}


def network(name):
    build, size = NETWORKS[name]
    torch.manual_seed(0)
    model = calibrate_bn(build(), (3, size, size), torch.Generator().manual_seed(1))
    return model, (3, size, size)


def layers(model, shape):
    """The coupled pruner's layers: a group of convs, or a conv of its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)
        return Pruner(model, "fpgm", {"gm": 0.4}, 2, input_shape=shape,
                      coupling="residual").layers


@torch.no_grad()
def prune_coupled(model, shape, seed=0, share=0.5, bn=False):
    """Zero a random count (0 … ⌊share·W⌋) of random channels of every layer, the same in
    every member of a group (as a coupled selection falls); ``bn``: their BatchNorm's γ and β
    too (``attenuate="bn"``: the channels are zero, not constant)."""
    gen = torch.Generator().manual_seed(seed)
    pruned = {}
    for layer in layers(model, shape):
        k = int(torch.randint(int(share * layer.filters) + 1, (), generator=gen))
        chosen = layer.take(torch.randperm(layer.filters, generator=gen), k)
        for m in layer.members:
            idx = layer.part(m, chosen)
            m.conv.conv.weight[idx] = 0
            if bn:
                m.conv.bn.weight[idx] = m.conv.bn.bias[idx] = 0
            pruned[m.conv.name] = idx
    return pruned


@pytest.mark.parametrize("name", list(NETWORKS))
def test_coupled_selections_compact_exactly_in_float64(name):
    model, shape = network(name)
    model = model.double()
    cost_of = NetworkCost(model, shape)
    pruned = prune_coupled(model, shape)
    compact = compact_model(model, pruned, input_shape=shape)
    assert_exact_in_float64(model, compact, shape)
    assert compact_cost(compact, shape) == cost_of(pruned)  # a target's walk counts the same


def onnx_ops(model, pruned, shape, path) -> collections.Counter:
    """The op types on the exported compact network's data path (``bench.compact_zoo``'s
    count, the one its ORT rows print)."""
    from bench.compact_zoo import onnx_ops as data_path_ops

    export_onnx(compact_model(model, pruned, input_shape=shape), path, (2, *shape))
    return data_path_ops(str(path))


@pytest.mark.parametrize("name,coupled_pads", [("torchvision resnet18", 0), ("resnet20", 2)])
def test_a_coupled_compact_resnet_exports_no_pad_or_gather_for_its_streams(name, coupled_pads,
                                                                           tmp_path):
    """The pruned channels zero (``attenuate="bn"``, the API's default): ResNet-20's two
    option-A shortcuts keep one pad each (the dense network's zero channels); independent
    selections pad and gather wherever a narrow output rejoins the stream. (Channels that
    are constant instead, the paper's ``attenuate="weights"`` with trained BN statistics,
    add their constant maps at the readers' borders: issue 31, item 3.)"""
    model, shape = network(name)
    both = copy.deepcopy(model)
    coupled = onnx_ops(both, prune_coupled(both, shape, bn=True), shape, tmp_path / "coupled.onnx")
    alone = onnx_ops(model, prune_alone(model, shape), shape, tmp_path / "alone.onnx")
    assert coupled["Pad"] == coupled["Gather"] == coupled_pads
    assert alone["Pad"] > coupled["Pad"] and alone["Gather"] > coupled["Gather"]


def test_a_stream_written_through_layer_scales_is_one_group_and_exports_narrow(tmp_path):
    """x + γ·BN(conv(…)): a per-channel scale of the parameters keeps a pruned channel zero (or
    constant), so the stem and both blocks' last convs select together and the stream is
    narrow (FastViT's streams stay uncoupled for other reasons: a difference of two
    BatchNorms of the stream, and a last conv with no BatchNorm)."""
    model, shape = network("layer-scaled")
    group, = [layer for layer in layers(model, shape) if layer.coupled]
    assert [m.conv.name for m in group.members] == ["stem.0", "blocks.0.2.0", "blocks.1.2.0"]
    ops = onnx_ops(model, prune_coupled(model, shape, bn=True), shape, tmp_path / "c.onnx")
    assert ops["Pad"] == ops["Gather"] == 0 and ops["Add"] == 2  # the sums, narrow
    assert ops["Mul"] == 0  # each scale folded into its conv with the BatchNorm


@torch.no_grad()
def prune_alone(model, shape, seed=0, share=0.5):
    """Random shares, every conv its own random filters (an uncoupled selection), their
    BatchNorm's γ and β zero too."""
    gen = torch.Generator().manual_seed(seed)
    pruned = {}
    for c in find_prunable_convs(model, input_shape=shape):
        k = int(torch.randint(1, int(share * c.filters) + 1, (), generator=gen))
        pruned[c.name] = torch.randperm(c.filters, generator=gen)[:k]
        c.conv.weight[pruned[c.name]] = 0
        c.bn.weight[pruned[c.name]] = c.bn.bias[pruned[c.name]] = 0
    return pruned


def test_the_zoo_bench_selects_as_a_coupled_run_and_counts_the_data_path(tmp_path):
    """``bench.compact_zoo --coupling residual``: every member of a stream loses the same
    channels (a group's combined GM ranking), and the op counts it prints are those of the
    data path (a constant map's own ops, folded by ONNX Runtime at load, are not counted)."""
    from bench.compact_zoo import onnx_ops as data_path_ops, soft_pruned_gm

    shape = (3, 32, 32)
    model, pruned = soft_pruned_gm("resnet20", 32, coupling="residual")
    group, = [layer for layer in layers(model, shape) if layer.coupled]
    assert group.filters == 64  # one stream: option-A shortcuts widen it, stage by stage
    chosen = set()
    for m in group.members:
        chosen |= set((pruned[m.conv.name] + m.offset).tolist())
    assert len(chosen) == int(0.4 * 64)
    for m in group.members:  # each member: the chosen channels it writes, no other
        assert set((pruned[m.conv.name] + m.offset).tolist()) == chosen & set(m.span)

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    const = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
                 "v", TensorProto.FLOAT, [1, 2], [1.0, 2.0])),
             helper.make_node("Pad", ["c", "p"], ["cp"]),  # a constant map's own work
             helper.make_node("Gather", ["cp", "i"], ["cg"])]
    data = [helper.make_node("Add", ["input", "cg"], ["s"]),
            helper.make_node("Mul", ["s", "s"], ["y"])]
    graph = helper.make_graph(const + data, "g", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    counts = data_path_ops(str(tmp_path / "g.onnx"))
    assert counts == {"Add": 1, "Mul": 1}
