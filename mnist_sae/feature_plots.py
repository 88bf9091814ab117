"""Figures of the feature report (mnist_sae.features): one small PNG per latent and an overview.

Figures are built on matplotlib.figure.Figure directly (no pyplot state), few axes each: the
top-k digits are one mosaic image, so a 512-latent report renders in seconds per hundred.
"""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure

SIDE = 28
N_CLASSES = 10


def mosaic(images_KI: np.ndarray, n_cols: int) -> np.ndarray:
    """K flat 28x28 images -> one [rows*29-1, n_cols*29-1] picture with 1-pixel gaps (NaN)."""
    k = len(images_KI)
    n_rows = max(1, -(-k // n_cols))
    out = np.full((n_rows * (SIDE + 1) - 1, n_cols * (SIDE + 1) - 1), np.nan)
    for i, img in enumerate(images_KI):
        r, c = divmod(i, n_cols)
        out[r * (SIDE + 1):r * (SIDE + 1) + SIDE, c * (SIDE + 1):c * (SIDE + 1) + SIDE] = \
            np.asarray(img, dtype=np.float64).reshape(SIDE, SIDE) / 255.0
    return out


def _title(ax, text: str) -> None:
    # a plain text artist: set_title re-lays out every tick to place itself, ~1/3 of the draw time
    ax.text(0.5, 1.03, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=7)


def latent_figure(record: dict, images_KI: np.ndarray, n_cols: int = 8) -> Figure:
    """Top-k examples (label, activation), input pattern map (red raises u_f), logit-effect bars.

    record: one entry of features.build_report; images_KI: uint8 pixels of record["top_n"]'s
    examples, in that order.
    """
    k = len(record["top_n"])
    cols = max(1, min(n_cols, k))  # the layout keeps n_cols slots so every PNG has one width
    n_rows = max(1, -(-k // cols))
    width = 0.47 * n_cols + 3.5
    head = textwrap.wrap(f"latent {record['latent']}: fires on {record['firing_rate']:.2%} of examples, "
                         f"mean activation {record['mean_activation']:.2g}", int(width * 16)) + \
        textwrap.wrap(record["hypothesis"], int(width * 16))  # ~16 characters per inch at 7 pt
    top = 0.2 + 0.13 * len(head)
    height = top + 0.25 + max(1.2, 0.47 * n_rows)
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(1, 3, width_ratios=[0.47 * n_cols, 1.2, 1.6], wspace=0.2,
                            left=0.01, right=0.98, top=1 - top / height, bottom=0.2 / height)
    ax = fig.add_subplot(grid[0])
    ax.imshow(mosaic(images_KI, cols), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    for i, ex in enumerate(record["top_n"]):
        r, c = divmod(i, cols)
        ax.text(c * (SIDE + 1) + 1, r * (SIDE + 1) + 1, f"{ex['label']}:{ex['activation']:.2g}",
                fontsize=5.5, color="tab:blue", va="top", ha="left")
    ax.set_axis_off()
    _title(ax, f"top {k} of {record['n_active']} (label:activation)")

    ax = fig.add_subplot(grid[1])
    pattern = np.asarray(record["input_pattern"], dtype=np.float64)
    vmax = float(np.abs(pattern).max()) or 1.0
    ax.imshow(pattern, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    _title(ax, f"d pre-act / d pixels (|max| {vmax:.2g})")

    ax = fig.add_subplot(grid[2])
    effect = np.asarray(record["logit_effect"], dtype=np.float64)
    ax.bar(np.arange(len(effect)), effect, color=["tab:red" if e > 0 else "tab:blue" for e in effect])
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(np.arange(len(effect)))
    ax.tick_params(labelsize=6, length=2)
    _title(ax, "logit effect at mean activation")

    fig.suptitle("\n".join(head), fontsize=7, y=1 - 0.05 / height, va="top")
    return fig


def overview_figure(records: list[dict], title: str = "") -> Figure:
    """Latent x class heatmap of the label histogram when active, each row normalized to 1,
    latents in report order (by firing rate), with the firing rate as a bar on the right."""
    n = len(records)
    share_LC = np.zeros((max(n, 1), N_CLASSES))
    for i, r in enumerate(records):
        counts = np.asarray(r["label_counts"], dtype=np.float64)
        share_LC[i] = counts / max(counts.sum(), 1.0)
    height = min(max(2.5, 0.16 * n + 1.2), 24.0)
    fig = Figure(figsize=(5.0, height))
    grid = fig.add_gridspec(1, 3, width_ratios=[3, 1, 0.12], wspace=0.08, left=0.16, right=0.9,
                            top=1 - 0.55 / height, bottom=0.45 / height)
    ax = fig.add_subplot(grid[0])
    im = ax.imshow(share_LC, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(N_CLASSES))
    ax.set_xlabel("label", fontsize=7)
    labels = [str(r["latent"]) for r in records]
    step = max(1, -(-n // 60))  # at most ~60 tick labels
    ax.set_yticks(np.arange(0, n, step), labels[::step])
    ax.set_ylabel("latent (by firing rate)", fontsize=7)
    ax.tick_params(labelsize=5.5, length=2)
    fig.colorbar(im, cax=fig.add_subplot(grid[2])).ax.tick_params(labelsize=5.5)

    ax = fig.add_subplot(grid[1], sharey=ax)
    ax.barh(np.arange(n), [r["firing_rate"] for r in records], color="tab:gray", height=0.8)
    ax.tick_params(labelleft=False)
    ax.set_xlabel("firing rate", fontsize=7)
    ax.tick_params(labelsize=5.5, length=2)
    fig.suptitle(title or f"label share when active, {n} live latents", fontsize=8)
    return fig
