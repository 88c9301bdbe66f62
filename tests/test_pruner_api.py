"""The Pruner as a library user meets it: every option checked by ``Pruner(...)`` itself,
before the first epoch, in the API's words; nothing silent; the user's RNGs and BatchNorm
statistics left as they were; the API's defaults (``attenuate="bn"``); the paper's one
keyword away (the equality with the scripts' driver: test_pruner.py)."""
import logging
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.compaction import check_onnx_exporter, load_compact
from utils.errors import UserError
from utils.pruner import Pruner, PruningWarning


def tiny(classes=3, affine=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                         nn.BatchNorm2d(8, affine=affine), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False),
                         nn.BatchNorm2d(8, affine=affine), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def batches(n=3, classes=3, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, *shape, generator=g), torch.arange(8) % classes) for _ in range(n)]


def shuffling_loader():
    data = torch.utils.data.TensorDataset(torch.randn(24, 3, 8, 8), torch.arange(24) % 3)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)


def fsdp(**kw):
    return Pruner(tiny(), "fsdp", {"cs": 0.25, "gm": 0.25}, 3, **{"cs_data": batches(), **kw})


class Tensor3(nn.Module):
    """A model whose forward takes what it is given: any batch 'fits' until the check."""

    def forward(self, x):
        return x


BAD = [  # (what the user passed, what the one line must say)
    (dict(cs_data=torch.randn(8, 3, 8, 8)), "cs_data is a tensor; give its batches"),
    (dict(cs_data=[]), "cs_data holds no batch"),
    (dict(cs_data=42), "cs_data must be batches of (inputs, labels)"),
    (dict(cs_data=[{"image": torch.randn(8, 3, 8, 8), "label": torch.arange(8) % 3}]),
     "not dicts (keys 'image', 'label')"),
    (dict(cs_data=[(torch.randn(8, 3, 8, 8), (torch.arange(8) % 3).view(-1, 1))]),
     "a 1-D tensor (got shape [8, 1]); give labels.view(-1)"),
    (dict(cs_data=[(torch.randn(8, 3, 8, 8), F.one_hot(torch.arange(8) % 3, 3).float())]),
     "integer class indices (got torch.float32 (one-hot: give labels.argmax(1))"),
    (dict(cs_data=[(torch.randn(8, 3, 8, 8), (torch.arange(8) % 3).float())]),
     "integer class indices (got torch.float32"),
    (dict(cs_data=[(torch.randn(8, 3, 8, 8), torch.arange(8))]),
     "labels lie in [0, 7], outside [0, 3) for num_classes 3"),
    (dict(cs_data=[(torch.full((8, 3, 8, 8), float("nan")), torch.arange(8) % 3)]),
     "holds NaN or inf inputs"),
    (dict(cs_data=[(torch.randn(8, 3, 8, 8), torch.arange(4) % 3)]),
     "8 inputs and 4 labels"),
    (dict(cs_mode="evaluation"), "cs_mode must be one of 'train', 'reference', 'eval' (got "
                                 "'evaluation'; did you mean 'eval'"),
    (dict(cs_every=0), "cs_every must be ≥ 1 (got 0)"),
    (dict(prune_every=0), "prune_every must be ≥ 1 (got 0)"),
    (dict(rates=0.5), "rates maps each criterion to its final share"),
    (dict(epochs=2.5), "epochs must be a whole number ≥ 1 (got 2.5)"),
    (dict(rates={"cs": float("nan")}), "rates['cs'] must be a finite number (got nan)"),
    (dict(attenuate="bnn"), "attenuate must be one of weights, bn (got 'bnn')"),
    (dict(round_to=0), "round_to must be ≥ 1 (got 0)"),
    (dict(amp_dtype=torch.float32), "amp_dtype must be torch.bfloat16, torch.float16 or None"),
    (dict(optimizer="sgd"), "optimizer must be a torch.optim.Optimizer (got a str)"),
    (dict(include="conv["), "include 'conv[' is not a regular expression"),
    (dict(input_shape=(8, 8)), "input_shape must be (C, H, W)"),
    (dict(num_classes=1), "num_classes must be ≥ 2 (got 1)"),
    (dict(class_names=["a", "b"]), "class_names must be 3 strings, one per class"),
    (dict(cs_data=[(torch.randn(8, 5, 8, 8), torch.arange(8) % 3)]),
     "the model does not run on a"),
]


@pytest.mark.parametrize("given,expect", BAD, ids=[e[:30] for _, e in BAD])
def test_every_option_is_checked_by_the_pruner_itself(given, expect):
    args = {"model": tiny(), "method": "fsdp", "rates": {"cs": 0.25, "gm": 0.25}, "epochs": 3,
            "cs_data": batches(), **given}
    with pytest.raises(UserError) as e:
        Pruner(**args)
    message = str(e.value)
    assert expect in message
    assert "\n" not in message and "--" not in message  # the API's words, no flags


