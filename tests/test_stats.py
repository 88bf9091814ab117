"""Seed statistics: the t-interval against its formula with a hand-looked-up quantile."""

import math

import pytest

from mnist_sae.stats import seed_summary, separated, t_interval


def test_t_interval_by_hand():
    # values 1, 2, 3: mean 2, sample std 1, t_{0.975, 2} = 4.302653 (standard t table)
    mean, hw = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hw == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert t_interval([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        t_interval([])


def test_seed_summary_and_separation():
    out = seed_summary([{"a": 1.0, "n": "x"}, {"a": 3.0, "n": "y"}])
    assert out["a"] == 2.0 and out["a_ci95"] == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    assert out["n"] == "x" and len(out["per_seed"]) == 2  # non-numbers: the first seed's
    assert separated(0.0, 0.1, 0.5, 0.1) and not separated(0.0, 0.3, 0.5, 0.3) and separated(0.0, None, 0.1, None)
