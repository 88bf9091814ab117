"""Ground-truth metrics: how well a learned dictionary matches planted features (mnist_sae.planted).

Inputs: decoder rows W_dec_FD (F learned latents; need not be unit norm), true unit directions
W_true_TD (T planted features), and for the firing metrics the codes a_NF and the true codes c_NT
on the same rows. Cosines are absolute: a latent pointing along -d_t has found d_t (signed
dictionaries such as PCA code it with a negative coefficient).

    C_FT = |cos(w_f, d_t)|

Each metric is one function whose docstring gives its formula and source; `truth_scores` computes
all of them from one matching.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

RECOVERED_COSINE = 0.9  # a true feature counts as recovered when its matched |cos| >= this


def abs_cosines(W_dec_FD: np.ndarray, W_true_TD: np.ndarray) -> np.ndarray:
    """C_FT = |<w_f, d_t>| / (||w_f|| ||d_t||), float64 (a zero row gives cosines 0)."""
    W_dec_FD, W_true_TD = np.asarray(W_dec_FD, np.float64), np.asarray(W_true_TD, np.float64)
    if W_dec_FD.ndim != 2 or W_true_TD.ndim != 2 or W_dec_FD.shape[1] != W_true_TD.shape[1]:
        raise ValueError(f"abs_cosines: expected [F, D] and [T, D], got {W_dec_FD.shape}, {W_true_TD.shape}")
    a_FD = W_dec_FD / np.maximum(np.linalg.norm(W_dec_FD, axis=1, keepdims=True), 1e-12)
    b_TD = W_true_TD / np.maximum(np.linalg.norm(W_true_TD, axis=1, keepdims=True), 1e-12)
    return np.abs(a_FD @ b_TD.T)


def mmcs(C_FT: np.ndarray) -> float:
    """Mean max cosine similarity (Sharkey et al. 2022, "Taking features out of superposition"):
    MMCS = (1 / T) sum_t max_f C_ft, the mean over true features of the best |cos| any latent has
    with it (several true features may share one latent)."""
    return float(C_FT.max(0).mean())


def hungarian_match(C_FT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f_P, t_P): the one-to-one matching of latents to true features maximising sum C_ft
    (scipy.optimize.linear_sum_assignment), P = min(F, T) pairs, sorted by t."""
    f_P, t_P = linear_sum_assignment(C_FT, maximize=True)
    order = np.argsort(t_P)
    return f_P[order], t_P[order]


def mcc(C_FT: np.ndarray, f_P: np.ndarray, t_P: np.ndarray) -> float:
    """Mean correlation coefficient of the Hungarian matching: MCC = (1 / P) sum_p C_{f_p t_p},
    the mean |cos| over the P = min(F, T) matched pairs (as SynthSAEBench, Chanin & Garriga-Alonso
    2026, and SAELens's `mean_correlation_coefficient`). With F < T it averages over the F matched
    true features only; `recovered_fraction` divides by T."""
    return float(C_FT[f_P, t_P].mean())


def recovered_fraction(C_FT: np.ndarray, f_P: np.ndarray, t_P: np.ndarray, threshold: float = RECOVERED_COSINE) -> float:
    """(1 / T) #{matched pairs p: C_{f_p t_p} >= threshold}: true features found one-to-one by a
    latent within angle arccos(threshold) (0.9: about 26 degrees); unmatched features count as lost."""
    return float((C_FT[f_P, t_P] >= threshold).sum() / C_FT.shape[1])


def uniqueness(C_FT: np.ndarray, live_F: np.ndarray | None = None) -> float:
    """(1 / T) #{t : t = argmax_t' C_ft' for some live latent f}: how many distinct true features
    are some latent's best match (1 = every feature is some latent's favourite; duplicated latents
    lower it). live_F (bool) restricts to latents that fire; default all."""
    rows = C_FT if live_F is None else C_FT[np.asarray(live_F, bool)]
    return float(len(np.unique(rows.argmax(1))) / C_FT.shape[1]) if len(rows) else 0.0


def firing_prf(a_NF: np.ndarray, c_NT: np.ndarray, f_P: np.ndarray, t_P: np.ndarray) -> dict[str, np.ndarray]:
    """Per matched pair p, "latent f_p fires" (a != 0) against "feature t_p fires" (c != 0) over
    the N rows (as the per-latent classification scores of SynthSAEBench):

        precision_p = TP / (TP + FP),  recall_p = TP / (TP + FN),  F1_p = 2 TP / (2 TP + FP + FN)

    with 0 where a denominator is 0 (a latent that never fires has precision 0; a feature that
    never fires in these rows has recall 0). Returns {"precision_P", "recall_P", "f1_P"}."""
    if a_NF.shape[0] != c_NT.shape[0]:
        raise ValueError(f"firing_prf: codes {a_NF.shape} and true codes {c_NT.shape} cover different rows")
    on_NP, true_NP = np.asarray(a_NF)[:, f_P] != 0, np.asarray(c_NT)[:, t_P] != 0
    tp_P = (on_NP & true_NP).sum(0).astype(np.float64)
    fp_P, fn_P = (on_NP & ~true_NP).sum(0), (~on_NP & true_NP).sum(0)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return {"precision_P": ratio(tp_P, tp_P + fp_P), "recall_P": ratio(tp_P, tp_P + fn_P),
            "f1_P": ratio(2 * tp_P, 2 * tp_P + fp_P + fn_P)}


def truth_scores(W_dec_FD: np.ndarray, W_true_TD: np.ndarray, a_NF: np.ndarray | None = None,
                 c_NT: np.ndarray | None = None, threshold: float = RECOVERED_COSINE) -> dict[str, float]:
    """All ground-truth metrics of one dictionary from one Hungarian matching: mcc, mmcs,
    recovered, uniqueness (over live latents when codes are given), and with codes the means over
    matched pairs of precision, recall and F1 (precision, recall, f1)."""
    C_FT = abs_cosines(W_dec_FD, W_true_TD)
    f_P, t_P = hungarian_match(C_FT)
    live_F = None if a_NF is None else (np.asarray(a_NF) != 0).any(0)
    out = {"mcc": mcc(C_FT, f_P, t_P), "mmcs": mmcs(C_FT), "recovered": recovered_fraction(C_FT, f_P, t_P, threshold),
           "uniqueness": uniqueness(C_FT, live_F)}
    if a_NF is not None and c_NT is not None:
        out.update({k[:-2]: float(v.mean()) for k, v in firing_prf(a_NF, c_NT, f_P, t_P).items()})
    return out
