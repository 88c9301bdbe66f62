"""Coupled selection (``coupling="residual"``, issue 31): the convs whose outputs meet in one
residual sum are found in the traced graph and select the same channels, as one layer of the
schedule, the target, the checkpoint and the report; off, nothing changes."""
import copy
import warnings

import pytest
import torch
import torchvision

from models.resnet_cifar import resnet20
from models.vgg_cifar import vgg16_bn
from utils.compaction import NetworkCost
from utils.errors import OptionError
from utils.method.criteria import criterion
from utils.method.schedule import count
from utils.pruner import Pruner, PruningWarning
from utils.report import config

SHAPE = (3, 32, 32)


def model(seed=0):
    torch.manual_seed(seed)
    return resnet20(num_classes=4)


def cs_data(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, *SHAPE, generator=g), torch.arange(16) % 4) for _ in range(n)]


def pruner(net, method="fpgm", epochs=4, **kw):
    rates = {"gm": 0.4} if method == "fpgm" else {"cs": 0.1, "gm": 0.4}
    data = {"cs_data": cs_data()} if method == "fsdp" else {"input_shape": SHAPE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)  # no optimizer: not what is tested
        return Pruner(net, method, rates, epochs, **data, **kw)


def train_a_little(net, epoch):
    """A stand-in for an epoch of training: every weight moved by seeded noise."""
    g = torch.Generator().manual_seed(100 + epoch)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def run(p, net, epochs):
    p.start()
    for e in epochs:
        train_a_little(net, e)
        p.step(e)


def in_stream(p, group):
    """Each member's selected filters as channels of its group's stream."""
    sel = p.selected()
    return {name: set((sel[name] + offset).tolist()) for name, offset in group.members}


def test_resnet20_one_stream_across_its_option_a_shortcuts():
    p = pruner(model(), coupling="residual")
    names = [n for n, _ in p.groups[0].members]
    assert len(p.groups) == 1 and p.groups[0].width == 64
    assert names == ["conv_1_3x3"] + [f"stage_{s}.{b}.conv_b" for s in (1, 2, 3)
                                      for b in range(3)]
    assert all(offset == 0 for _, offset in p.groups[0].members)  # new channels at the end


def test_torchvision_resnet18_a_group_per_stage_with_its_downsample_conv():
    torch.manual_seed(0)
    p = pruner(torchvision.models.resnet18(num_classes=4), coupling="residual")
    assert [[n for n, _ in g.members] for g in p.groups] == [
        ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        *([f"layer{i}.0.conv2", f"layer{i}.0.downsample.0", f"layer{i}.1.conv2"]
          for i in (2, 3, 4))]
    assert [g.width for g in p.groups] == [64, 128, 256, 512]


@pytest.mark.parametrize("method", ["fpgm", "fsdp"])
def test_every_member_of_a_group_selects_the_same_channels(method):
    net = model()
    p = pruner(net, method, coupling="residual")
    run(p, net, range(4))
    group = p.groups[0]
    stream = in_stream(p, group)
    rates = (0.1, 0.4) if method == "fsdp" else (0.4,)
    assert sum(p.final_counts()[group.name]) == sum(count(64, r) for r in rates)
    chosen = set(p.mask.layer_selected(group.name).tolist())
    filters = {c.name: c.filters for c in p.convs}
    for name, offset in group.members:
        span = set(range(offset, offset + filters[name]))
        assert stream[name] == chosen & span, name  # the group's channels, where it writes
        assert len(stream[name]) < filters[name]    # and every member keeps one at least


def test_off_selects_as_before_every_conv_on_its_own():
    """coupling="none" (the default): each conv's own lowest-GM filters, as before coupling
    existed (the authors' loop bit for bit: test_reference_equivalence.py)."""
    nets = [model(), model()]
    default, off = pruner(nets[0]), pruner(nets[1], coupling="none")
    for p, net in ((default, nets[0]), (off, nets[1])):
        run(p, net, range(3))
        train_a_little(net, 3)
    gm = criterion("gm")  # the last update ranks the weights as they are before it
    own = {c.name: gm.select(c.conv.weight, torch.arange(c.filters), count(c.filters, 0.4))
           for c in off.convs}
    default.step(3)
    off.step(3)
    assert [(c.name, c.filters) for c in off.layers] == [(c.name, c.filters) for c in off.convs]
    assert not off.groups
    for c in off.convs:
        assert torch.equal(off.selected()[c.name], own[c.name])
        assert torch.equal(default.selected()[c.name], own[c.name])
    assert "coupling" not in off.state_dict()  # a state as saved before coupling existed


