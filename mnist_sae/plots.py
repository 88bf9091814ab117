"""Plot data for `dvc plots` (rows of JSON / CSV text, rendered by DVC's vega templates) and the
matplotlib figures where a picture says more than a vega template can (log axes, annotated
heatmaps). Pure: arrays in, rows / text / Figure out; the stage writes the files.
"""

from __future__ import annotations

import torch

N_CLASSES = 10


def log_histogram(values_N: torch.Tensor, bins: int, field: str, floor: float = 1e-12) -> list[dict]:
    """Histogram of log10(values) over `bins` equal-width bins between the smallest and largest
    value (values below `floor`, e.g. exact zeros, counted at log10(floor)). Rows
    {field: bin centre in log10 units, "count", "fraction"}, in bin order."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    logs_N = values_N.double().clamp_min(floor).log10()
    lo, hi = logs_N.min().item(), logs_N.max().item()
    if hi - lo < 1e-9:  # all equal: one unit-wide range around the value
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    idx_N = ((logs_N - lo) / width).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(idx_N, minlength=bins).tolist()
    n = len(values_N)
    return [{field: round(lo + (i + 0.5) * width, 6), "count": c, "fraction": round(c / n, 6)}
            for i, c in enumerate(counts)]


def count_histogram(counts_N: torch.Tensor, field: str) -> list[dict]:
    """Rows {field: k, "count", "fraction"} for every integer k from 0 to max(counts), e.g. the
    number of examples with exactly k active latents."""
    hist = torch.bincount(counts_N.long()).tolist()
    n = len(counts_N)
    return [{field: k, "count": c, "fraction": round(c / n, 6)} for k, c in enumerate(hist)]


def prediction_pairs_csv(actual_N: torch.Tensor, predicted_N: torch.Tensor, actual: str, predicted: str) -> str:
    """CSV text `actual,predicted` with one row per example, for DVC's confusion template."""
    lines = [f"{actual},{predicted}"] + [f"{a},{p}" for a, p in zip(actual_N.tolist(), predicted_N.tolist())]
    return "\n".join(lines) + "\n"


def confusion_matrix(actual_N: torch.Tensor, predicted_N: torch.Tensor, n_classes: int = N_CLASSES) -> torch.Tensor:
    """counts_CC[i, j] = number of examples with actual class i and predicted class j."""
    flat = actual_N.long() * n_classes + predicted_N.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def evaluation_figure(mse_by_split: dict, l0_by_split: dict, confusion_CC: torch.Tensor, title: str):
    """One PNG, three panels: per-example MSE by split (log-x histogram), active latents per
    example by split, and the test confusion matrix (FFN's class vs class read from the
    reconstruction) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_mse, ax_l0, ax_cm) = plt.subplots(1, 3, figsize=(12, 4.2))  # 1200 px at 100 dpi
    floor = 1e-12
    all_logs = np.concatenate([np.log10(np.maximum(v.double().numpy(), floor)) for v in mse_by_split.values()])
    edges = np.logspace(all_logs.min(), max(all_logs.max(), all_logs.min() + 1e-6), 41)
    for split, mse_N in mse_by_split.items():
        ax_mse.hist(np.maximum(mse_N.double().numpy(), floor), bins=edges, histtype="step", density=True, label=split)
    ax_mse.set_xscale("log")
    ax_mse.set_xlabel("per-example MSE (SAE input space)")
    ax_mse.set_ylabel("density")
    ax_mse.legend()

    max_l0 = max(int(v.max().item()) for v in l0_by_split.values())
    width = 0.8 / len(l0_by_split)
    for i, (split, l0_N) in enumerate(l0_by_split.items()):
        frac = np.bincount(l0_N.numpy(), minlength=max_l0 + 1) / len(l0_N)
        ax_l0.bar(np.arange(max_l0 + 1) + (i - (len(l0_by_split) - 1) / 2) * width, frac, width=width, label=split)
    ax_l0.set_xlabel("active latents per example (L0)")
    ax_l0.set_ylabel("fraction of examples")
    ax_l0.legend()

    cm = confusion_CC.numpy()
    ax_cm.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax_cm.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                           color="white" if cm[i, j] > cm.max() / 3 else "black")
    ax_cm.set_xticks(range(cm.shape[1]))
    ax_cm.set_yticks(range(cm.shape[0]))
    ax_cm.set_xlabel("class from the reconstruction")
    ax_cm.set_ylabel("FFN's class")
    agree = np.trace(cm) / max(cm.sum(), 1)
    ax_cm.set_title(f"test: {100 * agree:.2f}% agree")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

