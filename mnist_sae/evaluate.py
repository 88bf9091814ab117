"""Evaluate a trained SAE at its site: reconstruct each split, score it with metrics.fidelity, and
lay the numbers out as the original write-up's two tables (BEST_RESULTS.md, README).

The SAE sees z = (y - mu) / sigma (train mean and std per dimension) when the site is normalized,
else z = y; its reconstruction goes back to the FFN's units as y_hat = z_hat * sigma + mu, and the
FFN's decision is read from y_hat directly (logit site) or from head(y_hat) (hidden site).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tabulate import tabulate

from mnist_sae import metrics
from mnist_sae.data import DataError
from mnist_sae.sae import SAE, reconstruct

SPLITS = ("train", "val", "test")


def load_collected(collected_dir, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y_ND float32, logits_NO float32, labels_N int64) of one split of the collect stage's folder:
    the raw site activations (not normalized), the FFN's logits and the labels."""
    d = Path(collected_dir)
    arrays = []
    for name in (f"{split}_acts.npy", f"{split}_logits.npy", f"{split}_labels.npy"):
        if not (d / name).exists():
            raise DataError(f"{d / name}: not found; run `dvc repro collect`")
        arrays.append(np.load(d / name, mmap_mode="r"))
    acts_ND, logits_NO, labels_N = arrays
    n = labels_N.shape[0]
    if acts_ND.ndim != 2 or acts_ND.shape[0] != n or logits_NO.ndim != 2 or logits_NO.shape[0] != n:
        raise DataError(f"{d}/{split}_*.npy: expected acts [N, D], logits [N, O], labels [N] with one N, "
                        f"got {acts_ND.shape}, {logits_NO.shape}, {labels_N.shape}")
    return (torch.from_numpy(np.array(acts_ND, dtype=np.float32)),
            torch.from_numpy(np.array(logits_NO, dtype=np.float32)),
            torch.from_numpy(np.array(labels_N, dtype=np.int64)))


def load_stats(collected_dir) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(info, mean_D, std_D) of the collect stage's folder: site, width, normalize flag and the
    train split's per-dimension mean and std."""
    d = Path(collected_dir)
    for name in ("info.json", "mean_D.npy", "std_D.npy"):
        if not (d / name).exists():
            raise DataError(f"{d / name}: not found; run `dvc repro collect`")
    info = json.loads((d / "info.json").read_text())
    mean_D = torch.from_numpy(np.load(d / "mean_D.npy").astype(np.float32))
    std_D = torch.from_numpy(np.load(d / "std_D.npy").astype(np.float32))
    if mean_D.shape != (info["d"],) or std_D.shape != (info["d"],):
        raise DataError(f"{d}: mean/std of shape {tuple(mean_D.shape)}, {tuple(std_D.shape)} do not match d = {info['d']}")
    return info, mean_D, std_D


