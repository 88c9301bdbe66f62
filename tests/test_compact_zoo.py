"""Compaction of every CNN family: exact outputs, costs from the graph, runtimes.

torchvision's classification families, timm's CNN families and the CIFAR networks, at small
inputs, with random BN statistics and random masks (each conv loses a random share of up to
half its filters, so residual-coupled, depthwise, concatenated and squeeze-excitation channels
are all hit).
Every model is built once per module; each test deep-copies it.
"""
import contextlib
import copy
import io
import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import calibrate_bn
from models import build_model
from utils.compaction import (NetworkCost, compact_cost, compact_model, export_onnx,
                              find_prunable_convs, load_compact, network_cost, save_compact)
from utils.compaction.converter import RULES
from tests.soft_pruning import (  # noqa: F401 (one_thread: autouse)
    assert_exact_in_float64, one_thread, rel_error)

FAMILIES = [  # (arch, image side): squeeze-excitation on maps larger than 1×1 scales them
    # (MobileNetV3-S at 32: the last blocks' maps are 1×1, an elementwise product)
    ("imagenet_vgg11_bn", 32), ("imagenet_mobilenet_v2", 32),
    ("imagenet_mobilenet_v3_small", 32), ("imagenet_mobilenet_v3_large", 64),
    ("imagenet_efficientnet_b0", 64),
    ("imagenet_regnet_x_400mf", 32), ("imagenet_regnet_y_400mf", 64),
    ("imagenet_mnasnet0_5", 32), ("imagenet_shufflenet_v2_x0_5", 32),
    ("imagenet_googlenet", 32), ("imagenet_inception_v3", 75), ("imagenet_densenet121", 32),
    ("imagenet_resnext50_32x4d", 32), ("imagenet_wide_resnet50_2", 32),
    ("vgg16_bn", 32), ("vgg19_bn", 32), ("mobilenet_v2", 32)]
ONE = (1, 1, 1, 1)


def narrow_vgg11_bn():
    """torchvision's VGG-11 with BN, its classifier 64 wide: the 4096-wide one holds 120 of
    its 133 M parameters, and the rules it exercises (the 1×1 maps pooled to 7×7, flattened
    into a Linear) are the same at any width."""
    model = build_model("imagenet_vgg11_bn", 10)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(64, 10))
    return model


def one_block_per_stage(**kwargs):
    """A torchvision ResNet of bottlenecks with one block per stage (wide, grouped): the
    family's blocks, in a fraction of the time."""
    def build():
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, list(ONE), num_classes=10, **kwargs)
    return build


# torchvision families built narrower than build_model builds them (their parameters in
# float64 took most of the module's time: 10 M of them and more)
NARROW = {"imagenet_vgg11_bn": narrow_vgg11_bn,
          "imagenet_resnext50_32x4d": one_block_per_stage(groups=32, width_per_group=4),
          "imagenet_wide_resnet50_2": one_block_per_stage(width_per_group=128)}


def timm_build(name: str, **kwargs):
    """A timm model, narrowed through timm's own arguments where it takes them (one block per
    stage, fewer channels: the family's ops, in a fraction of the time)."""
    def build():
        import timm

        return timm.create_model(name, num_classes=10, **kwargs)
    return build


def timm_byob(name: str, blocks: str, **kwargs):
    """RepVGG and MobileOne (timm's ByobNet) with one block per stage."""
    def build():
        import timm
        from timm.models import byobnet

        cfg = getattr(byobnet, blocks)(d=ONE, **kwargs)
        return timm.create_model(name, num_classes=10, blocks=cfg)
    return build


def timm_vovnet():
    from timm.models.vovnet import VovNet, model_cfgs

    return VovNet(dict(model_cfgs["ese_vovnet19b_dw"], stage_conv_chs=[32, 40, 48, 56],
                       stage_out_chs=[64, 128, 192, 256], layer_per_block=2), num_classes=10)


def timm_hrnet():
    from timm.models.hrnet import HighResolutionNet, cfg_cls

    cfg = copy.deepcopy(cfg_cls["hrnet_w18_small"])
    for stage in ("stage2", "stage3", "stage4"):
        cfg[stage]["num_blocks"] = (1,) * cfg[stage]["num_branches"]
    return HighResolutionNet(cfg, num_classes=10)


