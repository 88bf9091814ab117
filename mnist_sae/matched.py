"""When a method's measured L0 counts as the sparsity k it was fitted for.

One rule for the baselines report (which rows are compared at k) and the headline (which rows
may be its best-at-k). A module of its own, without torch: the headline stage computes nothing
and imports only this, so it starts in a fraction of a second (it reruns in every experiment).
"""

from __future__ import annotations

L0_TOLERANCE = 0.25  # a row counts as matched at k when |L0 - k| <= 0.25 k


def is_matched(row: dict) -> bool:
    """Whether a row's measured L0 is within L0_TOLERANCE of its k (calibration can miss)."""
    return row["k"] > 0 and abs(row["l0"] - row["k"]) <= L0_TOLERANCE * row["k"]
