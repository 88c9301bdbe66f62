"""Bit for bit with the authors' training loop (docs/method.md).

``NaiveReference`` is a deliberately naive, independent rendering of the authors' loop semantics,
written from the method's description and not from our code: per-filter codebooks multiplied
into the flattened weights and gradients, a per-filter CS loop in float32 per batch, the list-reuse rule at epochs
without a CS pass, GM distances from explicit differences, and the reference's order of
validate / mask / train / mask / validate (the CS pass before training included, although our
driver skips it: it runs in eval mode, so it changes nothing). It drives a copy of the same
model through the same batches as ``notebook_cifar.py``'s loop; weights, BN buffers, selections
and test accuracy must agree bit for bit at every epoch.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import notebook_cifar
from tests.fakedata import write_cifar
from utils import subnormals
from utils.run.trainer import Trainer

EPOCHS = 8  # the last epoch (7) has no CS pass: the reused list reaches the final mask


# -- the authors' semantics, naively ---------------------------------------------------------
def schedule(r_cs, r_gm, epochs, tau, s):
    """The schedule (docs/method.md) with numpy's polynomial roots (τ is an integer here, as
    in the reference)."""
    t3, t2, e3 = r_cs + r_gm, 0.75 * (r_cs + r_gm), epochs - 1
    coeffs = np.zeros(int(tau) + 1)
    coeffs[0], coeffs[-2], coeffs[-1] = t2, -t3, t3 - t2
    roots = np.roots(coeffs)
    xi = min(r.real for r in roots if abs(r.imag) < 1e-9 and 0 < r.real < 1 - 1e-6)
    e2 = e3 / tau
    theta = [t2 / (xi - 1) * (np.exp(np.log(xi) / e2 * e) - 1) for e in range(epochs)]
    theta[-1] = t3
    cs = [min(r_cs, t) for t in theta]
    return cs, [t - c for t, c in zip(theta, cs)], [s * (1 - t / t3) for t in theta[:-1]] + [0.0]


def floor_count(filters, rate):
    return int(np.floor(filters * rate + 1e-9))


class NaiveReference:
    def __init__(self, model, r_cs, r_gm, epochs, s, cs_eval, lr_rule):
        self.model = model
        self.cs_rate, self.gm_rate, self.zetas = schedule(r_cs, r_gm, epochs, 10, s)
        self.cs_eval, self.lr_rule = cs_eval, lr_rule
        mods = list(model.named_modules())
        # every conv whose next module is its BatchNorm (the CIFAR ResNets: all of them)
        self.layers = [(name, m, mods[i + 1][1]) for i, (name, m) in enumerate(mods)
                       if isinstance(m, nn.Conv2d) and isinstance(mods[i + 1][1], nn.BatchNorm2d)]
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                   nesterov=True)
        self.stored_list, self.stored_sorted = {}, {}
        self.codebooks = {}  # name -> (cs codebook, gm codebook), each a flat float32 tensor

    def cs_scores(self, batches):
        acts, hooks = {}, []
        for name, _, bn in self.layers:
            def hook(mod, inp, out, name=name):
                acts[name] = torch.relu(out.detach()).amax(dim=3).amax(dim=2)  # (N, F)
            hooks.append(bn.register_forward_hook(hook))
        num_classes = self.model.classifier.out_features
        rxx = {name: torch.zeros(conv.out_channels, num_classes, dtype=torch.float64)
               for name, conv, _ in self.layers}
        counts = torch.zeros(num_classes, dtype=torch.float64)
        with torch.no_grad():
            for x, y in batches:
                self.model(x)
                r = F.one_hot(y, num_classes).float()
                counts += r.sum(0).double()
                for name, conv, _ in self.layers:
                    for f in range(conv.out_channels):  # one tiny matmul per filter, float32
                        rxx[name][f] += (r.t() @ acts[name][:, f:f + 1]).double().flatten()
        for h in hooks:
            h.remove()
        present = counts > 0
        c = int(present.sum())
        p = c * torch.eye(c, dtype=torch.float64) - torch.ones(c, c, dtype=torch.float64)
        scores = {}
        for name, conv, _ in self.layers:
            s = np.zeros(conv.out_channels)
            for f in range(conv.out_channels):
                m = (rxx[name][f][present] / counts[present])[None, :]  # 1×C class means
                s[f] = torch.trace(m @ p @ m.t()).item()
            scores[name] = s
        return scores

    def gm_select(self, weight, candidates, n):
        w = weight.detach().flatten(1)[candidates].double().numpy()
        d = np.sqrt(((w[:, None, :] - w[None, :, :]) ** 2).sum(-1))
        return [candidates[i] for i in np.argsort(d.sum(0), kind="stable")[:n]]

    def mask(self, epoch, cs_batches):
        if epoch == 0 or epoch % 2 == 0:
            if self.cs_eval:
                self.model.eval()  # the ImageNet32 script validates just before
            scores = self.cs_scores(cs_batches)
            for name, conv, _ in self.layers:
                order = list(np.argsort(scores[name], kind="stable"))
                self.stored_sorted[name] = order
                self.stored_list[name] = order[:floor_count(conv.out_channels, self.cs_rate[epoch])]
        zeta, selected = self.zetas[epoch], {}
        for name, conv, _ in self.layers:
            f = conv.out_channels
            length = conv.weight.numel() // f
            n_cs, n_gm = floor_count(f, self.cs_rate[epoch]), floor_count(f, self.gm_rate[epoch])
            cs_book, gm_book = np.ones(conv.weight.numel()), np.ones(conv.weight.numel())
            cs_sel = self.stored_list[name] if n_cs > 0 else []
            for i in cs_sel:
                cs_book[i * length:(i + 1) * length] = zeta
            gm_sel = self.gm_select(conv.weight, self.stored_sorted[name][n_cs:], n_gm)
            for i in gm_sel:
                gm_book[i * length:(i + 1) * length] = zeta
            books = (torch.FloatTensor(cs_book), torch.FloatTensor(gm_book))
            self.codebooks[name] = books
            with torch.no_grad():
                w = conv.weight.data.view(-1)
                conv.weight.data = (w * books[0] * books[1]).view(conv.weight.shape)
            selected[name] = sorted(int(i) for i in list(cs_sel) + list(gm_sel))
        return selected

    def train(self, epoch, batches):
        for group in self.opt.param_groups:
            group["lr"] = self.lr_rule(epoch)
        self.model.train()
        for x, y in batches:
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            for name, conv, _ in self.layers:  # the gradient codebook of the last mask
                g = conv.weight.grad.data.view(-1)
                conv.weight.grad.data = (g * self.codebooks[name][0] * self.codebooks[name][1]
                                         ).view(conv.weight.shape)
            self.opt.step()

    @torch.no_grad()
    def validate(self, batches):
        self.model.eval()
        hits = sum(int((self.model(x).argmax(1) == y).sum()) for x, y in batches)
        return 100 * hits / sum(len(y) for _, y in batches)


# -- the comparison ------------------------------------------------------------------------
def _batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(x, y) for x, y, _ in loader]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(str(root), "cifar10", n_train=64, n_test=32, seed=3, num_classes=4)
    return str(root)


@pytest.mark.parametrize("shape", ["cifar", "imagenet32"])
def test_driver_equals_the_authors_loop_bit_for_bit(shape, data_root, tmp_path):
    s, cs_mode = (1.0, "reference") if shape == "cifar" else (0.2, "eval")
    args = notebook_cifar.parser().parse_args([
        "--dataset", "cifar10", "--data_path", data_root, "--save_path", str(tmp_path / "run"),
        "--arch", "resnet20", "--epochs", str(EPOCHS), "--batch_size", "32",
        "--batch_prune_size", "64", "--schedule", "1", "3", "--gammas", "10", "0.2",
        "--attenuation", str(s), "--cs_mode", cs_mode, "--workers", "0", "--manualSeed", "5",
        "--device", "cpu", "--print_freq", "1000"])
    torch.manual_seed(5)
    ours = Trainer(args, notebook_cifar.make_data(args), torch.device("cpu"))
    cs_loader = ours.mask.data_pass.loader
    train = [_batches(ours.train_loader, e) for e in range(EPOCHS)]
    cs = {(e, initial): _batches(cs_loader, 2 * e + (not initial))
          for e in range(EPOCHS) for initial in (True, False)}
    test = _batches(ours.test_loader, 0)

    def lr(epoch):  # the recipe's rule for --schedule 1 3 --gammas 10 0.2
        return 0.01 * (10 if epoch >= 1 else 1) * (0.2 if epoch >= 3 else 1)

    ref = NaiveReference(copy.deepcopy(ours.model), 0.1, 0.4, EPOCHS, s, cs_mode == "eval", lr)
    expected = []
    ref.validate(test)
    ref.mask(0, cs[(0, True)])
    ref.validate(test)
    for e in range(EPOCHS):
        ref.train(e, train[e])
        selected = ref.mask(e, cs[(e, False)])
        expected.append((copy.deepcopy(ref.model.state_dict()), selected, ref.validate(test)))

    attenuated_at_epoch_1 = None
    with subnormals.flushed():  # the scripts' default mode: it changes nothing here
        ours.start()
        for e in range(EPOCHS):
            assert ours.run_epoch(e)
            state, selected, acc = expected[e]
            got = {c.name: sorted(ours.mask.selected(c.name).tolist()) for c in ours.convs}
            assert got == selected, f"selections differ at epoch {e}"
            for k, v in ours.model.state_dict().items():  # weights and BN buffers
                assert torch.equal(v, state[k]), f"{k} differs at epoch {e}"
            assert ours.history[-1]["test_top1"] == pytest.approx(acc, abs=1e-9)
            if e == 1:
                attenuated_at_epoch_1 = sum(len(v) for v in got.values())
    # the list-reuse rule mattered: at epoch 1 the CS list is the (empty) one of epoch 0, so
    # only GM picks are attenuated, fewer than ⌊F·θ(1)⌋ per layer
    full = sum(floor_count(c.filters, ours.schedule.theta_first[1])
               + floor_count(c.filters, ours.schedule.theta_second[1]) for c in ours.convs)
    assert 0 < attenuated_at_epoch_1 < full


def test_final_pool_is_the_authors_avgpool8_and_other_sizes_work():
    from models.resnet_cifar import GlobalAvgPool
    x = torch.randn(16, 64, 8, 8, generator=torch.Generator().manual_seed(0)) * 30 + 70
    assert torch.equal(GlobalAvgPool()(x), nn.AvgPool2d(8)(x))  # same summation order
    assert not torch.equal(nn.AdaptiveAvgPool2d(1)(x), nn.AvgPool2d(8)(x))  # why it matters
    y = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(GlobalAvgPool()(y), y.mean((2, 3), keepdim=True))