def timm_selecsls():
    """SelecSLS-42b's first two stages of blocks and a narrower head."""
    from timm.models.selecsls import SelecSls, SelecSlsBlock

    features = [(32, 0, 64, 64, True, 2), (64, 64, 64, 128, False, 1),
                (128, 0, 144, 144, True, 2), (144, 144, 144, 288, False, 1)]
    cfg = dict(block=SelecSlsBlock, features=features, head=[(288, 320, 3, 2), (320, 256, 1, 1)],
               num_features=256, feature_info=[])
    return SelecSls(cfg, num_classes=10)


def timm_ghostnet():
    """GhostNet-0.5× with one block of each kind (with and without squeeze-excitation)."""
    from timm.models.ghostnet import GhostNet

    cfgs = [[[3, 16, 16, 0, 1]], [[3, 48, 24, 0, 2]], [[3, 72, 24, 0, 1]],
            [[5, 72, 40, 0.25, 2]], [[3, 240, 80, 0, 2]], [[3, 480, 112, 0.25, 1]],
            [[5, 672, 160, 0.25, 2]]]
    return GhostNet(cfgs, num_classes=10, width=0.5)


def timm_ghostnetv2():
    """GhostNetV2-0.5× with the blocks above: its attention resizes a gate to the size of the
    block's output (``size=(out.shape[-2], out.shape[-1])``)."""
    from timm.models.ghostnet import GhostNet

    cfgs = [[[3, 16, 16, 0, 1]], [[3, 48, 24, 0, 2]], [[3, 72, 24, 0, 1]],
            [[5, 72, 40, 0.25, 2]], [[3, 240, 80, 0, 2]], [[3, 480, 112, 0.25, 1]],
            [[5, 672, 160, 0.25, 2]]]
    return GhostNet(cfgs, num_classes=10, width=0.5, version="v2")


XCEPTION = [dict(in_chs=64, out_chs=128, stride=2), dict(in_chs=128, out_chs=256, stride=2),
            dict(in_chs=256, out_chs=256, stride=1),  # the middle flow, once
            dict(in_chs=256, out_chs=(256, 512, 512), stride=2),
            dict(in_chs=512, out_chs=(512, 512, 1024), stride=1, no_skip=True,
                 start_with_relu=False)]
