"""Seed statistics: the t-interval against its formula with a hand-looked-up quantile."""

import math

import numpy as np
import pytest

from mnist_sae.stats import seed_summary, separated, t_interval


def test_t_interval_by_hand():
    # values 1, 2, 3: mean 2, sample std 1, t_{0.975, 2} = 4.302653 (standard t table)
    mean, hw = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hw == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert t_interval([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        t_interval([])


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_t_interval_quantile_is_scipy_stats_bit_for_bit(n):
    # the committed intervals were computed with scipy.stats.t.ppf; stats.py calls its kernel directly
    from scipy import stats as sps
    values = [float(i) ** 1.5 for i in range(n)]
    x = np.asarray(values)
    want = float(sps.t.ppf(0.975, df=n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    assert t_interval(values)[1] == want


def test_seed_summary_and_separation():
    out = seed_summary([{"a": 1.0, "n": "x"}, {"a": 3.0, "n": "y"}])
    assert out["a"] == 2.0 and out["a_ci95"] == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    assert out["n"] == "x" and len(out["per_seed"]) == 2  # non-numbers: the first seed's
    assert separated(0.0, 0.1, 0.5, 0.1) and not separated(0.0, 0.3, 0.5, 0.3) and separated(0.0, None, 0.1, None)
