import copy
import itertools

import pytest
import torch

from bench.common import randomize_bn
from models import build_model
from utils.method.criteria import criterion, registry
from utils.method.criteria.cs import cs_scores
from utils.compaction import find_prunable_convs


def _brute_force(model, bns, xs, ys, num_classes):
    """The class-separability score of README.md literally, in float64: per sample,
    ReLU(BN(conv)) then the spatial max; class means; Σ over class pairs of squared differences."""
    model = copy.deepcopy(model).double().eval()
    bns = [dict(model.named_modules())[n] for n in bns]
    feats = {k: [] for k in range(len(bns))}
    hooks = [bn.register_forward_hook(lambda m, i, o, k=k: feats[k].append(torch.relu(o)))
             for k, bn in enumerate(bns)]
    with torch.no_grad():
        for x in xs:
            model(x[None].double())
    for h in hooks:
        h.remove()
    scores = []
    for k, bn in enumerate(bns):
        a = torch.cat(feats[k]).amax(dim=(2, 3))  # (N, F)
        present = [c for c in range(num_classes) if (ys == c).any()]
        means = {c: a[ys == c].mean(0) for c in present}
        s = torch.zeros(bn.num_features, dtype=torch.float64)
        for c1, c2 in itertools.combinations(present, 2):
            s += (means[c1] - means[c2]) ** 2
        scores.append(s)
    return scores


def test_cs_scores_equal_a_float64_brute_force_with_a_missing_class():
    gen = torch.Generator().manual_seed(0)
    model = build_model("resnet20", num_classes=5)
    randomize_bn(model, gen)
    model.eval()
    convs = find_prunable_convs(model)
    bns, names = [c.bn for c in convs], [c.name for c in convs]
    xs = torch.randn(37, 3, 12, 12, generator=gen)
    ys = torch.randint(0, 4, (37,), generator=gen)  # class 4 never occurs
    batches = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, 37, 8)]  # ragged last batch
    expected = _brute_force(model, [c.bn_name for c in convs], xs, ys, 5)
    # ours on the same network in float64: equal to rounding
    model64 = copy.deepcopy(model).double()
    convs64 = find_prunable_convs(model64)
    scores, counts = cs_scores(model64, [c.bn for c in convs64], names,
                               [(x.double(), y) for x, y in batches], 5, torch.device("cpu"))
    assert counts.tolist() == [float((ys == c).sum()) for c in range(5)]
    for name, exp in zip(names, expected):
        torch.testing.assert_close(scores[name], exp, rtol=1e-9, atol=1e-12)
    # the float32 network agrees to float32 precision
    scores32, _ = cs_scores(model, bns, names, batches, 5, torch.device("cpu"))
    for name, exp in zip(names, expected):
        torch.testing.assert_close(scores32[name], exp, rtol=1e-4, atol=1e-6)


def test_the_cs_pass_runs_in_float32_under_amp():
    """Given the run's AMP dtype, or inside a caller's autocast, the pass still scores in
    float32: per-sample maxima in bfloat16 (8 significant bits) tie and reorder filters."""
    from utils.method.criteria.cs import CSRanker
    gen = torch.Generator().manual_seed(0)
    model = randomize_bn(build_model("resnet20", num_classes=4), gen).eval()
    convs = find_prunable_convs(model)
    batches = [(torch.randn(8, 3, 16, 16, generator=gen), torch.arange(8) % 4)
               for _ in range(3)]

    def scores(amp_dtype=None):
        return CSRanker(convs, batches, 4, torch.device("cpu"), amp_dtype=amp_dtype)(model, 0,
                                                                                      True)
    exact = scores()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = scores()
    for ours in (scores(torch.bfloat16), inside):
        assert all(torch.equal(ours[name], exact[name]) for name in exact)


def test_max_batches_limits_the_pass():
    model = build_model("resnet20", num_classes=3).eval()
    convs = find_prunable_convs(model)
    loader = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(5)]
    _, counts = cs_scores(model, [c.bn for c in convs], [c.name for c in convs], loader, 3,
                          torch.device("cpu"), max_batches=2)
    assert counts.sum() == 8


def test_geometric_median_picks_the_central_filters():
    # filters 0-3 at the corners of a square, 4 at its centre, 5 near the centre, 6 far away
    pts = torch.tensor([[1., 1], [1, -1], [-1, 1], [-1, -1], [0, 0], [-0.1, 0], [5, 5]])
    weight = torch.zeros(7, 2, 1, 1)
    weight[:, :, 0, 0] = pts
    all_ = torch.arange(7)
    gm = criterion("gm")
    assert gm.select(weight, all_, 1).tolist() == [4]
    assert sorted(gm.select(weight, all_, 2).tolist()) == [4, 5]
    # among the candidates only: with 4 already taken by CS, 5 is the most central
    assert gm.select(weight, torch.tensor([0, 1, 2, 3, 5, 6]), 1).tolist() == [5]
    assert gm.select(weight, all_, 0).numel() == 0


def test_norms_score_every_filter_and_the_smallest_go_first():
    w = torch.zeros(3, 2, 1, 1)
    w[0, :, 0, 0] = torch.tensor([3., 4.])
    w[1, 0, 0, 0] = -2
    everyone = torch.arange(3)
    assert criterion("norm").scores(w, everyone).tolist() == [5, 2, 0]
    assert criterion("l1").scores(w, everyone).tolist() == [7, 2, 0]
    assert criterion("norm").scores(w, torch.tensor([1, 0])).tolist() == [2, 5]
    assert criterion("l1").select(w, everyone, 2).tolist() == [2, 1]


def test_the_registry_finds_every_criterion_file_by_name():
    import pkgutil
    import utils.method.criteria as package
    known = registry()
    assert list(known) == ["cs", "norm", "l1", "gm"]  # their order in flags and reports
    files = {m.name for m in pkgutil.iter_modules(package.__path__)}
    assert files >= {"cs", "norm", "l1", "gm"}
    assert criterion("cs").from_data and not criterion("gm").from_data
    with pytest.raises(KeyError, match="unknown criterion 'l3'; known: cs, norm, l1, gm"):
        criterion("l3")
