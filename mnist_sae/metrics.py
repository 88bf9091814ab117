"""Every metric, defined once. Training logs, evaluate and baselines import from here.

Each function is pure (tensors in, float or tensor out) and its docstring states the formula and
how it averages. Sums and means run in float64 so a 48k-example split gives the same digits
whichever order the chunks come in.

Notation (shape key: mnist_sae/__init__.py; input space: mnist_sae/space.py): y_ND the FFN's activations at the SAE's site (the logits, or the
hidden layer); z_ND = (y - mu) / sigma with the train split's per-dimension mean and std when the
site is normalized, else z = y; z_hat_ND the reconstruction; y_hat_ND = z_hat * sigma + mu; a_NF the
latent codes. `fidelity` bundles the metrics of one split into one flat dict, so the SAE and every
baseline method (PCA, k-means, random directions...) are scored by the same code; `core_metrics`
is SAEBench's core set (reconstruction, sparsity, CE / KL scores against zero ablation), reported
under the key "core" by every place an SAE is evaluated (evaluate, baselines, acts_eval, truth).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F


def cross_entropy(logits_NO: torch.Tensor, labels_N: torch.Tensor) -> float:
    """CE = mean over examples of -log softmax(logits)[label] (natural log)."""
    return F.cross_entropy(logits_NO.double(), labels_N.long()).item()


def accuracy(logits_NO: torch.Tensor, labels_N: torch.Tensor) -> float:
    """Accuracy = mean over examples of 1[argmax logits == label], a fraction in [0, 1]."""
    return (logits_NO.argmax(dim=1) == labels_N.long()).double().mean().item()


def agreement(logits_a_NO: torch.Tensor, logits_b_NO: torch.Tensor) -> float:
    """Agreement = mean over examples of 1[argmax a == argmax b]: how often the reconstruction
    keeps the FFN's decision, right or wrong."""
    return (logits_a_NO.argmax(dim=1) == logits_b_NO.argmax(dim=1)).double().mean().item()


def kl_divergence(logits_p_NO: torch.Tensor, logits_q_NO: torch.Tensor) -> float:
    """KL = mean over examples of sum_o p_o (log p_o - log q_o), p = softmax(logits_p),
    q = softmax(logits_q) (natural log): the information about the decision the reconstruction
    loses (the end-to-end SAE criterion, Braun et al. 2024)."""
    logp_NO = F.log_softmax(logits_p_NO.double(), dim=1)
    logq_NO = F.log_softmax(logits_q_NO.double(), dim=1)
    return (logp_NO.exp() * (logp_NO - logq_NO)).sum(dim=1).mean().item()


# --- reconstruction error -------------------------------------------------------------------


def mse_per_example(target_ND: torch.Tensor, recon_ND: torch.Tensor) -> torch.Tensor:
    """mse_N[n] = mean over dims d of (target[n, d] - recon[n, d])^2, float64."""
    if target_ND.shape != recon_ND.shape or target_ND.ndim != 2:
        raise ValueError(f"expected two [N, D] tensors of one shape, got {tuple(target_ND.shape)} and {tuple(recon_ND.shape)}")
    return (target_ND.double() - recon_ND.double()).pow(2).mean(dim=1)


def mse(target_ND: torch.Tensor, recon_ND: torch.Tensor) -> float:
    """MSE = mean over examples and dims of (target - recon)^2. With target z (normalized space)
    this is the normalized MSE; with y (the FFN's own units) the raw MSE."""
    return mse_per_example(target_ND, recon_ND).mean().item()


def explained_variance(y_ND: torch.Tensor, y_hat_ND: torch.Tensor) -> float:
    """EV = 1 - sum_n ||y_n - y_hat_n||^2 / sum_n ||y_n - mean(y)||^2, mean(y) over this split's
    examples (variance about the mean, in the FFN's units). 1 is perfect, 0 is as good as
    predicting the mean, < 0 worse."""
    y_ND, y_hat_ND = y_ND.double(), y_hat_ND.double()
    residual = (y_ND - y_hat_ND).pow(2).sum()
    total = (y_ND - y_ND.mean(dim=0)).pow(2).sum()
    return (1.0 - residual / total).item()