# timm's CNN families (issue 21's table, and the five that compacted before it): the ops of
# each, BatchNormAct2d everywhere (the fused activations), SE/ESE, split attention, ghost
# modules' slices, multi-resolution fusion with upsampling (ECA and MixConv: tests/test_timm.py)
TIMM_FAMILIES = {
    "timm:tinynet_e (EfficientNet)": (timm_build("tinynet_e"), 32),
    "timm:mobilenetv3_small_050": (timm_build("mobilenetv3_small_050"), 32),
    "timm:regnety_002": (timm_build("regnety_002"), 32),
    "timm:cs3darknet_s (CSPDarknet)": (timm_build("cs3darknet_s"), 32),
    "timm:densenet121 (2 layers per block)": (timm_build("densenet121",
                                                         block_config=(2, 2, 2, 2)), 32),
    "timm:ese_vovnet19b_dw (narrow)": (timm_vovnet, 32),
    "timm:repvgg_a0 (1 block per stage)": (timm_byob("repvgg_a0", "_rep_vgg_bcfg",
                                                     wf=(0.5, 0.5, 0.5, 1.0)), 32),
    "timm:mobileone_s0 (1 block per stage)": (timm_byob("mobileone_s0", "_mobileone_bcfg",
                                                        wf=(0.75, 1.0, 1.0, 2.0),
                                                        num_conv_branches=2), 32),
    "timm:inception_v3": (timm_build("inception_v3"), 75),
    "timm:xception41 (short)": (timm_build("xception41", block_cfg=XCEPTION), 32),
    "timm:resnetv2_18 (pre-activation, narrow)": (timm_build(
        "resnetv2_18", layers=ONE, channels=(16, 32, 64, 128)), 32),
    "timm:resnest14d (split attention)": (timm_build("resnest14d"), 32),
    "timm:hrnet_w18_small (1 block per branch)": (timm_hrnet, 32),
    "timm:ghostnet_050 (7 blocks)": (timm_ghostnet, 32),
    "timm:rexnet_100 (half width and depth)": (timm_build("rexnet_100", width_mult=0.5,
                                                          depth_mult=0.5), 32),
    "timm:resnet18d (ResNet-D)": (timm_build("resnet18d", layers=ONE), 32),
    "timm:seresnext26d_32x4d": (timm_build("seresnext26d_32x4d", layers=ONE), 32),
    "timm:res2net50_14w_8s": (timm_build("res2net50_14w_8s", layers=ONE), 32),
    "timm:dla46_c (DLA)": (timm_build("dla46_c"), 32),
    "timm:selecsls42b (two stages)": (timm_selecsls, 32),
    # issue 32's families: rules for a learnable scale and shift (HGNetV2's learnable affine
    # blocks, FastViT's layer scale), pad (HGNetV2's stem, blur pooling), a blur's fixed
    # F.conv2d, BatchNorm1d of pooled features (RepViT's head), sub (FastViT's RepMixer), a
    # resize to another tensor's size (GhostNetV2); and parts kept whole (KEPT below)
    "timm:hgnetv2_b0": (timm_build("hgnetv2_b0"), 32),
    "timm:resnetblur18 (narrow)": (timm_build("resnetblur18", layers=ONE,
                                              channels=(16, 32, 64, 128), stem_width=16), 32),
    "timm:repvit_m0_9 (1 block per stage)": (timm_build("repvit_m0_9", depth=ONE), 32),
    "timm:fastvit_t8 (1 block per stage)": (timm_build("fastvit_t8", layers=ONE), 32),
    "timm:ghostnetv2 (7 blocks)": (timm_ghostnetv2, 64),
    "timm:tresnet_m (narrow)": (timm_build("tresnet_m", layers=[1, 1, 1, 1],
                                           width_factor=0.5), 32),
    "timm:tf_mobilenetv3_small_minimal_100": (timm_build("tf_mobilenetv3_small_minimal_100"), 32),
    "timm:mobilevit_xxs": (timm_build("mobilevit_xxs"), 32),
    "timm:efficientvit_b0": (timm_build("efficientvit_b0"), 32),
    "timm:lambda_resnet26t": (timm_build("lambda_resnet26t"), 32),
}
# what each family keeps whole: {family: the ops of its first part kept whole}; every other
# family keeps nothing
KEPT = {
    "timm:tresnet_m (narrow)": ["view", "contiguous"],  # space-to-depth: pixels into channels
    "timm:tf_mobilenetv3_small_minimal_100": ["Conv2dSame: fx cannot trace it"],
    "timm:mobilevit_xxs": ["MobileVitBlock: fx cannot trace it"],
    "timm:efficientvit_b0": ["LiteMLA: fx cannot trace it"],
    "timm:lambda_resnet26t": ["reshape", "matmul", "unsqueeze", "squeeze"],
}
RULES_SEEN: dict = {}
KEPT_SEEN: dict = {}


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(arch, size):
        if (arch, size) not in cache:
            torch.manual_seed(0)
            model = (TIMM_FAMILIES[arch][0]() if arch in TIMM_FAMILIES else NARROW[arch]()
                     if arch in NARROW else build_model(arch, 10))
            # deep random networks saturate: BN statistics of random images keep the output
            # dependent on the input (else the exactness tests would be vacuous)
            cache[arch, size] = calibrate_bn(model, (3, size, size),
                                             torch.Generator().manual_seed(1))
        return copy.deepcopy(cache[arch, size])

    return get


@torch.no_grad()
def prune_some(model, seed=0, share=0.5, shape=None):
    """Zero a random count (0 … ⌊share·F⌋) of random filters in every prunable conv (of the
    model run at ``shape``, (C, H, W): what it keeps whole depends on it). ``model`` may be
    its ``ModelGraph``, traced at that size already."""
    gen = torch.Generator().manual_seed(seed)
    pruned = {}
    for c in find_prunable_convs(model, input_shape=shape):
        k = int(torch.randint(int(share * c.filters) + 1, (), generator=gen))
        idx = torch.randperm(c.filters, generator=gen)[:k]
        c.conv.weight[idx] = 0
        pruned[c.name] = idx
    return pruned