def test_a_model_compact_would_refuse_is_refused_before_training():
    """With the input size known (here from cs_data), the model is traced at it now; without
    it, at the first training batch — before any training step. A matmul is kept whole, and
    fx's graph shows it only with shapes: the conv feeding it, selected from the graph without
    shapes, would be pruned where compact() keeps it."""
    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
            self.other, self.bn2 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            a = torch.relu(self.bn(self.conv(x))).flatten(2)
            b = torch.relu(self.bn2(self.other(x))).mean((2, 3))
            return self.fc((a @ a.transpose(1, 2)).mean(2) + b)

    with pytest.raises(UserError) as e:
        Pruner(Attending(), "fsdp", None, 3, cs_data=batches())
    assert "\n" not in str(e.value) and "--" not in str(e.value)
    assert "input_shape=" in str(e.value) and "'conv'" in str(e.value)
    model = Attending()
    pruner = Pruner(model, "sfp", None, 3)  # no input size known yet
    weights = model.conv.weight.detach().clone()
    with pytest.raises(UserError):
        model.train()(torch.randn(2, 3, 8, 8))
    assert torch.equal(model.conv.weight, weights) and not pruner.started
    Pruner(Attending(), "sfp", None, 3, check_compact=False)  # asked for
    given = Pruner(Attending(), "sfp", None, 3, input_shape=(3, 8, 8))  # the graph with shapes
    assert [c.name for c in given.convs] == ["other"]


def test_nothing_is_silent(caplog):
    with pytest.warns(PruningWarning, match="no optimizer= was given"):
        fsdp()
    with pytest.warns(PruningWarning, match="the CS share selects 0 of the 4 filters it plans"):
        Pruner(tiny(), "fsdp", {"cs": 0.25, "gm": 0.25}, 2, cs_data=batches(),
               optimizer=torch.optim.SGD(tiny().parameters(), lr=0.1))
    one_class = [(x, torch.zeros(8, dtype=torch.long)) for x, _ in batches()]
    with pytest.warns(PruningWarning, match="one class only"):
        pruner = Pruner(tiny(), "fsdp", {"cs": 0.25, "gm": 0.25}, 3, cs_data=one_class)
    with pytest.raises(UserError, match="holds samples of 1 class"):
        pruner.step(0)  # the first pass: scores of one class are all zero
    caplog.set_level(logging.INFO, logger="fsdp_pruning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)
        Pruner(tiny(), "sfp", epochs=2, target={"params": 0.5}, allocation="global",
               input_shape=(3, 8, 8)).step(0)  # the plan is made from the scores at step 0
    assert "target: 0.5 of the dense parameters, global allocation" in caplog.text


def rngs():
    return (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())


def same_rngs(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.filterwarnings("ignore::utils.pruner.PruningWarning")
def test_hands_off_the_users_rngs_and_bn_statistics():
    model, loader = tiny(), shuffling_loader()
    before = rngs()
    pruner = Pruner(model, "fsdp", {"cs": 0.25, "gm": 0.25}, 3, cs_data=loader)
    assert same_rngs(before, rngs())  # the first batch was drawn from a shuffling loader
    model.train()
    model(torch.randn(8, 3, 8, 8))  # a training batch: the first mask
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or
             "num_batches" in k}
    before = rngs()
    pruner.step(0)  # the CS pass after epoch 0, in train mode
    assert same_rngs(before, rngs())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    # the authors' pass, asked for: the running statistics follow the CS data
    model = tiny()
    authors = Pruner(model, "fsdp", {"cs": 0.25, "gm": 0.25}, 3, cs_data=batches(),
                     cs_mode="reference")
    model.train()
    model(torch.randn(8, 3, 8, 8))
    tracked = int(model[1].num_batches_tracked)
    authors.step(0)
    assert int(model[1].num_batches_tracked) == tracked + 3


@pytest.mark.filterwarnings("ignore::utils.pruner.PruningWarning")
def test_the_apis_defaults():
    """attenuate="bn" where something is selected and every BN can be scaled; the paper's
    "weights" otherwise, and one keyword away."""
    assert fsdp().pruning.method.attenuate == "bn"
    assert fsdp(attenuate="weights").pruning.method.attenuate == "weights"
    assert Pruner(tiny(), "sfp", {"norm": 0.0}, 3).pruning.method.attenuate == "weights"
    assert Pruner(tiny(affine=False), "sfp", None, 3).pruning.method.attenuate == "weights"
    assert fsdp().mask.data_pass.mode == "train"


def test_errors_speak_the_apis_words(tmp_path, monkeypatch):
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    for path in (tmp_path / "cut.pt", tmp_path / "none.pt"):
        with pytest.raises(UserError) as e:
            load_compact(path)
        assert "--" not in str(e.value) and "compact.py" not in str(e.value)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'fsdp-pruning\[onnx\]'"):
        check_onnx_exporter()


def test_a_loop_without_an_optimizer_can_scale_gradients_itself():
    model = tiny()
    with pytest.warns(PruningWarning):
        pruner = Pruner(model, "fpgm", {"gm": 0.5}, 2)
    model.train()
    loss = model(torch.randn(4, 3, 8, 8)).sum()  # the first mask applies here
    loss.backward()
    pruner.scale_gradients()
    for c in pruner.convs:
        assert c.conv.weight.grad[pruner.selected()[c.name]].abs().sum() == 0