def per_example_summary(err_N: torch.Tensor) -> dict:
    """Summary of per-example errors: mean, median, p95 (linear interpolation between order
    statistics, numpy's default), best and worst example index (first one on ties)."""
    err_N = err_N.double()
    return {
        "mean": err_N.mean().item(),
        "median": torch.quantile(err_N, 0.5).item(),
        "p95": torch.quantile(err_N, 0.95).item(),
        "best_index": int(err_N.argmin().item()),
        "worst_index": int(err_N.argmax().item()),
    }


def ce_recovered(ce_orig: float, ce_recon: float, ce_ablate: float) -> float:
    """CE recovered = (CE_ablate - CE_recon) / (CE_ablate - CE_orig): 1 when splicing the
    reconstruction in costs nothing, 0 when it is as bad as replacing the site by the ablation
    (the train mean), NaN when the ablation itself costs nothing (CE_ablate == CE_orig)."""
    denom = ce_ablate - ce_orig
    return (ce_ablate - ce_recon) / denom if denom != 0 else float("nan")


def kl_div_score(kl_sae: float, kl_ablate: float) -> float:
    """KL-divergence score = (KL_ablate - KL_sae) / KL_ablate, KL_x = KL(clean || model with the
    site replaced by x) (SAEBench core eval "kl_div_score", Karvonen et al. 2025): 1 when the
    reconstruction keeps the clean distribution, 0 when it is as bad as the ablation, NaN when the
    ablation changes nothing (KL_ablate == 0)."""
    return (kl_ablate - kl_sae) / kl_ablate if kl_ablate != 0 else float("nan")


def ablation_logits(to_logits: Callable[[torch.Tensor], torch.Tensor], ablation_D: torch.Tensor, n: int) -> torch.Tensor:
    """logits_NO of the model with the site's activations replaced by the constant ablation_D on
    every one of n examples: to_logits(ablation_D) repeated. Mean ablation passes the train mean,
    zero ablation (SAEBench / SAELens) zeros: at the logit site that is the raw logits 0, a uniform
    softmax; at the hidden site the FFN head of a zero hidden layer (its output bias)."""
    return to_logits(ablation_D.float()[None, :]).expand(n, -1)


# --- sparsity -------------------------------------------------------------------------------


def l0_per_example(a_NF: torch.Tensor) -> torch.Tensor:
    """l0_N[n] = number of latents f with a[n, f] != 0 (the hard gate count), int64."""
    return (a_NF != 0).sum(dim=1)


def l0(a_NF: torch.Tensor) -> float:
    """L0 = mean over examples of the number of non-zero latents."""
    return l0_per_example(a_NF).double().mean().item()


def l1(a_NF: torch.Tensor) -> float:
    """L1 = mean over examples of sum_f |a[n, f]| (SAEBench core "l1")."""
    return a_NF.double().abs().sum(dim=1).mean().item()


def l0_histogram(a_NF: torch.Tensor) -> torch.Tensor:
    """counts_K[k] = number of examples with exactly k non-zero latents, k = 0..F (int64)."""
    return torch.bincount(l0_per_example(a_NF), minlength=a_NF.shape[1] + 1)


def latent_frequency(a_NF: torch.Tensor) -> torch.Tensor:
    """freq_F[f] = fraction of examples on which latent f is non-zero, float64."""
    return (a_NF != 0).double().mean(dim=0)


def dead_fraction(freq_F: torch.Tensor) -> float:
    """Dead = fraction of latents never active (freq == 0); counted on the train split, as the original study did."""
    return (freq_F == 0).double().mean().item()


def alive_fraction(freq_F: torch.Tensor) -> float:
    """Alive = fraction of latents active at least once (freq > 0) = 1 - dead_fraction (SAEBench
    core "frac_alive")."""
    return (freq_F > 0).double().mean().item()


def dense_fraction(freq_F: torch.Tensor, threshold: float = 0.1) -> float:
    """Dense = fraction of latents active on more than `threshold` of the examples (freq > 0.1)."""
    return (freq_F > threshold).double().mean().item()


def calibration_error(l0_val: float, target_l0: float) -> float:
    """Calibration error = |L0_val - target| / target: how far lambda calibration missed."""
    if target_l0 <= 0:
        raise ValueError(f"target_l0 must be > 0, got {target_l0}")
    return abs(l0_val - target_l0) / target_l0


# --- all of one split -----------------------------------------------------------------------


