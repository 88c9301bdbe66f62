"""The public API: FSDP in anyone's training loop through ``Pruner``."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import notebook_cifar
from models import build_model
from tests.fakedata import write_cifar
from utils.errors import UserError
from utils.pruner import Pruner
from utils.run.trainer import Trainer

EPOCHS = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=64, n_test=32, seed=2, num_classes=4)
    return str(root)


@pytest.fixture
def trainer(data_root, tmp_path):
    """The script's driver, for its model, loaders and reference behaviour."""
    args = notebook_cifar.parser().parse_args([
        "--dataset", "cifar10", "--data_path", data_root, "--save_path", str(tmp_path / "run"),
        "--arch", "resnet20", "--epochs", str(EPOCHS), "--batch_size", "16",
        "--batch_prune_size", "32", "--schedule", "1", "--gammas", "5", "--workers", "0",
        "--manualSeed", "4", "--device", "cpu"])
    torch.manual_seed(4)
    return Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                           nesterov=True)


def _train(model, opt, loader, epoch, scaler=None):
    """A user's plain epoch: nothing of the pruner in it."""
    for group in opt.param_groups:
        group["lr"] = 0.01 * (5 if epoch >= 1 else 1)
    loader.sampler.set_epoch(epoch)
    model.train()
    for x, y, _ in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def test_a_plain_loop_with_the_pruner_equals_the_scripts_driver(trainer):
    """One mechanism: the scripts are clients of the same API, so a user's loop over the same
    batches gives the driver's weights, BN statistics and selections bit for bit."""
    model = copy.deepcopy(trainer.model)
    opt = _sgd(model)
    pruner = Pruner(model, "fsdp", {"cs": 0.1, "gm": 0.4}, EPOCHS, optimizer=opt,
                    cs_data=trainer.mask.data_pass.loader,
                    attenuate="weights", cs_mode="reference")  # the paper's, as the scripts
    model.eval()  # the driver validates before training: the first CS pass runs in eval mode
    trainer.start()
    for epoch in range(EPOCHS):
        _train(model, opt, trainer.train_loader, epoch)
        pruner.step(epoch)
        assert trainer.run_epoch(epoch)
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, model.state_dict()[k]), f"{k} at epoch {epoch}"
        for name, sel in pruner.selected().items():
            assert torch.equal(sel, trainer.mask.selected(name)), name
    small = pruner.compact()
    x = torch.randn(4, 3, 32, 32)
    ref = model.eval()(x)
    assert ((small(x) - ref).abs().max() / ref.abs().max()) < 1e-5
    zero = sum(int((c.conv.weight.flatten(1).abs().sum(1) == 0).sum()) for c in pruner.convs)
    assert zero == sum(len(v) for v in pruner.selected().values()) == 325  # ⌊0.1F⌋ + ⌊0.4F⌋


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def _loop(model, opt, pruner, epochs, start=0, accumulate=1, scaler=None):
    for epoch in range(start, epochs):
        model.train()
        for i, (x, y) in enumerate(_batches()):
            loss = F.cross_entropy(model(x), y) / accumulate
            (scaler.scale(loss) if scaler else loss).backward()
            if (i + 1) % accumulate == 0:
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad()
        pruner.step(epoch)


def test_the_gradient_hook_runs_between_backward_and_step_also_with_scaler_and_accumulation():
    """FPGM scales the selected filters' gradients by 0: whatever the loop's shape, they stay
    exactly zero — a hook that ran before GradScaler's unscale, or per micro-batch, would
    still give zero, so the trajectories are compared too."""
    runs = {}
    for kind in ("plain", "scaler", "accumulate"):
        model = _tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        pruner = Pruner(model, "fpgm", {"gm": 0.25}, 3, optimizer=opt)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if kind == "scaler" else None
        _loop(model, opt, pruner, 3, accumulate=3 if kind == "accumulate" else 1, scaler=scaler)
        for c in pruner.convs:
            sel = pruner.selected()[c.name]
            assert len(sel) == 2 and torch.all(c.conv.weight[sel] == 0), kind
        runs[kind] = model.state_dict()
    for k, v in runs["plain"].items():  # power-of-two scaling is exact
        assert torch.equal(v, runs["scaler"][k]), k


