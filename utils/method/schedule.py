"""Pruning-rate schedules (docs/method.md, docs/methods.md): FSDP's asymptotic one, and
constant rates.

θ(e) rises fast at first and flattens towards θ3; θ(e2) = ¾·θ3 at e2 = e3/τ and θ(e3) = θ3
exactly. The first criterion (CS for FSDP, the L2 norm for the baselines) takes its share
first, the second (GM) the rest; ζ(e) = s·(1 − θ(e)/θ3) attenuates the selected filters so
that they reach exactly zero at the last epoch.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curves:
    """A schedule at some of its epochs, as a figure draws it."""
    epochs: np.ndarray
    theta: np.ndarray
    theta_first: np.ndarray
    theta_second: np.ndarray
    zeta: np.ndarray
    xi: float | None = None


class _Drawable:
    """What every schedule offers beside ``at``: its curves at a sample of at most ``points``
    epochs (a figure's line needs no more: a run of 10⁹ epochs draws 2 001 points)."""

    def curves(self, points: int = 2001) -> Curves:
        e = np.unique(np.linspace(0, self.epochs - 1, min(points, self.epochs)).round()
                      .astype(np.int64))
        v = self.values(e)
        return Curves(e, v["theta"], v["first"], v["second"], v["zeta"], self.xi)


@dataclass(frozen=True)
class Schedule(_Drawable):
    """A schedule given epoch by epoch (as arrays): a test's, or any of one's own."""
    theta: np.ndarray         # total rate per epoch
    theta_first: np.ndarray   # share of the first criterion (CS, or the L2 norm)
    theta_second: np.ndarray  # share of the second criterion (GM)
    zeta: np.ndarray          # weight (and gradient) factor of the selected filters
    xi: float | None = None   # asymptotic schedules only
    e2: float | None = None

    @property
    def epochs(self) -> int:
        return len(self.theta)

    @property
    def peak(self) -> float:
        """The largest total rate: 0 when nothing is ever selected."""
        return float(self.theta.max())

    @property
    def final(self) -> float:
        return float(self.theta[-1])

    def values(self, e: np.ndarray) -> dict:
        return {"theta": self.theta[e], "first": self.theta_first[e],
                "second": self.theta_second[e], "zeta": self.zeta[e]}

    def at(self, epoch: int) -> dict:
        return {"theta": float(self.theta[epoch]), "first": float(self.theta_first[epoch]),
                "second": float(self.theta_second[epoch]), "zeta": float(self.zeta[epoch])}


@dataclass(frozen=True)
class FormulaSchedule(_Drawable):
    """θ(e), the shares and ζ(e) from their formulas, computed for the epochs asked about:
    what a run keeps does not grow with its number of epochs (a run of 10⁹ epochs stopped
    after one would otherwise hold gigabytes of rates). ``theta``, ``theta_first``,
    ``theta_second`` and ``zeta`` give every epoch at once, computed when first read (tests,
    small schedules). Element by element the arrays are those the authors' loop computed
    over every epoch at once (numpy's exp is elementwise)."""
    epochs: int
    rate_first: float
    rate_second: float
    attenuation: float = 0.0
    zero_scaling: bool = True
    asymptotic: bool = False
    xi: float | None = None
    e2: float | None = None
    e3: int | None = None       # asymptotic: the epoch θ reaches θ3 (and stays)

    @property
    def peak(self) -> float:
        return self.rate_first + self.rate_second

    @property
    def final(self) -> float:
        return self.rate_first + self.rate_second

    def values(self, e: np.ndarray) -> dict:
        """{"theta", "first", "second", "zeta"}: arrays over the epochs ``e``."""
        e = np.asarray(e, dtype=np.int64)
        theta3 = self.rate_first + self.rate_second
        if not self.asymptotic:
            theta = np.full(len(e), theta3)
        elif theta3 == 0:
            theta = np.zeros(len(e))
        elif self.e3 == 0:
            theta = np.full(len(e), theta3)
        else:
            theta2 = 0.75 * theta3
            beta = -math.log(self.xi) / self.e2
            alpha = theta2 / (self.xi - 1.0)
            # + 0.0 turns θ(0) = −0.0 into 0.0
            theta = alpha * (np.exp(-beta * e.astype(np.float64)) - 1.0) + 0.0
            theta[e >= self.e3] = theta3
        first = np.minimum(self.rate_first, theta)
        if self.zero_scaling:
            zeta = np.zeros(len(e))
        elif theta3 == 0:
            zeta = np.full(len(e), float(self.attenuation))  # nothing is ever selected
        else:
            zeta = self.attenuation * (1.0 - theta / theta3)
            zeta[e >= self.e3] = 0.0
        return {"theta": theta, "first": first, "second": theta - first, "zeta": zeta}

    def at(self, epoch: int) -> dict:
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"epoch {epoch} outside the schedule's 0..{self.epochs - 1}")
        return _at(self, int(epoch))

    @functools.cached_property
    def _every(self) -> dict:
        return self.values(np.arange(self.epochs))

    @property
    def theta(self) -> np.ndarray:
        return self._every["theta"]

    @property
    def theta_first(self) -> np.ndarray:
        return self._every["first"]

    @property
    def theta_second(self) -> np.ndarray:
        return self._every["second"]

    @property
    def zeta(self) -> np.ndarray:
        return self._every["zeta"]


