"""FSDP and the methods it grew out of, as presets of one mechanism (docs/methods.md).

A method is composed of criteria (``criteria/``: which filters are ranked by what), a rate
schedule, and what happens to the selected filters' weights and gradients:

| method | first share           | second share        | rate per epoch        | weights | gradients |
|--------|-----------------------|---------------------|-----------------------|---------|-----------|
| fsdp   | CS, lowest first      | GM among the rest   | asymptotic, τ = 10    | × ζ(e)  | × ζ(e)    |
| fpgm   | L2 norm, smallest     | GM among the rest   | constant from epoch 0 | × 0     | × 0       |
| sfp    | L2 norm, smallest     | —                   | constant from epoch 0 | × 0     | untouched |
| asfp   | L2 norm, smallest     | —                   | asymptotic, τ = 8 (*) | × 0     | untouched |
| l1     | L1 norm, smallest     | —                   | constant from epoch 0 | × 0     | × 0       |

Checked against the authors' public code: FPGM's training step masks the gradients
(``do_grad_mask``), SFP's does not (its pruned filters regrow during the epoch); both re-rank
among all filters at every update and apply a first mask before epoch 0. (*) ASFP's code is not
public; its paper's rate P(t) = a·e^(−kt) + b with P(0) = 0, P(D·t_max) = ¾·P_goal and
P(t_max) = P_goal is FSDP's θ(e) with τ = 1/D = 8. It reaches its target at the last update
that still has training after it (``schedule.target_epoch``), not at the very last one.
``l1`` is Li et al.'s criterion (ICLR 2017) in this harness: the pruned filters stay zero, so
from pretrained weights (``--use_pretrain``) it is their prune-once-then-fine-tune.

``attenuate="bn"`` (``--attenuate bn``, any method): the selected channels' BN γ and β get the
filters' factor too, and their gradients the filters' gradient factor
(docs/soft-pruning-and-batchnorm.md).

A method of one's own is a ``Method`` of registered criteria, made known by ``register_method``
(docs/api.md, 'Your own criterion and method').
"""
import difflib
import math
import re
from dataclasses import dataclass, field, replace

from ..errors import OptionError, UserError
from .budget import ALLOCATIONS, KINDS, Target
from .criteria import criterion, registry
from .schedule import Schedule, asymptotic_schedule, constant_schedule, target_epoch

ATTENUATE = ("weights", "bn")  # what the factor of a selected filter multiplies


@dataclass(frozen=True, kw_only=True)
class Method:
    """A pruning method, built from registered criteria: ``register_method(Method(...))``."""
    name: str
    first: str                # criterion of the first share: ranks all filters
    second: str | None = None  # criterion of the second share, among the rest of that ranking
    asymptotic: bool = False  # asymptotic θ(e), or the final rates from epoch 0
    tau: float | None = None  # the asymptotic schedule's default τ
    fractional: bool = False  # selected weights × ζ(e) (else × 0)
    scale_grads: bool = True  # selected gradients × the weights' factor (else untouched)
    default_rates: tuple = ()  # (first, second) when none is given, or {criterion: share};
                               # a criterion left out: 0
    early_target: bool = False  # the final count at the last update with training after it
    attenuate: str = "weights"
    summary: str = field(default="", compare=False)

    def __post_init__(self):
        rates = self.default_rates or {}
        if isinstance(rates, dict):  # by criterion: in the order of the method's criteria
            other = sorted(set(rates) - set(self.criteria))
            if other:
                raise UserError(f"method {self.name!r}: default_rates names {other[0]!r}, which "
                                f"is not one of its criteria ({', '.join(self.criteria)})")
            rates = tuple(rates.get(c, 0.0) for c in self.criteria)
        object.__setattr__(self, "default_rates", tuple(float(r) for r in rates))

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(c for c in (self.first, self.second) if c)

    def default_rate(self, name: str) -> float:
        return self.default_rates[self.criteria.index(name)] if name in self.criteria else 0.0

    @property
    def uses_data(self) -> bool:
        """A criterion scores from a pass over data (the CS pass)."""
        return any(criterion(c).from_data for c in self.criteria)

    def with_attenuate(self, attenuate: str) -> "Method":
        if attenuate not in ATTENUATE:
            raise UserError(f"attenuate must be one of {', '.join(ATTENUATE)} (got {attenuate!r})")
        return replace(self, attenuate=attenuate)