def test_the_first_mask_waits_for_training_so_checkpoints_load_first():
    model = _tiny()
    pruner = Pruner(model, "sfp", {"norm": 0.5}, 3)
    before = model[0].weight.detach().clone()
    model.eval()
    model(_batches()[0][0])  # evaluating before training changes nothing
    assert torch.equal(model[0].weight, before) and not pruner.started
    model.train()
    model(_batches()[0][0])  # the first training forward applies SFP's mask before epoch 0
    assert pruner.started and (model[0].weight.flatten(1).abs().sum(1) == 0).sum() == 4


def test_state_dict_resumes_bit_exactly(tmp_path):
    whole = _tiny()
    opt = torch.optim.SGD(whole.parameters(), lr=0.1, momentum=0.9)
    _loop(whole, opt, Pruner(whole, "fpgm", {"norm": 0.25, "gm": 0.25}, 4, optimizer=opt), 4)

    first = _tiny()
    opt = torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(first, "fpgm", {"norm": 0.25, "gm": 0.25}, 4, optimizer=opt)
    _loop(first, opt, pruner, 2)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(),
                "pruner": pruner.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    second = _tiny(seed=7)  # other initial weights: everything comes from the checkpoint
    opt = torch.optim.SGD(second.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(second, "fpgm", {"norm": 0.25, "gm": 0.25}, 4, optimizer=opt)
    pruner.load_state_dict(ckpt["pruner"])  # before the weights: the order does not matter
    second.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    _loop(second, opt, pruner, 4, start=2)
    for k, v in whole.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k


def test_l1_norm_is_a_method_of_the_api():
    model = _tiny()
    with torch.no_grad():
        model[0].weight[[2, 5]] *= 0.01  # the smallest in L1 (and in L2)
    pruner = Pruner(model, "l1", {"l1": 0.25}, 2)
    pruner.start()
    assert sorted(pruner.selected()["0"].tolist()) == [2, 5]


def test_a_list_of_batches_is_cs_data_as_a_loader_is():
    """Any re-iterable of (inputs, labels) serves; only a DataLoader has a sampler to seed."""
    batches, selected = _batches(), []
    for data in (batches, torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(*map(torch.cat, zip(*batches))), batch_size=8)):
        torch.manual_seed(0)
        pruner = Pruner(_tiny(), "fsdp", {"cs": 0.25, "gm": 0.25}, 1, cs_data=data)
        pruner.step(0)  # the last epoch's update: every selected filter
        selected.append({k: v.tolist() for k, v in pruner.selected().items()})
    assert selected[0] == selected[1] and any(selected[0].values())


@pytest.mark.parametrize("make,match", [
    (lambda: Pruner(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), "sfp", None, 3),
     "no prunable conv in this Sequential"),
    (lambda: Pruner(_tiny(), "l2norm", None, 3), "unknown method 'l2norm'; choose one of: fsdp"),
    (lambda: Pruner(_tiny(), "sfp", {"l3": 0.2}, 3), "unknown criterion 'l3' in the rates"),
    (lambda: Pruner(_tiny(), "fpgm", {"norm": 0.5, "gm": 0.5}, 3),
     "rates\\['norm'\\] 0.5 \\+ rates\\['gm'\\] 0.5 must be < 1"),
    (lambda: Pruner(_tiny(), "sfp", {"cs": 0.1}, 3), "method 'sfp' does not use rates\\['cs'\\]"),
    (lambda: Pruner(_tiny(), "fsdp", None, 3), "give cs_data=, a loader of \\(inputs, labels\\)"),
    (lambda: Pruner(_tiny(), "fsdp", None, 3, cs_data=iter(_batches())),
     "cs_data is an iterator, used up by the first CS pass; give a DataLoader or a list"),
    (lambda: Pruner(_tiny(), "sfp", None), "Pruner needs epochs="),
    (lambda: Pruner(_tiny(), "sfp", None, 3, target={"flops": 0.5}),
     "a target needs input_shape=\\(C, H, W\\)"),
    (lambda: Pruner(_tiny(), "sfp", None, 3, target={"macs": 0.5}),
     "give one target, target={'flops': F} or target={'params': P} \\(got macs\\)"),
    (lambda: Pruner(_tiny(), "sfp", {"norm": 0.3}, 3, target={"params": 0.5}),
     "target={'params': 0.5} sets the rate of method 'sfp' itself, so rates\\['norm'\\]"),
    (lambda: Pruner(_tiny(), "sfp", None, 3, allocation="global"),
     "allocation='global' spreads a budget over the layers and there is none"),
    (lambda: Pruner(_tiny(), "sfp", None, 3, target={"flops": 0.5}, allocation="best"),
     "allocation='best' is not one of uniform, global"),
])
def test_bad_input_is_one_clear_exception(make, match):
    with pytest.raises(UserError, match=match):
        make()