@torch.no_grad()
def fidelity(y_ND: torch.Tensor, y_hat_ND: torch.Tensor, labels_N: torch.Tensor, logits_NO: torch.Tensor,
             to_logits: Callable[[torch.Tensor], torch.Tensor], ablation_D: torch.Tensor, *,
             z_ND: torch.Tensor | None = None, z_hat_ND: torch.Tensor | None = None,
             a_NF: torch.Tensor | None = None, dense_threshold: float = 0.1, chunk: int = 8192) -> dict:
    """Every fidelity metric of one split as a flat dict of numbers, plus the nested "core" dict.

    y_ND, y_hat_ND   the site's activations and their reconstruction, in the FFN's units
    labels_N         true classes
    logits_NO        the FFN's own logits (== y_ND at the logit site)
    to_logits        maps site activations [B, D] to logits [B, O]: identity at the logit site,
                     the FFN head at the hidden site (applied in chunks of `chunk` rows)
    ablation_D       the mean-ablation vector (train mean of y) for CE recovered
    z_ND, z_hat_ND   normalized-space input and reconstruction; None = not normalized (z = y)
    a_NF             latent codes, or None for a method without latents (then no sparsity keys)

    Keys: acc_orig, acc_recon (fractions), acc_drop_pp = 100 (acc_orig - acc_recon);
    ce_orig, ce_recon, ce_increase = ce_recon - ce_orig, ce_ablate, ce_recovered; agreement;
    kl = KL(softmax(logits) || softmax(to_logits(y_hat))); mse_norm (z space), mse_raw (y space),
    explained_variance (y space); mse_ex_{mean,median,p95,best_index,worst_index} (per-example
    MSE in z space); with a_NF: l0, l0_max, dead_fraction and dense_fraction (on this split);
    core: `core_metrics` in y space, its zero ablation = to_logits of a zero site (the raw logits
    0 at the logit site, the head of a zero hidden layer at the hidden site).
    """
    n, d = y_ND.shape
    if y_hat_ND.shape != (n, d) or labels_N.shape != (n,) or logits_NO.shape[0] != n or ablation_D.shape != (d,):
        raise ValueError(f"fidelity: shapes disagree: y {tuple(y_ND.shape)}, y_hat {tuple(y_hat_ND.shape)}, "
                         f"labels {tuple(labels_N.shape)}, logits {tuple(logits_NO.shape)}, ablation {tuple(ablation_D.shape)}")
    if (z_ND is None) != (z_hat_ND is None):
        raise ValueError("fidelity: pass both z_ND and z_hat_ND, or neither")
    if z_ND is None:
        z_ND, z_hat_ND = y_ND, y_hat_ND
    recon_logits_NO = torch.cat([to_logits(y_hat_ND[i:i + chunk].float()) for i in range(0, n, chunk)])
    ablate_logits_NO = ablation_logits(to_logits, ablation_D, n)

    out = {
        "acc_orig": accuracy(logits_NO, labels_N),
        "acc_recon": accuracy(recon_logits_NO, labels_N),
        "ce_orig": cross_entropy(logits_NO, labels_N),
        "ce_recon": cross_entropy(recon_logits_NO, labels_N),
        "ce_ablate": cross_entropy(ablate_logits_NO, labels_N),
        "agreement": agreement(logits_NO, recon_logits_NO),
        "kl": kl_divergence(logits_NO, recon_logits_NO),
        "mse_raw": mse(y_ND, y_hat_ND),
        "explained_variance": explained_variance(y_ND, y_hat_ND),
    }
    out["core"] = core_metrics(y_ND, y_hat_ND, a_NF, labels_E=labels_N, logits_clean_EO=logits_NO,
                               logits_sae_EO=recon_logits_NO,
                               logits_zero_EO=ablation_logits(to_logits, torch.zeros_like(ablation_D), n))
    out["acc_drop_pp"] = 100.0 * (out["acc_orig"] - out["acc_recon"])
    out["ce_increase"] = out["ce_recon"] - out["ce_orig"]
    out["ce_recovered"] = ce_recovered(out["ce_orig"], out["ce_recon"], out["ce_ablate"])
    mse_N = mse_per_example(z_ND, z_hat_ND)
    out["mse_norm"] = mse_N.mean().item()
    out.update({f"mse_ex_{k}": v for k, v in per_example_summary(mse_N).items()})
    if a_NF is not None:
        if a_NF.shape[0] != n:
            raise ValueError(f"fidelity: codes have {a_NF.shape[0]} rows, activations {n}")
        l0_N = l0_per_example(a_NF)
        freq_F = latent_frequency(a_NF)
        out["l0"] = l0_N.double().mean().item()
        out["l0_max"] = int(l0_N.max().item())
        out["dead_fraction"] = dead_fraction(freq_F)
        out["dense_fraction"] = dense_fraction(freq_F, dense_threshold)
    return dict(sorted(out.items()))


