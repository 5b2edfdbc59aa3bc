import numpy as np
import pytest
from bjontegaard import bd_psnr as ref_bd_psnr
from bjontegaard import bd_rate as ref_bd_rate

from icm.analysis import bd_metric, bd_rate, pareto_front

# Two typical rate-accuracy curves (bpp, mAP) with partial overlap
REF = [(0.10, 0.30), (0.20, 0.42), (0.40, 0.52), (0.80, 0.58)]
TEST = [(0.06, 0.31), (0.12, 0.43), (0.25, 0.53), (0.50, 0.585)]


def test_pareto_front_drops_dominated_points_and_keeps_order():
    grid = [(0.5, 0.50), (0.3, 0.52), (0.2, 0.40), (0.9, 0.51), (0.1, 0.10), (0.3, 0.45)]
    assert pareto_front(grid) == [(0.1, 0.10), (0.2, 0.40), (0.3, 0.52)]


def test_bd_rate_matches_the_bjontegaard_package():
    ours = bd_rate(REF, TEST)
    r0, m0 = zip(*REF)
    r1, m1 = zip(*TEST)
    theirs = ref_bd_rate(np.array(r0), np.array(m0), np.array(r1), np.array(m1), method="pchip", min_overlap=0)
    assert ours == pytest.approx(theirs, abs=0.05)
    assert ours < -30  # TEST needs far fewer bits


def test_bd_metric_matches_the_bjontegaard_package():
    ours = bd_metric(REF, TEST)
    r0, m0 = zip(*REF)
    r1, m1 = zip(*TEST)
    theirs = ref_bd_psnr(np.array(r0), np.array(m0), np.array(r1), np.array(m1), method="pchip", min_overlap=0)
    assert ours == pytest.approx(theirs, abs=1e-3)
    assert ours > 0


def test_identical_curves_give_zero_and_no_overlap_gives_none():
    assert bd_rate(REF, REF) == pytest.approx(0, abs=1e-9)
    assert bd_metric(REF, REF) == pytest.approx(0, abs=1e-12)
    assert bd_rate(REF, [(0.1, 0.9), (0.2, 0.95)]) is None  # metrics never overlap
    assert bd_rate(REF, [(0.1, 0.3)]) is None  # a single point is not a curve


def test_non_monotonic_curve_is_reduced_to_its_front():
    noisy = TEST + [(0.3, 0.40), (0.7, 0.55)]  # dominated points must not change the result
    assert bd_rate(REF, noisy) == pytest.approx(bd_rate(REF, TEST))


def test_doubling_the_rate_is_plus_100_percent():
    doubled = [(r * 2, m) for r, m in REF]
    assert bd_rate(REF, doubled) == pytest.approx(100.0, rel=1e-6)