# every registered method by name, in registration order; the built-in ones first (written
# here, so importing this module imports no criterion)
METHODS: dict[str, Method] = {m.name: m for m in (
    Method(name="fsdp", first="cs", second="gm", asymptotic=True, tau=10.0, fractional=True,
           default_rates={"cs": 0.1, "gm": 0.4}, summary="CS + GM, asymptotic rate and weights"),
    Method(name="fpgm", first="norm", second="gm", default_rates={"gm": 0.5},
           summary="L2 norm + GM, constant rate, zeroed"),
    Method(name="sfp", first="norm", scale_grads=False, default_rates={"norm": 0.5},
           summary="L2 norm, constant, zeroed, gradients free"),
    Method(name="asfp", first="norm", asymptotic=True, tau=8.0, scale_grads=False,
           default_rates={"norm": 0.5}, early_target=True,
           summary="as sfp with the asymptotic rate (τ = 8)"),
    Method(name="l1", first="l1", default_rates={"l1": 0.5},
           summary="L1 norm (Li et al. 2017), constant, zeroed, gradients zeroed"))}


def register_method(method: Method) -> Method:
    """Make ``method`` known by its name (the scripts' ``--method``, the Pruner's ``method=``,
    reproduce.py's grid and the report): its criteria registered, a second criterion that
    scores from the weights, default rates that sum below 1, τ > 4/3 for an asymptotic
    schedule. Registering the same method again changes nothing; another under a taken name
    is refused."""
    if not isinstance(method, Method):
        raise UserError(f"register_method takes a Method, got {type(method).__name__}")
    known = registry()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", method.name or ""):
        raise UserError(f"a method's name must be a lower-case identifier, got {method.name!r}")
    missing = [c for c in method.criteria if c not in known]
    if missing:
        raise UserError(f"method {method.name!r} uses criterion {missing[0]!r}, which is not "
                        f"registered (known: {', '.join(known)}); register it first")
    if method.second and (method.second == method.first or known[method.second].from_data):
        raise UserError(f"method {method.name!r}: the second criterion selects among the first "
                        "one's ranking from the weights; give another criterion from the weights")
    rates = method.default_rates
    if len(rates) != len(method.criteria) or any(not 0 <= r < 1 for r in rates) or \
            sum(rates) >= 1:
        raise UserError(f"method {method.name!r}: default_rates must give each of its criteria "
                        f"a share in [0, 1), summing below 1 (got {rates})")
    if method.asymptotic and not (method.tau or 0) > 4 / 3:
        raise UserError(f"method {method.name!r}: an asymptotic schedule needs tau > 4/3 "
                        f"(got {method.tau})")
    if METHODS.get(method.name, method) != method:
        raise UserError(f"a method called {method.name!r} is registered already; give yours "
                        "another name")
    METHODS[method.name] = method
    return method


@dataclass(frozen=True)
class Pruning:
    """A method with its final rates and schedule parameters, checked: what a run prunes."""
    method: Method
    rates: dict               # criterion → final share, for the method's criteria
    epochs: int
    tau: float | None = None
    attenuation: float = 1.0  # s: ζ(e) = s·(1 − θ(e)/θ3)
    zero_scaling: bool = False
    prune_every: int = 1      # mask updates every N epochs (and after the last)
    target: Target | None = None  # a budget: the rates then only split each layer's count

    @property
    def total(self) -> float:
        return sum(self.rates.values())

    @property
    def first_share(self) -> float:
        """The first criterion's part of a layer's count under a target."""
        first = self.rates.get(self.method.first, 0.0)
        return first / self.total if self.total else 0.0

    @property
    def plan_criterion(self) -> str:
        """The criterion whose scores make a global allocation: the first one in use."""
        m = self.method
        return m.first if self.rates.get(m.first, 0.0) > 0 or not m.second else m.second

    def schedule(self) -> Schedule:
        m = self.method
        first, second = (self.rates.get(c, 0.0) if c else 0.0 for c in (m.first, m.second))
        if not m.asymptotic:
            return constant_schedule(first, second, self.epochs)
        final = target_epoch(self.epochs, self.prune_every) if m.early_target else None
        return asymptotic_schedule(first, second, self.epochs, self.tau,
                                   self.attenuation if m.fractional else 0.0,
                                   self.zero_scaling or not m.fractional, final)

    def shares(self, at: dict) -> dict:
        """The per-epoch share of every criterion, for metrics.csv (0 where unused)."""
        out = {f"theta_{c}": 0.0 for c in registry()}
        for c, key in ((self.method.first, "first"), (self.method.second, "second")):
            if c:
                out[f"theta_{c}"] = at[key]
        return out