def flop_counter_macs(model, shape) -> int:
    x = torch.zeros((1,) + tuple(shape), dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        model(x)  # the compact network's constant maps are cached: not part of a forward
        with FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() // 2


CASES = FAMILIES + [(k, size) for k, (_, size) in TIMM_FAMILIES.items()]


@pytest.mark.parametrize("arch,size", CASES, ids=[a for a, _ in CASES])
def test_family_compacts_exactly_and_counts_right(arch, size, built):
    """In float64: a deep float32 network is ~1e-5 from itself in float64 (EfficientNet-B0
    here), so only float64 separates a wrong constant from rounding."""
    model = built(arch, size).double()
    shape = (3, size, size)
    # traced once, as a Pruner does (discovery, costs, compaction); reads the weights at
    # every call
    cost_of = NetworkCost(model, shape)
    dense_cost = cost_of({})
    assert dense_cost == (flop_counter_macs(model, shape),
                          sum(p.numel() for p in model.parameters()))
    pruned = prune_some(cost_of.graph, shape=shape)
    compact = compact_model(cost_of.graph, pruned, input_shape=shape)
    assert_exact_in_float64(model, compact, shape)
    cost = compact_cost(compact, shape)
    assert cost == cost_of(pruned)  # the per-epoch count: the same walk
    assert cost[0] == flop_counter_macs(compact, shape)
    assert cost[0] < dense_cost[0] and cost[1] < dense_cost[1]
    json.dumps(compact.manifest)  # plain data
    RULES_SEEN.update(compact.rules_used)
    KEPT_SEEN[arch] = compact.kept_whole


def test_every_rule_of_the_walk_was_exercised():
    """Runs after the families above (same module, in order): each way of carrying a
    constant or saving work fired for at least one of them."""
    assert len(RULES_SEEN) > 0, "run with the family tests"
    assert set(RULES) - set(RULES_SEEN) == set()


def test_only_what_no_rule_takes_is_kept_whole():
    """Runs after the families above: the families of KEPT keep their attention, their
    pixels-into-channels view or the modules fx cannot trace into whole (and still prune the
    rest: the family test checks fewer FLOPs), every other family keeps nothing."""
    assert len(KEPT_SEEN) == len(CASES), "run with the family tests"
    assert {arch for arch, parts in KEPT_SEEN.items() if parts} == set(KEPT)
    for arch, ops in KEPT.items():
        assert KEPT_SEEN[arch][0]["ops"] == ops, arch


# -- costs against hand-computed values ---------------------------------------------------------

def _bn(n, beta=1.0):
    bn = nn.BatchNorm2d(n)
    with torch.no_grad():  # a pruned channel's constant: β − γ·mean/√(var+ε) = β > 0
        bn.bias.fill_(beta)
    return bn


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), _bn(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), _bn(8)
        self.project, self.bn3 = nn.Conv2d(8, 4, 1, bias=False), _bn(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.expand(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.bn3(
            self.project(x)), 1), 1))


