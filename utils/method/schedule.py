"""Pruning-rate schedules (SPEC §2, §9): FSDP's asymptotic one, and constant rates.

θ(e) rises fast at first and flattens towards θ3; θ(e2) = ¾·θ3 at e2 = e3/τ and θ(e3) = θ3
exactly. The first criterion (CS for FSDP, the L2 norm for the baselines) takes its share
first, the second (GM) the rest; ζ(e) = s·(1 − θ(e)/θ3) attenuates the selected filters so
that they reach exactly zero at the last epoch.
"""
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    theta: np.ndarray         # total rate per epoch
    theta_first: np.ndarray   # share of the first criterion (CS, or the L2 norm)
    theta_second: np.ndarray  # share of the second criterion (GM)
    zeta: np.ndarray          # weight (and gradient) factor of the selected filters
    xi: float | None = None   # asymptotic schedules only
    e2: float | None = None

    @property
    def epochs(self) -> int:
        return len(self.theta)

    def at(self, epoch: int) -> dict:
        return {"theta": float(self.theta[epoch]), "first": float(self.theta_first[epoch]),
                "second": float(self.theta_second[epoch]), "zeta": float(self.zeta[epoch])}


def solve_xi(tau: float) -> float:
    """Root in (0, 1) of ¾ξ^τ − ξ + ¼ = 0 (the SPEC's equation divided by θ3).

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
                        final_epoch: int | None = None) -> Schedule:
    """θ(e) of SPEC §2, reaching θ3 at ``final_epoch`` (default the last epoch, e3 = E − 1, the
    authors' rule) and staying there; ``final_epoch < E − 1`` lets the count reach its target
    at an update that still has training after it (``target_epoch``)."""
    _check(rate_first, rate_second, epochs)
    theta3 = rate_first + rate_second
    xi = solve_xi(tau)
    e3 = epochs - 1 if final_epoch is None else final_epoch
    if not 0 <= e3 < epochs:
        raise ValueError(f"final_epoch must lie in 0..{epochs - 1} (got {e3})")
    e = np.arange(epochs, dtype=np.float64)
    e2 = e3 / tau
    if theta3 == 0:
        theta = np.zeros(epochs)
    elif e3 == 0:
        theta = np.full(epochs, theta3)
    else:
        theta2 = 0.75 * theta3
        beta = -math.log(xi) / e2
        alpha = theta2 / (xi - 1.0)
        theta = alpha * (np.exp(-beta * e) - 1.0) + 0.0  # + 0.0 turns θ(0) = −0.0 into 0.0
    theta[e3:] = theta3
    theta_first = np.minimum(rate_first, theta)
    theta_second = theta - theta_first
    if zero_scaling:
        zeta = np.zeros(epochs)
    elif theta3 == 0:
        zeta = np.full(epochs, float(attenuation))  # nothing is ever selected
    else:
        zeta = attenuation * (1.0 - theta / theta3)
        zeta[e3:] = 0.0
    return Schedule(theta, theta_first, theta_second, zeta, xi, e2)


def constant_schedule(rate_first: float, rate_second: float, epochs: int) -> Schedule:
    """SFP's and FPGM's: the final rates from epoch 0 on (the first mask is applied before
    training), selected filters set to zero."""
    _check(rate_first, rate_second, epochs)
    full = lambda v: np.full(epochs, float(v))  # noqa: E731
    return Schedule(full(rate_first + rate_second), full(rate_first), full(rate_second), full(0))


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