def test_resume_from_the_state_dict_continues_bit_for_bit():
    net = model()
    p = pruner(net, "fsdp", coupling="residual")
    run(p, net, range(2))
    saved_net, saved = copy.deepcopy(net.state_dict()), copy.deepcopy(p.state_dict())
    run(p, net, range(2, 4))

    again = model(seed=5)
    again.load_state_dict(saved_net)
    q = pruner(again, "fsdp", coupling="residual")
    q.load_state_dict(saved)
    run(q, again, range(2, 4))
    assert all(torch.equal(p.selected()[k], q.selected()[k]) for k in p.selected())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values()))
    with pytest.raises(Exception, match="coupling 'residual'.*coupling 'none'"):
        pruner(model(), "fsdp").load_state_dict(saved)


def flops_kept(p):
    cost = NetworkCost(p.graph, SHAPE)
    return cost(p.selected())[0] / cost({})[0]


def test_a_target_counts_a_group_once():
    net = model()
    p = pruner(net, coupling="residual", target={"flops": 0.55}, epochs=3)
    convs = {c.name: c.filters for c in p.convs}
    group = p.groups[0]
    assert list(p.final_counts()).count(group.name) == 1
    assert not set(dict(group.members)) & set(p.final_counts())
    assert p.total_filters() == sum(convs.values()) - sum(
        convs[n] for n, _ in group.members) + group.width
    assert abs(p.allocator.fraction(p.mask.plan) - 0.55) <= 0.01
    run(p, net, range(3))
    assert abs(flops_kept(p) - 0.55) <= 0.01


def test_an_option_a_stream_meets_its_target_whichever_channels_its_ranking_prefers():
    """The stream's last stage's own channels (which only its convs write) scored lowest: by
    the ranking alone they would all go first and save the fewest FLOPs (a run at 0.4 kept
    0.478); taken in shares of the writer classes, the group's count fixes the cost."""
    net = model()
    p = pruner(net, coupling="residual", target={"flops": 0.4}, epochs=3)
    group = p.groups[0]
    classes, sizes = p.mask.layers[0].classes
    # channels 0–15 every stage writes, 16–31 the second and third, 32–63 the third alone
    assert p.mask.layers[0].name == group.name and sizes == [16, 16, 32]
    last_stage_own = (classes == 2).nonzero().flatten()
    assert last_stage_own.tolist() == list(range(32, 64))
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, _ in group.members:
            if modules[name].out_channels == group.width:  # a third-stage conv: its own
                modules[name].weight[last_stage_own] *= 0.01  # channels' filters close together
    p.start()
    for epoch in range(3):
        p.step(epoch)
    assert abs(flops_kept(p) - 0.4) <= 0.01
    chosen = set().union(*in_stream(p, group).values())  # the group's channels
    shares = p.mask.layers[0].shares(len(chosen)).tolist()
    assert len(chosen & set(last_stage_own.tolist())) == shares[2] < len(chosen)
    assert sum(shares) == len(chosen) and shares[0] == shares[1] < shares[2]


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_a_target_is_met_where_every_member_writes_the_whole_stream(allocation):
    """torchvision's ResNet: a group's count alone sets its cost (docs/methods.md says why an
    option-A stream, whose members write parts of it, may miss by a little more)."""
    torch.manual_seed(0)  # one block per stage: the allocator walks the graph many times
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1],
                                           num_classes=4)
    p = pruner(net, coupling="residual", target={"flops": 0.6}, epochs=3, allocation=allocation)
    run(p, net, range(3))
    assert abs(flops_kept(p) - 0.6) <= 0.01
    for g in p.groups:
        stream = in_stream(p, g)
        assert all(s == stream[g.members[0][0]] for s in stream.values())


def test_a_network_without_residual_sums_proceeds_uncoupled_with_one_warning():
    torch.manual_seed(0)
    with pytest.warns(PruningWarning, match="nothing to couple: .* the run proceeds uncoupled"):
        net = vgg16_bn(num_classes=4)
        p = Pruner(net, "fpgm", {"gm": 0.4}, 2, input_shape=SHAPE, coupling="residual",
                   optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    assert p.groups == [] and all(len(layer.members) == 1 for layer in p.layers)


@pytest.mark.parametrize("value,near", [("residul", "'residual'"), ("None", "'none'"),
                                        (1, None)])
def test_a_bad_value_is_refused_in_one_line(value, near):
    with pytest.raises(OptionError) as e:
        pruner(model(), coupling=value)
    line = str(e.value)
    assert "\n" not in line and line.startswith("coupling must be one of 'none', 'residual'")
    assert near is None or f"did you mean {near}" in line


def test_the_scripts_flag_is_the_apis_option():
    flag = config.by_name()["coupling"]
    assert config.cli_name("coupling") == "--coupling"
    assert flag.default == "none" and flag.added == "none" and flag.choices == ("none",
                                                                                "residual")
    assert "coupling" in config.must_match()  # a resume must couple as the run did