def resolve(method: str | Method, rates: dict | None, epochs: int, tau: float | None = None,
            attenuation: float = 1.0, zero_scaling: bool = False, attenuate: str = "weights",
            prune_every: int = 1, target: dict | None = None,
            allocation: str | None = None) -> Pruning:
    """Check a method and its options and fill in its defaults; every problem is one line
    naming the option (``OptionError``: the API's keyword, or the scripts' flag). ``rates``:
    {criterion: share}, None or a missing key for the method's default, 0 for an unused
    criterion. ``target``: {"flops": F} or {"params": P}, a budget (``allocation``: uniform or
    global); the rates then only split each layer's count between the method's two criteria."""
    method = _method(method)
    if attenuate not in ATTENUATE:
        raise OptionError(f"⟨attenuate⟩ must be one of {', '.join(ATTENUATE)} (got "
                          f"{attenuate!r})")
    method = method.with_attenuate(attenuate)
    given = _rates(rates)
    m = f"⟨method={method.name}⟩"
    resolved = {c: float(method.default_rate(c) if given.get(c) is None else given[c])
                for c in method.criteria}
    for c, value in given.items():
        if c not in method.criteria and value:
            used = " and ".join(f"⟨rates.{u}⟩" for u in method.criteria)
            raise OptionError(f"{m} does not use ⟨rates.{c}⟩ (it prunes by {used}); drop "
                              f"⟨rates.{c}⟩ or choose a method that uses it")
    total = sum(resolved.values())
    if total >= 1:
        used = " + ".join(f"⟨rates.{c}⟩ {v:g}" for c, v in resolved.items())
        raise OptionError(f"{used} must be < 1 (got {total:g}); lower one of them")
    tau = _tau(method, tau, m)
    _number(attenuation, "attenuation", lo=0)
    if not isinstance(zero_scaling, bool):
        raise OptionError(f"⟨zero_scaling⟩ must be True or False (got {zero_scaling!r})")
    if zero_scaling and not method.fractional:
        raise OptionError(f"⟨zero_scaling⟩ is FSDP's option; {m} already sets the selected "
                          "weights to zero; drop it")
    if attenuate == "bn" and total == 0:
        raise OptionError("⟨attenuate=bn⟩ attenuates the selected channels, and with every "
                          "pruning rate 0 none is ever selected; drop it or give a rate")
    _count(epochs, "epochs")
    _count(prune_every, "prune_every")
    budget = check_target(method, given, resolved, target, allocation)
    return Pruning(method, resolved, epochs, tau, float(attenuation), zero_scaling, prune_every,
                   budget)


def _method(method) -> Method:
    if isinstance(method, Method):
        return method
    if not isinstance(method, str) or method not in METHODS:
        near = difflib.get_close_matches(str(method), list(METHODS), 3, 0.5)
        raise OptionError(f"unknown ⟨method⟩ {method!r}; "
                          + (f"the closest: {', '.join(near)}" if near else
                             f"choose one of: {', '.join(METHODS)}"))
    return METHODS[method]