# --- monosemanticity and decoder geometry -----------------------------------------------------
# Purity asks whether a latent means one thing: of the examples it fires on, how many share one
# label. The decoder-geometry functions ask how the dictionary packs F directions into D
# dimensions (superposition: Elhage et al. 2022, "Toy Models of Superposition").


def _purity_from_indices(idx_nF: torch.Tensor, keep_nF: torch.Tensor, labels_N: torch.Tensor, n_classes: int) -> torch.Tensor:
    """purity_F[f] = max_c #{kept n : labels[idx[n, f]] == c} / #{kept n}; NaN where none kept."""
    onehot_nFC = F.one_hot(labels_N.long()[idx_nF], n_classes).double() * keep_nF[..., None]
    return label_purity(onehot_nFC.sum(dim=0))


def _check_nonnegative(a_NF: torch.Tensor, labels_N: torch.Tensor, name: str) -> None:
    if a_NF.ndim != 2 or labels_N.shape != (a_NF.shape[0],):
        raise ValueError(f"{name}: expected a [N, F] and labels [N], got {tuple(a_NF.shape)} and {tuple(labels_N.shape)}")
    if a_NF.numel() and a_NF.min() < 0:
        raise ValueError(f"{name}: activations must be >= 0 (split signed codes into [relu(a), relu(-a)] first)")


def top_activation_purity(a_NF: torch.Tensor, labels_N: torch.Tensor, n_top: int, n_classes: int = 10) -> torch.Tensor:
    """Label purity of each latent's top-activating examples, purity_F (float64).

    S_f = the n_top examples with the largest a[:, f] among those with a[n, f] > 0 (fewer if
    fewer fire; ties go to the lower example index); purity_f = max_c |{n in S_f : y_n = c}| / |S_f|,
    in [1/C, 1]. NaN for a latent that never fires (average over live latents with `live_mean`).
    a_NF must be non-negative.
    """
    _check_nonnegative(a_NF, labels_N, "top_activation_purity")
    n = min(n_top, a_NF.shape[0])
    # a stable descending sort makes ties (binary codes such as k-means) pick the lowest indices
    vals_NF, idx_NF = torch.sort(a_NF, dim=0, descending=True, stable=True)
    return _purity_from_indices(idx_NF[:n], vals_NF[:n] > 0, labels_N, n_classes)


def sampled_activation_purity(a_NF: torch.Tensor, labels_N: torch.Tensor, n_sample: int,
                              generator: torch.Generator, n_classes: int = 10) -> torch.Tensor:
    """Label purity of a uniform sample of each latent's activating examples, purity_F (float64).

    S_f = n_sample examples drawn uniformly without replacement from {n : a[n, f] > 0} (all of
    them if fewer fire); purity_f = max_c |{n in S_f : y_n = c}| / |S_f|; NaN if f never fires.
    Unlike the top-activation purity this looks at the latent's typical use, not its extremes.
    """
    _check_nonnegative(a_NF, labels_N, "sampled_activation_purity")
    n = min(n_sample, a_NF.shape[0])
    # the n largest of i.i.d. uniform keys over the active set are a uniform sample of it
    keys_NF = torch.rand(a_NF.shape, generator=generator, dtype=torch.float64)
    keys_NF = torch.where(a_NF > 0, keys_NF, -1.0)
    vals_nF, idx_nF = keys_NF.topk(n, dim=0)
    return _purity_from_indices(idx_nF, vals_nF >= 0, labels_N, n_classes)


def live_mean(values_F: torch.Tensor) -> float:
    """Mean over live latents: the mean of the non-NaN entries (NaN marks a latent that never fires)."""
    live_F = ~torch.isnan(values_F)
    return values_F[live_F].double().mean().item() if live_F.any() else float("nan")


def nonzero_magnitudes(a_NF: torch.Tensor) -> torch.Tensor:
    """|a[n, f]| over all (n, f) with a[n, f] != 0, flattened (float64): the activation-size law."""
    return a_NF[a_NF != 0].abs().double()


