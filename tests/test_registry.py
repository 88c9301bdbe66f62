"""Criteria and methods are registered objects: one of each defined here (as a user's own file
would), then used by the Pruner, the grid of reproduce.py and its help; and what
``register_criterion``/``register_method`` refuse. (The same from outside the checkout, with
the installed wheel: docs/api.md's runnable block, run by test_docs.)"""
import pytest
import torch

from tests.user_code import CNN
from utils.errors import UserError
from utils.method import criteria
from utils.method.criteria import Criterion, register_criterion, registry
from utils.method.methods import METHODS, Method, register_method
from utils.pruner import Pruner
from utils.run.grid import configs, describe, method_flags


@pytest.fixture
def registries():
    """The registries as they were, after the test (a registration is for the process)."""
    saved = dict(registry()), dict(METHODS)  # registry(): the built-in ones imported first
    yield
    criteria._REGISTERED.clear()
    criteria._REGISTERED.update(saved[0])
    METHODS.clear()
    METHODS.update(saved[1])


def small_cnn():
    namespace = {}
    exec(CNN, namespace)
    return namespace["small_cnn"]()


class Largest(Criterion):
    """The largest filters first: the opposite of the L1 norm, so its selection is visible."""
    name, title = "largest", "largest L1 norm"

    def scores(self, weight, candidates):
        return -weight.detach()[candidates].flatten(1).abs().sum(1).double()


def test_a_criterion_and_a_method_of_ones_own(registries):
    register_criterion(Largest)
    assert list(registry())[-1] == "largest"
    register_method(Method(name="largest_gm", first="largest", second="gm",
                           default_rates={"gm": 0.25}, summary="largest + GM"))
    register_method(Method(name="largest_only", first="largest",
                           default_rates={"largest": 0.25}))
    pruner = Pruner(small_cnn(), method="largest_only", epochs=2)
    norms = {c.name: c.conv.weight.detach().flatten(1).abs().sum(1) for c in pruner.convs}
    pruner.start()  # the first mask: the criterion's lowest scores, the largest filters
    for c in pruner.convs:
        largest = torch.argsort(norms[c.name], descending=True)[:c.filters // 4]
        assert sorted(pruner.selected()[c.name].tolist()) == sorted(largest.tolist())
        assert c.conv.weight[largest].abs().sum() == 0
    # the grid derives its configurations, their help and their flags from the registry
    assert configs()[-3:] == ("largest_gm", "largest_gm-mix", "largest_only")
    assert describe("largest_gm-mix") == "largest_gm-mix largest 0.1 + gm R−0.1"
    assert describe("largest_only") == "largest_only largest R"
    assert method_flags("largest_gm", 0.5) == ["--method", "largest_gm", "--prune_rate_gm", "0.5"]
    assert method_flags("largest_gm-mix", 0.5, ("flops", 0.5)) == [
        "--method", "largest_gm", "--prune_rate_largest", "0.1", "--prune_rate_gm", "0.4",
        "--target_flops", "0.5", "--allocation", "uniform"]


def test_the_built_in_grid_is_unchanged():
    assert configs() == ("dense", "fsdp", "fpgm", "fpgm-mix", "sfp", "asfp", "l1")
    assert method_flags("dense", 0.5) == ["--prune_rate_cs", "0", "--prune_rate_gm", "0"]
    assert method_flags("fsdp", 0.5) == ["--method", "fsdp", "--prune_rate_cs", "0.1",
                                         "--prune_rate_gm", "0.4"]
    assert method_flags("fpgm-mix", 0.4) == ["--method", "fpgm", "--prune_rate_norm", "0.1",
                                             "--prune_rate_gm", "0.3"]
    assert method_flags("asfp", 0.3) == ["--method", "asfp", "--prune_rate_norm", "0.3"]
    assert method_flags("l1", 0.5, ("params", 0.4), "global") == [
        "--method", "l1", "--target_params", "0.4", "--allocation", "global"]


@pytest.mark.parametrize("method,message", [
    (dict(name="x", first="nope"), "uses criterion 'nope', which is not registered"),
    (dict(name="x", first="norm", second="cs"), "second criterion selects among"),
    (dict(name="x", first="gm", second="gm"), "second criterion selects among"),
    (dict(name="x", first="norm", default_rates={"norm": 1.0}), "default_rates must give"),
    (dict(name="x", first="norm", asymptotic=True, tau=1.0), "needs tau > 4/3"),
    (dict(name="fsdp", first="norm", default_rates={"norm": 0.5}), "registered already"),
    (dict(name="Bad Name", first="norm"), "lower-case identifier")])
def test_register_method_refuses_in_one_line(registries, method, message):
    with pytest.raises(UserError, match=message) as e:
        register_method(Method(**method))
    assert "\n" not in str(e.value)
    assert set(METHODS) == {"fsdp", "fpgm", "sfp", "asfp", "l1"}


def test_a_rate_for_a_criterion_the_method_lacks_is_refused_at_construction():
    with pytest.raises(UserError, match="default_rates names 'cs'"):
        Method(name="x", first="norm", default_rates={"cs": 0.1})


def test_register_criterion_refuses_in_one_line(registries):
    class Clash(Largest):
        name = "gm"

    class Unnamed(Criterion):
        pass

    for cls, message in ((Clash, "registered already"), (Unnamed, "lower-case identifier"),
                         (int, "takes a Criterion subclass")):
        with pytest.raises(UserError, match=message):
            register_criterion(cls)
    register_criterion(Largest)
    register_criterion(Largest)  # the same class again: nothing changes
    assert list(registry()).count("largest") == 1
    assert registry()["gm"].__name__ == "GeometricMedian"