class _Branching(nn.Module):
    """A forward that branches on the data: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x.relu() if x.mean() > 0 else x


class _Shared(nn.Module):
    """One conv called twice, each call into its own BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), \
            nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))


@pytest.mark.parametrize("model,match", [
    (_Branching, r"^cannot trace a _Branching with torch.fx \(.*\); FSDP needs a model whose "
                 "forward has no data-dependent control flow$"),
    (_Shared, r"^cannot compact: conv 'conv' is called more than once$")])
def test_what_compaction_refuses_structurally_is_refused_before_training(model, match):
    """One traced graph for the prunable convs and the compact network: no fallback to the
    modules' order for a model fx cannot trace, no prunable conv the compactor cannot drop."""
    with pytest.raises(UserError, match=match):
        Pruner(model(), "sfp", {"norm": 0.5}, 3)


def test_the_driver_traces_its_model_once(data_root, tmp_path, monkeypatch):
    """The prunable convs, every epoch's cost and the compact network: one fx graph."""
    import utils.compaction.tracing as tracing
    traced = []
    real = tracing.trace_model
    monkeypatch.setattr(tracing, "trace_model", lambda *a, **k: traced.append(1) or real(*a, **k))
    args = notebook_cifar.parser().parse_args([
        "--dataset", "cifar10", "--data_path", data_root, "--save_path", str(tmp_path / "run"),
        "--arch", "resnet20", "--epochs", "1", "--batch_size", "16", "--workers", "0",
        "--method", "fpgm", "--device", "cpu", "--target_flops", "0.7", "--manualSeed", "4"])
    trainer = Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))
    assert trainer.pruner.graph is trainer.graph is trainer.cost.graph
    trainer.start()
    assert trainer.run_epoch(0)
    assert trainer._compact() is not None
    assert len(traced) == 1


def test_out_of_order_steps_other_models_states_and_early_compaction_are_refused():
    pruner = Pruner(_tiny(), "sfp", {"norm": 0.5}, 3)
    pruner.step(0)
    with pytest.raises(UserError, match=r"step\(2\) after step\(0\).*\(next: 1\)"):
        pruner.step(2)
    with pytest.raises(UserError, match=r"step\(0\) after step\(0\)"):
        pruner.step(0)
    with pytest.raises(UserError, match=r"compact\(\) needs the final mask: call it after step\(2\)"):
        pruner.compact()
    other = Pruner(build_model("resnet20", 3), "sfp", {"norm": 0.5}, 3)
    with pytest.raises(UserError, match="load the state of a pruner of this very model"):
        other.load_state_dict(pruner.state_dict())
    with pytest.raises(UserError, match="made with method 'sfp', rates"):
        Pruner(_tiny(), "asfp", {"norm": 0.5}, 3).load_state_dict(pruner.state_dict())
    pruner.step(1)
    pruner.step(2)
    with pytest.raises(UserError, match=r"the schedule has 3 epochs"):
        pruner.step(3)
