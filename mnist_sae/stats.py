"""Statistics over seeds: every seeded number is reported as a mean and a 95% interval.

With S independent seeds (S models trained from different inits and batch orders on the same
data) the interval is Student's t: mean +- t_{0.975, S-1} * s / sqrt(S), s the sample standard
deviation (ddof 1). It covers the seed-to-seed variation of the training recipe, not the
sampling of the evaluation examples. With one seed there is no interval (half-width None).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import stdtrit


def t_interval(values, confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width) of the two-sided t-interval over `values` (None when fewer than 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_interval: expected a non-empty 1-d list of values, got shape {x.shape}")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    # Student's t quantile: scipy.stats.t.ppf's own kernel, without scipy.stats' ~0.7 s import per stage
    t = float(stdtrit(x.size - 1, 0.5 + confidence / 2))
    return mean, t * float(x.std(ddof=1)) / math.sqrt(x.size)


def seed_summary(per_seed: list[dict]) -> dict:
    """_mean_over_seeds of the seeds' dicts (means, key_ci95 half-widths, nested dicts alike),
    plus "per_seed": the dicts themselves."""
    return {**_mean_over_seeds(per_seed), "per_seed": per_seed}


def separated(mean_a: float, hw_a: float | None, mean_b: float, hw_b: float | None) -> bool:
    """True when the two intervals [mean -+ hw] do not overlap (a missing half-width counts as 0).
    Non-overlap of 95% intervals is a conservative test of a difference (it implies p < 0.05)."""
    return abs(mean_a - mean_b) > (hw_a or 0.0) + (hw_b or 0.0)


def aggregate_rows(rows: list[dict]) -> dict:
    """One row from the same method scored once per seed: _mean_over_seeds, and "seeds" counts
    the rows."""
    return {**_mean_over_seeds(rows), "seeds": len(rows)}


def _mean_over_seeds(rows: list[dict]) -> dict:
    """Every numeric key becomes its mean over the rows, with key_ci95 beside it when there are
    2+ rows and the values differ; values equal in every row (integers such as n_latents,
    strings, None) are kept as they are; nested dicts (e.g. "core") follow the same rule."""
    out = {}
    for key, first in rows[0].items():
        vals = [r.get(key) for r in rows]
        if isinstance(first, dict) and all(isinstance(v, dict) for v in vals):
            out[key] = _mean_over_seeds(vals)
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if not numeric or all(v == first for v in vals):
            out[key] = first
            continue
        mean, hw = t_interval(vals)
        out[key] = mean
        if hw is not None:
            out[f"{key}_ci95"] = hw
    return out