@torch.no_grad()
def evaluate_split(sae: SAE, y_ND: torch.Tensor, logits_NO: torch.Tensor, labels_N: torch.Tensor,
                   mean_D: torch.Tensor, std_D: torch.Tensor, normalize: bool,
                   to_logits: Callable[[torch.Tensor], torch.Tensor], dense_threshold: float = 0.1,
                   chunk: int = 4096) -> tuple[dict, dict]:
    """(metrics, arrays) of one split.

    metrics: metrics.fidelity's flat dict (ablation = mean_D, the train mean of y).
    arrays:  mse_N (per-example normalized MSE), l0_N (active latents per example),
             pred_orig_N, pred_recon_N (the FFN's class from y and from y_hat), all on CPU.
    """
    y_ND = y_ND.float().cpu()
    mean_D, std_D = mean_D.float().cpu(), std_D.float().cpu()
    if y_ND.ndim != 2 or mean_D.shape != (y_ND.shape[1],) or std_D.shape != mean_D.shape:
        raise ValueError(f"evaluate_split: activations {tuple(y_ND.shape)} do not match "
                         f"mean {tuple(mean_D.shape)}, std {tuple(std_D.shape)}")
    z_ND = (y_ND - mean_D) / std_D if normalize else y_ND
    z_hat_ND, a_NF = reconstruct(sae, z_ND, chunk=chunk)
    z_hat_ND, a_NF = z_hat_ND.cpu(), a_NF.cpu()
    y_hat_ND = z_hat_ND * std_D + mean_D if normalize else z_hat_ND
    logits_NO, labels_N = logits_NO.float().cpu(), labels_N.long().cpu()
    out = metrics.fidelity(y_ND, y_hat_ND, labels_N, logits_NO, to_logits, mean_D,
                           z_ND=z_ND if normalize else None, z_hat_ND=z_hat_ND if normalize else None,
                           a_NF=a_NF, dense_threshold=dense_threshold, chunk=chunk)
    recon_logits_NO = torch.cat([to_logits(y_hat_ND[i:i + chunk]) for i in range(0, len(y_hat_ND), chunk)])
    arrays = {
        "mse_N": metrics.mse_per_example(z_ND, z_hat_ND),
        "l0_N": metrics.l0_per_example(a_NF),
        "pred_orig_N": logits_NO.argmax(dim=1),
        "pred_recon_N": recon_logits_NO.argmax(dim=1),
    }
    return out, arrays


# --- tables ---------------------------------------------------------------------------------


def reconstruction_table(by_split: dict, tablefmt: str = "github") -> str:
    """Reconstruction error by split: normalized and raw MSE, explained variance, L0, per-example
    MSE median and p95."""
    headers = ["split", "MSE (normalized)", "MSE (raw)", "explained variance", "L0",
               "per-example MSE median", "per-example MSE p95"]
    rows = [[s, m["mse_norm"], m["mse_raw"], m["explained_variance"], m["l0"], m["mse_ex_median"], m["mse_ex_p95"]]
            for s, m in by_split.items()]
    return tabulate(rows, headers, tablefmt=tablefmt, floatfmt=".4f")


def ce_accuracy_table(by_split: dict, tablefmt: str = "github") -> str:
    """CE and accuracy by split: the FFN's own vs with the reconstruction spliced in."""
    headers = ["split", "CE", "CE recon", "delta CE", "CE recovered", "accuracy %", "accuracy recon %",
               "delta acc (pp)", "agreement %"]
    rows = [[s, m["ce_orig"], m["ce_recon"], m["ce_increase"], m["ce_recovered"], 100 * m["acc_orig"],
             100 * m["acc_recon"], m["acc_drop_pp"], 100 * m["agreement"]] for s, m in by_split.items()]
    return tabulate(rows, headers, tablefmt=tablefmt, floatfmt=".4f")


def settings_table(settings: dict, tablefmt: str = "github") -> str:
    """The run's settings as a two-column table (floats with up to 6 significant digits)."""
    rows = [[k, f"{v:.6g}" if isinstance(v, float) else v] for k, v in settings.items()]
    return tabulate(rows, ["setting", "value"], tablefmt=tablefmt, disable_numparse=True)


def best_results_markdown(settings: dict, by_split: dict) -> str:
    """metrics/BEST_RESULTS.md: the run's settings, then the two tables of the original write-up."""
    return (
        "# Best results\n\n"
        "Generated by the evaluate stage from metrics/eval.json; do not edit by hand.\n\n"
        "## Settings\n\n" + settings_table(settings) + "\n\n"
        "## Reconstruction error by split\n\n" + reconstruction_table(by_split) + "\n\n"
        "MSE (normalized) is in the SAE's input space z = (y - mean) / std; MSE (raw) and explained "
        "variance in the FFN's units.\n\n"
        "## Cross-entropy and accuracy by split\n\n" + ce_accuracy_table(by_split) + "\n\n"
        "recon = the FFN's decision read from the SAE's reconstruction; delta acc = accuracy - "
        "accuracy recon in percentage points; CE recovered = (CE_ablate - CE_recon) / (CE_ablate - CE), "
        "ablation = the train mean.\n"
    )
