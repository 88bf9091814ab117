"""Evaluate a trained SAE at its site: reconstruct each split, score it with metrics.fidelity, and
lay the numbers out as the original write-up's two tables (BEST_RESULTS.md, README) plus SAEBench's
core metrics (`core_table`, also used by the ACTS.md and TRUTH.md reports).

The SAE sees z = space.to_z(y) (mnist_sae.space: standardized by the train statistics when the
site is normalized, else z = y); its reconstruction goes back to the FFN's units as
y_hat = space.to_y(z_hat), and the FFN's decision is read from y_hat directly (logit site) or from head(y_hat) (hidden site).
"""

from __future__ import annotations

from typing import Callable

import torch
from tabulate import tabulate

from mnist_sae import metrics
from mnist_sae.sae import SAE, reconstruct
from mnist_sae.space import InputSpace

SPLITS = ("train", "val", "test")


@torch.no_grad()
def evaluate_split(sae: SAE, y_ND: torch.Tensor, logits_NO: torch.Tensor, labels_N: torch.Tensor,
                   space: InputSpace, to_logits: Callable[[torch.Tensor], torch.Tensor], dense_threshold: float = 0.1,
                   chunk: int = 4096) -> tuple[dict, dict]:
    """(metrics, arrays) of one split.

    metrics: metrics.fidelity's flat dict (ablation = space.y_mean_D, the train mean of y) with its "core"
             dict (metrics.core_metrics in y space, zero ablation).
    arrays:  mse_N (per-example normalized MSE), l0_N (active latents per example),
             pred_orig_N, pred_recon_N (the FFN's class from y and from y_hat), all on CPU.
    """
    y_ND = y_ND.float().cpu()
    space = space.to("cpu", torch.float32)
    if y_ND.ndim != 2 or y_ND.shape[1] != space.d:
        raise ValueError(f"evaluate_split: activations {tuple(y_ND.shape)} do not match the {space.d}-d input space")
    z_ND = space.to_z(y_ND)
    z_hat_ND, a_NF = reconstruct(sae, z_ND, chunk=chunk)
    z_hat_ND, a_NF = z_hat_ND.cpu(), a_NF.cpu()
    y_hat_ND = space.to_y(z_hat_ND)
    logits_NO, labels_N = logits_NO.float().cpu(), labels_N.long().cpu()
    out = metrics.fidelity(y_ND, y_hat_ND, labels_N, logits_NO, to_logits, space.y_mean_D,
                           z_ND=z_ND if space.normalize else None, z_hat_ND=z_hat_ND if space.normalize else None,
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


def _cell(m: dict, key: str, scale: float = 1.0) -> str:
    """m[key] * scale with 4 decimals, "+- half-width" when m has key_ci95 (mnist_sae.stats)."""
    text = f"{scale * m[key]:.4f}"
    if m.get(f"{key}_ci95") is not None:
        text += f" +- {scale * m[key + '_ci95']:.4f}"
    return text


def reconstruction_table(by_split: dict, tablefmt: str = "github") -> str:
    """Reconstruction error by split: normalized and raw MSE, explained variance, L0, per-example
    MSE median and p95 (mean +- 95% half-width over seeds where the split has _ci95 keys)."""
    headers = ["split", "MSE (normalized)", "MSE (raw)", "explained variance", "L0",
               "per-example MSE median", "per-example MSE p95"]
    keys = ("mse_norm", "mse_raw", "explained_variance", "l0", "mse_ex_median", "mse_ex_p95")
    rows = [[s] + [_cell(m, k) for k in keys] for s, m in by_split.items()]
    return tabulate(rows, headers, tablefmt=tablefmt, disable_numparse=True)


def ce_accuracy_table(by_split: dict, tablefmt: str = "github") -> str:
    """CE and accuracy by split: the FFN's own vs with the reconstruction spliced in."""
    headers = ["split", "CE", "CE recon", "delta CE", "CE recovered", "accuracy %", "accuracy recon %",
               "delta acc (pp)", "agreement %"]
    cols = (("ce_orig", 1), ("ce_recon", 1), ("ce_increase", 1), ("ce_recovered", 1), ("acc_orig", 100),
            ("acc_recon", 100), ("acc_drop_pp", 1), ("agreement", 100))
    rows = [[s] + [_cell(m, k, scale) for k, scale in cols] for s, m in by_split.items()]
    return tabulate(rows, headers, tablefmt=tablefmt, disable_numparse=True)


# (key in metrics.core_metrics, column header, format) of the core table, in SAEBench's order
CORE_COLUMNS = (("explained_variance", "EV", ".4f"), ("mse", "MSE", ".4g"), ("cosine_similarity", "cosine", ".4f"),
                ("l2_ratio", "L2 ratio", ".4f"), ("relative_reconstruction_bias", "rel. bias", ".4f"),
                ("l0", "L0", ".3f"), ("l1", "L1", ".4g"), ("alive_fraction", "alive", ".3f"),
                ("freq_over_1_percent", "> 1%", ".3f"), ("freq_over_10_percent", "> 10%", ".3f"),
                ("ce_loss_score", "CE score", ".4f"), ("kl_div_score", "KL score", ".4f"))


def core_table(by_row: dict, label: str = "split", tablefmt: str = "github") -> str:
    """SAEBench core metrics (metrics.core_metrics), one row per entry of by_row {label: core dict};
    a key some dicts lack (no head, no codes) or an undefined number shows as n/a, a key all of
    them lack is left out (the head-free subset has no CE / KL score columns)."""
    def cell(core, key, spec):  # mean, and "+- half-width" where the dict has key_ci95 (seeds)
        v, hw = core.get(key), core.get(f"{key}_ci95")
        if v is None or v != v:
            return "n/a"
        return format(v, spec) + ("" if hw is None else f" +- {format(hw, spec)}")
    cols = [c for c in CORE_COLUMNS if any(c[0] in core for core in by_row.values())]
    rows = [[name] + [cell(core, key, spec) for key, _, spec in cols] for name, core in by_row.items()]
    return tabulate(rows, [label] + [h for _, h, _ in cols], tablefmt=tablefmt, disable_numparse=True)


CORE_NOTE = ("EV = 1 - SSE/SST about the split's per-dimension mean; cosine and L2 ratio averaged over rows; rel. "
             "bias = sum ||x_hat||^2 / sum <x_hat, x>; L1 = mean sum |a|; alive / > 1% / > 10% = share of latents "
             "firing on more than 0 / 1% / 10% of the rows; CE score = (CE_zero - CE_sae) / (CE_zero - CE_clean), KL "
             "score = (KL_zero - KL_sae) / KL_zero, zero = the site's activations replaced by zeros "
             "(mnist_sae.metrics.core_metrics, SAEBench core eval).")


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
        "ablation = the train mean.\n\n"
        "## Core metrics by split (SAEBench)\n\n" + core_table({k: m["core"] for k, m in by_split.items()}) + "\n\n"
        "In the FFN's units at the site. " + CORE_NOTE + " At the logit site zero ablation is the raw logits 0 (a "
        "uniform softmax); at the hidden site the FFN head of a zero hidden layer.\n"
    )