@functools.lru_cache(maxsize=4096)
def _at(schedule: FormulaSchedule, epoch: int) -> dict:
    """One epoch's values (the mask asks for the same few epochs many times per update)."""
    return {k: float(v[0]) for k, v in schedule.values(np.array([epoch])).items()}


def solve_xi(tau: float) -> float:
    """Root in (0, 1) of ¾ξ^τ − ξ + ¼ = 0 (θ2·ξ^τ − θ3·ξ + (θ3 − θ2) = 0 divided by θ3).

    f is convex with f(0) = ¼ > 0, f(1) = 0 and f'(1) = ¾τ − 1 > 0 for τ > 4/3, so it has a
    single root in (0, 1), left of f's minimum ξ* = (4/(3τ))^(1/(τ−1)) where f < 0. Bisection
    on [0, ξ*] works for any real τ; the reference read the root off ``numpy.roots`` by
    position, which only works for integer τ.
    """
    if not tau > 4.0 / 3.0:
        raise ValueError(f"tau must be > 4/3 (got {tau})")
    f = lambda x: 0.75 * x ** tau - x + 0.25  # noqa: E731
    lo, hi = 0.0, (4.0 / (3.0 * tau)) ** (1.0 / (tau - 1.0))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return 0.5 * (lo + hi)


def _check(rate_first: float, rate_second: float, epochs: int) -> None:
    if rate_first < 0 or rate_second < 0:
        raise ValueError(f"pruning rates must be ≥ 0 (got {rate_first}, {rate_second})")
    if rate_first + rate_second >= 1:
        raise ValueError(f"the pruning rates must add up to < 1 (got {rate_first + rate_second})")
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1 (got {epochs})")


def asymptotic_schedule(rate_first: float, rate_second: float, epochs: int, tau: float = 10.0,
                        attenuation: float = 1.0, zero_scaling: bool = False,
                        final_epoch: int | None = None) -> FormulaSchedule:
    """θ(e) of docs/method.md, reaching θ3 at ``final_epoch`` (default the last epoch,
    e3 = E − 1, the authors' rule) and staying there; ``final_epoch < E − 1`` lets the count
    reach its target at an update that still has training after it (``target_epoch``)."""
    _check(rate_first, rate_second, epochs)
    xi = solve_xi(tau)
    e3 = epochs - 1 if final_epoch is None else final_epoch
    if not 0 <= e3 < epochs:
        raise ValueError(f"final_epoch must lie in 0..{epochs - 1} (got {e3})")
    return FormulaSchedule(epochs, float(rate_first), float(rate_second), float(attenuation),
                           bool(zero_scaling), True, xi, e3 / tau, e3)


def constant_schedule(rate_first: float, rate_second: float, epochs: int) -> FormulaSchedule:
    """SFP's and FPGM's: the final rates from epoch 0 on (the first mask is applied before
    training), selected filters set to zero."""
    _check(rate_first, rate_second, epochs)
    return FormulaSchedule(epochs, float(rate_first), float(rate_second))


def target_epoch(epochs: int, every: int = 1) -> int:
    """The last mask update that still has an epoch of training after it (updates run at
    epochs divisible by ``every`` and after the last): where our asymptotic rule lets the
    count reach its target, instead of cutting the last filters with no training after."""
    return ((epochs - 2) // every) * every if epochs >= 2 else 0


def count(filters: int, rate: float) -> int:
    """⌊F·rate⌋ with a tiny tolerance, so that 10 × (0.7 − 0.1) gives 6, not 5."""
    return int(math.floor(filters * rate + 1e-9))


def round_selected(filters: int, selected: int, round_to: int) -> int:
    """``--round_to``: select fewer where needed so that the kept filters are a multiple of
    ``round_to`` (hardware computes channels in blocks; a layer of 9 costs what 16 does)."""
    if round_to <= 1 or selected <= 0:
        return max(selected, 0)
    kept = -(-(filters - selected) // round_to) * round_to
    return max(filters - kept, 0)


def split_counts(filters: int, first_rate: float, second_rate: float,
                 round_to: int = 1) -> tuple[int, int]:
    """(first, second) counts of a layer of ``filters`` at the two shares' rates; with
    ``round_to`` the second share gives up filters first, then the first share."""
    first, second = count(filters, first_rate), count(filters, second_rate)
    excess = first + second - round_selected(filters, first + second, round_to)
    cut = min(excess, second)
    return first - (excess - cut), second - cut
