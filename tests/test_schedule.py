import math

import numpy as np
import pytest

from utils.method.schedule import asymptotic_schedule, constant_schedule, count, solve_xi


def test_known_values_of_the_paper_setting():
    s = asymptotic_schedule(0.1, 0.4, 200, tau=10)
    assert s.xi == pytest.approx(0.2500007153, abs=1e-9)
    expected = {1: (0.033646, 0.932708), 20: (0.375868, None), 50: (0.484645, 0.030710),
                199: (0.5, 0.0)}
    for e, (theta, zeta) in expected.items():
        assert s.theta[e] == pytest.approx(theta, abs=1e-6)
        if zeta is not None:
            assert s.zeta[e] == pytest.approx(zeta, abs=1e-6)
    assert s.theta_first[5] == pytest.approx(0.1, abs=1e-12)
    assert s.theta_second[5] == pytest.approx(0.047062, abs=1e-6)
    assert s.theta[0] == 0.0 and s.zeta[0] == 1.0 and s.zeta[-1] == 0.0


@pytest.mark.parametrize("tau", [1.34, 1.5, 2.0, 2.5, 3.7, 7.3, 10.0, 25.0, 100.0])
def test_xi_is_the_nontrivial_root_for_real_tau(tau):
    xi = solve_xi(tau)
    assert 0 < xi < 1
    assert abs(0.75 * xi ** tau - xi + 0.25) < 1e-12


@pytest.mark.parametrize("tau", [1.0, 4 / 3, 0.5, -2.0])
def test_tau_too_small_is_rejected(tau):
    with pytest.raises(ValueError, match="4/3"):
        solve_xi(tau)


@pytest.mark.parametrize("rates,epochs,tau", [((0.1, 0.4), 200, 10), ((0.3, 0.2), 40, 8.5),
                                              ((0.0, 0.4), 70, 2.0), ((0.5, 0.0), 17, 1.6)])
def test_schedule_properties(rates, epochs, tau):
    r_cs, r_gm = rates
    s = asymptotic_schedule(r_cs, r_gm, epochs, tau=tau, attenuation=0.2)
    theta3 = r_cs + r_gm
    assert np.all(np.diff(s.theta) >= 0) and s.theta[0] == 0 and s.theta[-1] == theta3
    assert np.all(s.theta <= theta3 + 1e-12)
    # θ(e2) = ¾·θ3 at e2 = e3/τ (interpolate: e2 need not be an integer)
    e2 = (epochs - 1) / tau
    lo = int(math.floor(e2))
    assert s.theta[lo] <= 0.75 * theta3 + 1e-12 <= s.theta[min(lo + 1, epochs - 1)] + 1e-12
    np.testing.assert_allclose(s.theta_first + s.theta_second, s.theta, atol=1e-15)
    assert np.all(s.theta_first <= r_cs + 1e-15)
    # CS share first: GM only grows once CS has reached its rate
    assert np.all((s.theta_second == 0) | (s.theta_first == r_cs))
    np.testing.assert_allclose(s.zeta, 0.2 * (1 - s.theta / theta3), atol=1e-15)
    assert s.zeta[0] == pytest.approx(0.2) and s.zeta[-1] == 0


def test_zero_scaling_and_dense_baseline():
    assert np.all(asymptotic_schedule(0.1, 0.4, 10, zero_scaling=True).zeta == 0)
    dense = asymptotic_schedule(0.0, 0.0, 10)
    assert np.all(dense.theta == 0) and np.all(dense.zeta == 1)


@pytest.mark.parametrize("bad", [(0.6, 0.4), (0.9, 0.2), (-0.1, 0.2), (0.1, -0.01)])
def test_invalid_rates_are_rejected(bad):
    with pytest.raises(ValueError):
        asymptotic_schedule(*bad, 10)


def test_count_floors_with_tolerance():
    assert count(64, 0.25) == 16
    assert count(10, 0.7 - 0.1) == 6          # 5.999999999999999 without the tolerance
    assert count(16, 0.1) + count(16, 0.5 - 0.1) == 7  # the reference's 7 of 16
    assert count(16, 0.0) == 0 and count(15, 0.0666) == 0


def test_a_schedule_holds_no_array_over_its_epochs():
    """A run of 10⁹ epochs stopped after one took 22 GB when the schedule held its rates for
    every epoch: now what a schedule holds, and what its figure draws, does not grow with the
    epochs; an epoch's values are those of the schedule computed over every epoch."""
    import tracemalloc

    small = asymptotic_schedule(0.1, 0.4, 200, attenuation=0.2)
    for e in (0, 1, 5, 50, 198, 199):
        assert small.at(e) == {"theta": small.theta[e], "first": small.theta_first[e],
                               "second": small.theta_second[e], "zeta": small.zeta[e]}
    for sched in (asymptotic_schedule(0.1, 0.4, 10 ** 9), constant_schedule(0.5, 0, 10 ** 9)):
        tracemalloc.start()
        try:
            first, last = sched.at(1), sched.at(10 ** 9 - 1)
            curves = sched.curves()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2 ** 20, f"{peak} bytes"  # one array over the epochs: 8 GB
        assert 0 < first["theta"] <= last["theta"] == pytest.approx(0.5) and last["zeta"] == 0
        assert len(curves.epochs) == 2001 and curves.epochs[-1] == 10 ** 9 - 1