def magnitude_summary(values_M: torch.Tensor) -> dict:
    """mean, p05, p50, p95 of a 1-d sample (numpy's linear quantiles) and its size n; NaN if empty."""
    if values_M.numel() == 0:
        return {"n": 0, "mean": float("nan"), "p05": float("nan"), "p50": float("nan"), "p95": float("nan")}
    q_Q = torch.quantile(values_M.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"n": int(values_M.numel()), "mean": values_M.double().mean().item(),
            "p05": q_Q[0].item(), "p50": q_Q[1].item(), "p95": q_Q[2].item()}


def pairwise_cosine_similarities(W_FD: torch.Tensor) -> torch.Tensor:
    """cos_P = <w_i, w_j> / (||w_i|| ||w_j||) for every pair i < j of decoder rows (float64,
    P = F (F - 1) / 2, row-major upper triangle). A zero row counts as cosine 0 with everything."""
    W_FD = W_FD.double()
    U_FD = W_FD / W_FD.norm(dim=1, keepdim=True).clamp(min=1e-12)
    i_P, j_P = torch.triu_indices(W_FD.shape[0], W_FD.shape[0], offset=1)
    return (U_FD @ U_FD.T)[i_P, j_P]


def welch_bound(n_vectors: int, d: int) -> float:
    """Lower bound on max_{i != j} |cos(w_i, w_j)| for n unit vectors in R^d (Welch 1974):
    sqrt((n - d) / (d (n - 1))) when n > d, else 0 (n <= d vectors can be orthogonal). How
    much interference superposition forces on any dictionary of that size."""
    return ((n_vectors - d) / (d * (n_vectors - 1))) ** 0.5 if n_vectors > d else 0.0


def relative_reconstruction_bias(x_ND: torch.Tensor, x_hat_ND: torch.Tensor) -> float:
    """gamma = argmin_g E ||x_hat / g - x||^2 = sum ||x_hat||^2 / sum <x_hat, x> (Rajamanoharan
    et al. 2024, "Improving Dictionary Learning with Gated SAEs", sec. 5). gamma < 1: the
    reconstruction is shrunk towards the origin (the L1 penalty's bias); 1: unbiased in scale.
    Pass centred x and x_hat (minus the train mean) so the mean does not mask the shrinkage."""
    x_ND, x_hat_ND = x_ND.double(), x_hat_ND.double()
    return (x_hat_ND.pow(2).sum() / (x_hat_ND * x_ND).sum()).item()


# --- label purity from a label histogram ------------------------------------------------------


def label_purity(counts_FC: torch.Tensor) -> torch.Tensor:
    """purity_F[f] = max_c counts[f, c] / sum_c counts[f, c] (float64), counts[f, c] = number of
    examples with label c that latent f fires on, all of them (sampled_activation_purity without
    the sampling). NaN for a latent that never fires (average over live latents with `live_mean`)."""
    counts_FC = counts_FC.double()
    total_F = counts_FC.sum(dim=1)
    return torch.where(total_F > 0, counts_FC.max(dim=1).values / total_F.clamp(min=1), torch.nan)


def pooled_label_purity(counts_FC: torch.Tensor) -> float:
    """sum_f max_c counts[f, c] / sum_{f, c} counts[f, c]: of all (example, active latent) pairs,
    the share whose label is the firing latent's most common label (label_purity weighted by how
    often each latent fires). NaN if nothing fires."""
    counts_FC = counts_FC.double()
    total = counts_FC.sum()
    return (counts_FC.max(dim=1).values.sum() / total).item() if total > 0 else float("nan")


# --- no-head reconstruction metrics (activation caches) ---------------------------------------
# SAEBench core metrics (Karvonen et al. 2025, arXiv:2503.09532, "core" eval: cossim, l2_ratio,
# explained variance, relative reconstruction bias) for sites with no classifier head.


def cosine_similarity(x_ND: torch.Tensor, x_hat_ND: torch.Tensor) -> float:
    """Mean over rows of <x_n, x_hat_n> / (||x_n|| ||x_hat_n||) (SAEBench core "cossim"); a zero
    row counts as cosine 0."""
    x_ND, x_hat_ND = x_ND.double(), x_hat_ND.double()
    den_N = (x_ND.norm(dim=1) * x_hat_ND.norm(dim=1)).clamp(min=1e-12)
    return ((x_ND * x_hat_ND).sum(dim=1) / den_N).mean().item()