class Excitation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.project, self.bn2 = nn.Conv2d(8, 4, 1, bias=False), _bn(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        y = self.bn2(self.project(x * s))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), _bn(4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


# (model, pruned filters, (dense MACs, dense params), (compact MACs, compact params)) on 3×8×8
HAND = [
    # expand keeps 3..7, but channel 3 only feeds the pruned depthwise filter 3: 4 computed;
    # the depthwise conv computes the 4 channels whose input and filter are both kept; the
    # project conv keeps 3 filters over those 4 channels; the fc reads their 3 features.
    # dense:   64·8·3 + 64·8·9 + 64·4·8 + 4·2 = 8200; params 24+16 + 72+16 + 32+8 + 8+2 = 178
    # compact: 64·4·3 + 64·4·9 + 64·3·4 + 3·2 = 3846;  params 12+8 + 36+8 + 12+6 + 6+2 = 90
    (Depthwise, {"expand": [0, 1, 2], "dw": [3], "project": [0]}, (8200, 178), (3846, 90)),
    # channels 0, 1 are pruned: positive constants that the excitation scales per sample.
    # fc1 reads the 6 computed pooled channels (the 2 constants go into its bias), fc2 gives
    # all 8 factors, the project conv reads 6 channels + the 2 scaled ones as a per-sample
    # bias (3 × 2 MACs and weights), the fc reads the 3 kept features.
    # dense:   64·8·27 + 8·2 + 2·8 + 64·4·8 + 4·2 = 15912; params 216+16 + 18 + 24 + 40 + 10
    # compact: 64·6·27 + 6·2 + 2·8 + 64·3·6 + 3·2 + 3·2 = 11560;
    #          params 162+12 + 14 + 24 + 18+6+6 + 8 = 250
    (Excitation, {"conv": [0, 1], "project": [0]}, (15912, 324), (11560, 250)),
    # the 2×2 pooled map of 3 kept channels: 12 of 16 features reach the linear layer
    # dense:   64·4·27 + 16·3 = 6960; params 108+8 + 48+3 = 167
    # compact: 64·3·27 + 12·3 = 5220; params 81+6 + 36+3 = 126
    (Classifier, {"conv": [1]}, (6960, 167), (5220, 126)),
]


@pytest.mark.parametrize("make,pruned,dense,compact", HAND,
                         ids=["depthwise-after-pruned-input", "squeeze-excitation", "linear"])
def test_cost_matches_a_count_by_hand(make, pruned, dense, compact):
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for name, idx in pruned.items():
            model.get_submodule(name).weight[idx] = 0
    shape = (3, 8, 8)
    assert network_cost(model, shape) == dense
    assert network_cost(model, shape, pruned) == compact
    net = compact_model(model, pruned, input_shape=shape)
    assert compact_cost(net, shape) == compact
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert rel_error(model(x), net(x)) <= 1e-5


# -- runtimes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,size", [("imagenet_mobilenet_v3_small", 64),
                                       ("imagenet_shufflenet_v2_x0_5", 48)])
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_runtimes(arch, size, built, tmp_path):
    """The file saved and loaded, inference_mode, channels_last, a trace at another size:
    squeeze-excitation with hardswish; channel split and shuffle."""
    model = built(arch, size)
    pruned = prune_some(model, seed=3)
    compact = compact_model(model, pruned, input_shape=(3, size, size))
    x = torch.randn(2, 3, size, size)
    other = torch.randn(3, 3, size + 16, size + 16)
    with torch.no_grad():
        ref, ref_other = model(x), model(other)
    save_compact(compact, tmp_path / "c.pt")
    with torch.inference_mode():
        assert rel_error(ref, compact(x)) <= 1e-5
        assert torch.equal(compact(x), load_compact(tmp_path / "c.pt")(x))
    cl = copy.deepcopy(compact).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):  # the second run takes the cached maps
            assert rel_error(ref, cl(x.contiguous(memory_format=torch.channels_last))) <= 1e-5
        traced = torch.jit.trace(compact, x)
        assert rel_error(ref_other, traced(other)) <= 1e-5


def test_onnx_runtime_runs_squeeze_excitation_with_hardswish(tmp_path):
    """ONNX Runtime on the first six blocks of MobileNetV3-Small: the stem's hardswish,
    squeeze-excitation with ReLU and with hardswish, an inverted residual. (The exporter's time
    grows with the graph, ~5 s for these blocks against ~27 s for the whole network; the whole
    network's other runtimes are ``test_runtimes``.)"""
    torch.manual_seed(0)
    model = build_model("imagenet_mobilenet_v3_small", 10)
    model.features = model.features[:6]
    model.classifier = nn.Linear(model.features[-1].out_channels, 10)
    model = calibrate_bn(model, (3, 64, 64), torch.Generator().manual_seed(1))
    pruned = prune_some(model, seed=3)
    compact = compact_model(model, pruned, input_shape=(3, 64, 64))
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"SqueezeExcitation", "Hardswish", "Hardsigmoid"} <= kinds
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    assert rel_error(ref, onnx_runtime(compact, x, tmp_path / "m.onnx")) <= 1e-5


def onnx_runtime(compact, x, path) -> torch.Tensor:
    import onnxruntime

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(compact, path, (1,) + tuple(x.shape[1:]))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("arch,size", [("resnet56", 32), ("imagenet_mobilenet_v2", 32)])
def test_attenuated_channels_carry_no_constant(arch, size, built):
    """``--attenuate bn`` zeroes a pruned channel's γ and β: it then emits exactly 0, and the
    compact network needs no constant map at all (a ResNet: no constant of any kind)."""
    model = built(arch, size)
    pruned = prune_some(model, seed=4)
    with torch.no_grad():
        for c in find_prunable_convs(model):
            c.bn.weight[pruned[c.name]] = 0
            c.bn.bias[pruned[c.name]] = 0
    compact = compact_model(model, pruned, input_shape=(3, size, size))
    nodes = compact.manifest["nodes"]
    assert not any(n["attrs"].get("map") for n in nodes)
    if arch == "resnet56":
        assert not any(n["attrs"].get("term") for n in nodes if n["op"] == "join")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert rel_error(model(x), compact(x)) <= 1e-5