def _rates(rates) -> dict:
    """``rates`` checked: a mapping of registered criteria to finite shares ≥ 0 (or None)."""
    if rates is None:
        return {}
    if not isinstance(rates, dict):
        raise OptionError(f"⟨rates⟩ maps each criterion to its final share, e.g. "
                          f"{{'cs': 0.1, 'gm': 0.4}} (got {type(rates).__name__} {rates!r})")
    known = registry()
    for c, v in rates.items():
        if c not in known:
            near = difflib.get_close_matches(str(c), list(known), 3, 0.5)
            raise OptionError(f"unknown criterion {c!r} in the ⟨rates⟩; "
                              + (f"the closest: {', '.join(near)}" if near else
                                 f"known: {', '.join(known)}"))
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise OptionError(f"⟨rates.{c}⟩ must be a number (got {v!r})")
        if v is not None and not math.isfinite(v):
            raise OptionError(f"⟨rates.{c}⟩ must be a finite number (got {v})")
    negative = [f"⟨rates.{c}⟩ {v}" for c, v in rates.items() if v is not None and v < 0]
    if negative:
        raise OptionError(f"pruning rates must be ≥ 0 (got {', '.join(negative)})")
    return dict(rates)


def _tau(method: Method, tau, m: str):
    if tau is None:
        return method.tau
    if not method.asymptotic:
        raise OptionError(f"{m} prunes at a constant rate from epoch 0, so ⟨tau⟩ has no "
                          "effect; drop it (or use method fsdp/asfp)")
    _number(tau, "tau")
    if not tau > 4 / 3:
        raise OptionError(f"⟨tau⟩ must be > 4/3 (got {tau}); the paper uses 10")
    return float(tau)


def _number(value, key: str, lo: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise OptionError(f"⟨{key}⟩ must be a finite number (got {value!r})")
    if lo is not None and value < lo:
        raise OptionError(f"⟨{key}⟩ must be ≥ {lo:g} (got {value})")


def _count(value, key: str) -> None:
    """A whole number ≥ 1 (a float like 2.5 or 2.0 is refused: it counts epochs)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"⟨{key}⟩ must be a whole number ≥ 1 (got {value!r})")
    if value < 1:
        raise OptionError(f"⟨{key}⟩ must be ≥ 1 (got {value})")


def check_target(method: Method, given: dict, resolved: dict, target: dict | None,
                 allocation: str | None) -> Target | None:
    """The budget, checked: one kind, a fraction in (0, 1), and rates that only split a
    layer's count — a method with one criterion takes no rate of its own beside a target
    (its rate is what the target sets), a method with two needs a ratio that is not 0:0."""
    if not target:
        if allocation is not None:
            raise OptionError(f"⟨allocation={allocation}⟩ spreads a budget over the layers "
                              "and there is none; add ⟨target⟩, or drop it")
        return None
    if not isinstance(target, dict):
        raise OptionError(f"give one target, ⟨target⟩ (got {target!r})")
    kinds = [k for k, v in target.items() if v is not None]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        raise OptionError(f"give one target, ⟨target⟩ (got "
                          f"{', '.join(map(str, kinds)) or 'none'})")
    kind = kinds[0]
    value = target[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise OptionError(f"the {kind} target must be a number in (0, 1) (got {value!r})")
    value = float(value)
    spelled = f"⟨target.{kind}={value:g}⟩"
    if not 0 < value < 1:
        raise OptionError(f"{spelled} must lie in (0, 1): the fraction of the dense network's "
                          f"{'FLOPs' if kind == 'flops' else 'parameters'} to keep")
    allocation = allocation or ALLOCATIONS[0]
    if allocation not in ALLOCATIONS:
        raise OptionError(f"⟨allocation={allocation}⟩ is not one of {', '.join(ALLOCATIONS)}")
    rated = [c for c in method.criteria if given.get(c) is not None]
    if len(method.criteria) == 1 and rated:
        raise OptionError(f"{spelled} sets the rate of ⟨method={method.name}⟩ itself, so "
                          f"⟨rates.{rated[0]}⟩ contradicts it; drop ⟨rates.{rated[0]}⟩")
    if sum(resolved.values()) == 0:
        used = " and ".join(f"⟨rates.{c}⟩" for c in method.criteria)
        raise OptionError(f"with {spelled}, {used} only split each layer's count between the "
                          "two criteria, and both are 0; give their ratio (e.g. the defaults) "
                          "or drop them")
    return Target(kind, value, allocation)