def l2_ratio(x_ND: torch.Tensor, x_hat_ND: torch.Tensor) -> float:
    """Mean over rows of ||x_hat_n|| / ||x_n|| (SAEBench core "l2_ratio"): < 1 means the
    reconstruction is shrunk; rows with x = 0 are skipped."""
    x_ND, x_hat_ND = x_ND.double(), x_hat_ND.double()
    n_N = x_ND.norm(dim=1)
    keep_N = n_N > 0
    return (x_hat_ND.norm(dim=1)[keep_N] / n_N[keep_N]).mean().item()


def reconstruction(x_ND: torch.Tensor, x_hat_ND: torch.Tensor, z_ND: torch.Tensor, z_hat_ND: torch.Tensor,
                   a_NF: torch.Tensor, centre_D: torch.Tensor, dense_threshold: float = 0.1) -> dict:
    """The no-head metrics of one split, x in the source's units, z the SAE's (standardized) input:

    mse (x units), mse_norm (z space), explained_variance (x, about this split's mean, 1 - SSE/SST,
    SAEBench's definition), cosine_similarity, l2_ratio (x), relative_reconstruction_bias (x and
    x_hat centred by centre_D, the train mean), l0, dead_fraction and dense_fraction (this split).
    """
    freq_F = latent_frequency(a_NF)
    return {"mse": mse(x_ND, x_hat_ND), "mse_norm": mse(z_ND, z_hat_ND),
            "explained_variance": explained_variance(x_ND, x_hat_ND),
            "cosine_similarity": cosine_similarity(x_ND, x_hat_ND), "l2_ratio": l2_ratio(x_ND, x_hat_ND),
            "relative_reconstruction_bias": relative_reconstruction_bias(x_ND - centre_D, x_hat_ND - centre_D),
            "l0": l0(a_NF), "dead_fraction": dead_fraction(freq_F),
            "dense_fraction": dense_fraction(freq_F, dense_threshold)}


# --- SAEBench core metrics: one set, one function, every caller ----------------------------------
# SAEBench's "core" eval (Karvonen et al. 2025, arXiv:2503.09532; sae_bench/evals/core/main.py)
# and SAELens's evals.py (get_sparsity_and_variance_metrics, get_recons_loss) report these for
# every SAE. Unlike SAELens, explained variance here is about the per-dimension mean: SAELens
# issue #659 (PRs #665, #710) found its total variance taken about zero (E||x||^2 instead of
# E||x - E x||^2), which inflates EV towards 1 on activations with a large mean.

CORE_KEYS = ("explained_variance", "mse", "cosine_similarity", "l2_ratio", "relative_reconstruction_bias")
CORE_SPARSITY_KEYS = ("l0", "l1", "alive_fraction", "freq_over_1_percent", "freq_over_10_percent")
CORE_DOWNSTREAM_KEYS = ("ce_loss_score", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation",
                        "kl_div_score", "kl_div_with_sae", "kl_div_with_ablation")


@torch.no_grad()
def core_metrics(x_ND: torch.Tensor, x_hat_ND: torch.Tensor, a_NF: torch.Tensor | None = None, *,
                 labels_E: torch.Tensor | None = None, logits_clean_EO: torch.Tensor | None = None,
                 logits_sae_EO: torch.Tensor | None = None, logits_zero_EO: torch.Tensor | None = None) -> dict:
    """SAEBench's core metrics of one SAE on one split as a flat dict, the same keys everywhere.

    x_ND, x_hat_ND   the site's activations and the reconstruction, in the model's units (rows N)
    a_NF             latent codes (None for a method without latents: no sparsity keys)
    labels_E, logits_*_EO   with a downstream head: the true labels and the logits of the clean
                     model, of the model with x_hat spliced in, and with the site zero-ablated, on
                     examples E (E = N when a row is an example; the examples whose tokens are the
                     rows for a transformer). All four or none (then no downstream keys).

    Reconstruction (pooled over every row and dimension of the split):
      explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean_n(x)||^2 (explained_variance)
      mse = mean over rows and dims of (x - x_hat)^2 (mse)
      cosine_similarity = mean over rows of cos(x_n, x_hat_n) (cosine_similarity)
      l2_ratio = mean over rows of ||x_hat_n|| / ||x_n|| (l2_ratio)
      relative_reconstruction_bias = sum ||x_hat||^2 / sum <x_hat, x>, uncentred as in SAEBench
    Sparsity (over this split's rows):
      l0 = mean #{f : a_nf != 0}; l1 = mean sum_f |a_nf|; alive_fraction = share of latents active
      at least once; freq_over_1_percent / freq_over_10_percent = share of latents active on more
      than 1% / 10% of rows (dense_fraction at 0.01 and 0.1)
    Downstream (mean over examples; CE against the true labels, KL against the clean model):
      ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean) (ce_recovered with zero ablation)
      kl_div_score = (KL_zero - KL_sae) / KL_zero, KL_x = KL(softmax(clean) || softmax(x))
      and the parts: ce_loss_with_sae, ce_loss_without_sae (clean), ce_loss_with_ablation,
      kl_div_with_sae, kl_div_with_ablation (SAEBench's names).
    """
    if x_ND.ndim != 2 or x_hat_ND.shape != x_ND.shape:
        raise ValueError(f"core_metrics: expected two [N, D] tensors of one shape, got {tuple(x_ND.shape)} and "
                         f"{tuple(x_hat_ND.shape)}")
    out = {"explained_variance": explained_variance(x_ND, x_hat_ND), "mse": mse(x_ND, x_hat_ND),
           "cosine_similarity": cosine_similarity(x_ND, x_hat_ND), "l2_ratio": l2_ratio(x_ND, x_hat_ND),
           "relative_reconstruction_bias": relative_reconstruction_bias(x_ND, x_hat_ND)}
    if a_NF is not None:
        if a_NF.ndim != 2 or a_NF.shape[0] != x_ND.shape[0]:
            raise ValueError(f"core_metrics: codes {tuple(a_NF.shape)} do not match {x_ND.shape[0]} rows")
        freq_F = latent_frequency(a_NF)
        out.update({"l0": l0(a_NF), "l1": l1(a_NF), "alive_fraction": alive_fraction(freq_F),
                    "freq_over_1_percent": dense_fraction(freq_F, 0.01),
                    "freq_over_10_percent": dense_fraction(freq_F, 0.1)})
    given = [t is not None for t in (labels_E, logits_clean_EO, logits_sae_EO, logits_zero_EO)]
    if any(given) and not all(given):
        raise ValueError("core_metrics: pass labels_E and all three logits (clean, sae, zero), or none")
    if all(given):
        if not (logits_clean_EO.shape == logits_sae_EO.shape == logits_zero_EO.shape) or \
                labels_E.shape != (logits_clean_EO.shape[0],):
            raise ValueError(f"core_metrics: logits {tuple(logits_clean_EO.shape)}, {tuple(logits_sae_EO.shape)}, "
                             f"{tuple(logits_zero_EO.shape)} and labels {tuple(labels_E.shape)} disagree")
        ce_clean, ce_sae, ce_zero = (cross_entropy(t, labels_E) for t in (logits_clean_EO, logits_sae_EO, logits_zero_EO))
        kl_sae, kl_zero = kl_divergence(logits_clean_EO, logits_sae_EO), kl_divergence(logits_clean_EO, logits_zero_EO)
        out.update({"ce_loss_score": ce_recovered(ce_clean, ce_sae, ce_zero), "ce_loss_with_sae": ce_sae,
                    "ce_loss_without_sae": ce_clean, "ce_loss_with_ablation": ce_zero,
                    "kl_div_score": kl_div_score(kl_sae, kl_zero), "kl_div_with_sae": kl_sae,
                    "kl_div_with_ablation": kl_zero})
    return out


def per_class_prf(y_true_N, y_pred_N, n_classes: int) -> dict:
    """Per class c = 0..n_classes-1: precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2 P R / (P + R), support = #{y_true = c} (scikit-learn's precision_recall_fscore_support,
    zero_division 0, i.e. the numbers of its classification_report); plus accuracy and the
    macro averages (unweighted mean over classes)."""
    import numpy as np
    from sklearn.metrics import precision_recall_fscore_support

    y_true_N, y_pred_N = np.asarray(y_true_N), np.asarray(y_pred_N)
    p_C, r_C, f_C, s_C = precision_recall_fscore_support(y_true_N, y_pred_N, labels=list(range(n_classes)),
                                                         zero_division=0)
    return {"accuracy": float((y_true_N == y_pred_N).mean()), "precision": p_C.tolist(), "recall": r_C.tolist(),
            "f1": f_C.tolist(), "support": s_C.tolist(), "macro_precision": float(p_C.mean()),
            "macro_recall": float(r_C.mean()), "macro_f1": float(f_C.mean())}
