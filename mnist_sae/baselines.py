"""Is the SAE any good? Its reference class at matched sparsity k, scored by the same metrics.

Sections: the reference dictionaries (below); `SiteData` (one site's train/val/eval data);
`score` (one method at one k: metrics.fidelity + purity, activation and decoder-cosine
distributions, shrinkage, probe); the SAE family trained at each k with mnist_sae.sae_train;
`run_baselines` (everything); outputs (JSON, markdown with a generated reading, plot data, figures).

Every reference method here is a dictionary with a fixed encoder; all reconstruct the same way as an SAE,

    z_hat_ND = b_D + a_NF @ W_dec_FD

with b_D the train mean of z (the SAE's b_dec plays that role) and a_NF the codes, stored dense
with zeros where a latent is off, so that L0, dead fraction and every other metric in
mnist_sae/metrics.py apply to them unchanged.

- PCA:       W_dec = the top-k principal axes (orthonormal rows), a = (z - b) @ W_dec^T; dense
             in its k components, so L0 = k.
- k-means:   K centroids c_j fitted on train. Nearest centroid (vector quantisation, L0 = 1):
             a = one-hot(argmin_j ||z - c_j||), W_dec rows = c_j - b. Gain-shape (Gersho & Gray,
             "Vector Quantization and Signal Compression", 1992, ch. 12): the unit directions
             d_j = (c_j - b) / ||c_j - b|| with the encoder below; at k = 1 that is exactly
             "the centroid direction scaled by its best coefficient", argmax_j |<z - b, d_j>|.
- random:    F random unit directions (isotropic Gaussian, normalised), encoder below.
- class:     the C class-mean directions d_c = (mean(z | y = c) - b) / ||.||, a supervised probe
             dictionary, encoder below.

Top-k least-squares encoder (used by gain-shape k-means, random and class dictionaries): pick the
k atoms with the largest |<z - b, d_f>|, then the least-squares coefficients on those k atoms,
a_S = argmin_c ||(z - b) - c @ W_S||^2 (one step of thresholding plus an orthogonal projection,
the "one-shot" variant of orthogonal matching pursuit, Pati et al. 1993).

Signed codes: PCA, gain-shape, random and class codes can be negative. A signed atom d with
coefficient c is the same as two non-negative atoms d and -d, so monosemanticity (which ranks
examples by activation) sees them as 2F non-negative latents: `nonnegative_atoms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from mnist_sae import metrics
from mnist_sae.collect import to_y, to_z


@dataclass(frozen=True)
class Dictionary:
    """A dictionary with a fixed encoder: z_hat_ND = b_D + encode(z) @ W_dec_FD.

    encoder: "project" (a = (z - b) @ W_dec^T, for orthonormal rows: PCA), "nearest"
    (one-hot nearest row of b + W_dec: k-means) or "topk_lstsq" (top-k by |projection| on unit
    rows, least-squares coefficients; k atoms per example).
    signed: whether codes can be negative (see `nonnegative_atoms`).
    """

    W_dec_FD: torch.Tensor
    b_D: torch.Tensor
    encoder: str
    k: int
    signed: bool

    def __post_init__(self):
        if self.encoder not in ("project", "nearest", "topk_lstsq"):
            raise ValueError(f"Dictionary.encoder must be project, nearest or topk_lstsq, got {self.encoder!r}")
        if self.W_dec_FD.ndim != 2 or self.b_D.shape != (self.W_dec_FD.shape[1],):
            raise ValueError(f"Dictionary: expected W_dec [F, D] and b [D], got {tuple(self.W_dec_FD.shape)}, {tuple(self.b_D.shape)}")
        if self.encoder == "topk_lstsq" and not 1 <= self.k <= self.W_dec_FD.shape[0]:
            raise ValueError(f"Dictionary: k = {self.k} must be in 1..{self.W_dec_FD.shape[0]} (the number of atoms)")

    @property
    def n_latents(self) -> int:
        return self.W_dec_FD.shape[0]

    @torch.no_grad()
    def encode(self, z_ND: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Codes a_NF (zeros where an atom is off), computed in chunks of rows."""
        if z_ND.ndim != 2 or z_ND.shape[1] != self.W_dec_FD.shape[1]:
            raise ValueError(f"Dictionary.encode: expected z [N, {self.W_dec_FD.shape[1]}], got {tuple(z_ND.shape)}")
        parts = []
        for i in range(0, z_ND.shape[0], chunk):
            zc_BD = z_ND[i:i + chunk].float() - self.b_D
            if self.encoder == "project":
                parts.append(zc_BD @ self.W_dec_FD.T)
            elif self.encoder == "nearest":
                parts.append(nearest_one_hot(zc_BD, self.W_dec_FD))
            else:
                parts.append(topk_least_squares(zc_BD, self.W_dec_FD, self.k))
        return torch.cat(parts) if parts else z_ND.new_zeros(0, self.n_latents)

    def decode(self, a_NF: torch.Tensor) -> torch.Tensor:
        return self.b_D + a_NF @ self.W_dec_FD

    def reconstruct(self, z_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_hat_ND, a_NF), the same pair sae.reconstruct returns."""
        a_NF = self.encode(z_ND)
        return self.decode(a_NF), a_NF


# --- encoders ---------------------------------------------------------------------------------


def nearest_one_hot(zc_BD: torch.Tensor, C_FD: torch.Tensor) -> torch.Tensor:
    """a_BF = one-hot(argmin_f ||zc - c_f||^2); ties go to the lowest index."""
    # ||zc - c||^2 = ||zc||^2 - 2 <zc, c> + ||c||^2; the first term does not change the argmin
    dist_BF = (C_FD * C_FD).sum(1) - 2 * zc_BD @ C_FD.T
    return F.one_hot(dist_BF.argmin(1), C_FD.shape[0]).to(zc_BD.dtype)


def topk_least_squares(zc_BD: torch.Tensor, W_FD: torch.Tensor, k: int) -> torch.Tensor:
    """Select S = the k atoms with the largest |<zc, w_f>|, then a_S = argmin_c ||zc - c @ W_S||^2.

    Returns dense a_BF, zero outside S. The solve is batched least squares in float64 with the
    SVD-based driver where available, so collinear selected atoms still get the minimum-norm
    solution instead of a singular-matrix error.
    """
    proj_BF = zc_BD @ W_FD.T
    idx_BK = proj_BF.abs().topk(k, dim=1).indices
    W_BKD = W_FD[idx_BK].double()
    driver = "gelsd" if zc_BD.device.type == "cpu" else None
    coef_BK = torch.linalg.lstsq(W_BKD.transpose(1, 2), zc_BD.double().unsqueeze(2), driver=driver).solution.squeeze(2)
    a_BF = torch.zeros_like(proj_BF)
    return a_BF.scatter_(1, idx_BK, coef_BK.to(a_BF.dtype))


def nonnegative_atoms(a_NF: torch.Tensor, signed: bool) -> torch.Tensor:
    """Signed codes as non-negative latents: [relu(a), relu(-a)] (2F columns); unsigned as is.

    An atom d with a negative coefficient is the atom -d with a positive one; ranking examples
    by a signed activation would mix both ends of the axis, which are different features.
    """
    return torch.cat([a_NF.clamp(min=0), (-a_NF).clamp(min=0)], dim=1) if signed else a_NF


# --- fitting ----------------------------------------------------------------------------------


def unit_rows(W_FD: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return W_FD / W_FD.norm(dim=1, keepdim=True).clamp(min=eps)


def fit_pca(z_ND: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(components_KD, mean_D) by scikit-learn's exact (full SVD) PCA; rows orthonormal, sorted by
    explained variance. The top-k dictionary is `pca_dictionary(components_KD[:k], mean_D)`."""
    from sklearn.decomposition import PCA

    if not 1 <= n_components <= min(z_ND.shape):
        raise ValueError(f"fit_pca: n_components = {n_components} must be in 1..min(N, D) = {min(z_ND.shape)}")
    pca = PCA(n_components=n_components, svd_solver="full").fit(z_ND.double().numpy())
    return torch.from_numpy(pca.components_).float(), torch.from_numpy(pca.mean_).float()


def pca_dictionary(components_KD: torch.Tensor, mean_D: torch.Tensor) -> Dictionary:
    return Dictionary(components_KD, mean_D, "project", components_KD.shape[0], signed=True)


def fit_kmeans(z_ND: torch.Tensor, n_clusters: int, seed: int, n_init: int = 1, max_iter: int = 300) -> torch.Tensor:
    """Centroids C_FD of scikit-learn's KMeans (Lloyd, k-means++ init, random_state=seed)."""
    from sklearn.cluster import KMeans

    if not 1 <= n_clusters <= z_ND.shape[0]:
        raise ValueError(f"fit_kmeans: n_clusters = {n_clusters} must be in 1..N = {z_ND.shape[0]}")
    km = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    km.fit(z_ND.double().numpy())
    return torch.from_numpy(km.cluster_centers_).float()


def kmeans_dictionary(C_FD: torch.Tensor, mean_D: torch.Tensor) -> Dictionary:
    """Nearest centroid: z_hat = b + (c_j - b) = c_j, L0 = 1."""
    return Dictionary(C_FD - mean_D, mean_D, "nearest", 1, signed=False)


def topk_dictionary(W_FD: torch.Tensor, mean_D: torch.Tensor, k: int) -> Dictionary:
    """Unit directions (rows normalised here) with the top-k least-squares encoder: gain-shape
    k-means (rows c_j - b), random directions, class directions."""
    return Dictionary(unit_rows(W_FD), mean_D, "topk_lstsq", k, signed=True)


def random_directions(n_latents: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """W_FD: n_latents isotropic random unit directions in R^d (normalised Gaussians)."""
    return unit_rows(torch.randn(n_latents, d, generator=generator))


def class_directions(z_ND: torch.Tensor, y_N: torch.Tensor, mean_D: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """W_CD rows (mean(z | y = c) - b) / ||.||, one per class; a class absent from y is an error."""
    counts_C = torch.bincount(y_N.long(), minlength=n_classes)
    if counts_C.shape[0] != n_classes or (counts_C == 0).any():
        raise ValueError(f"class_directions: every class 0..{n_classes - 1} needs examples, counts {counts_C.tolist()}")
    sums_CD = torch.zeros(n_classes, z_ND.shape[1], dtype=torch.float64).index_add_(0, y_N.long(), z_ND.double())
    return unit_rows((sums_CD / counts_C[:, None] - mean_D.double()).float())


# --- sparse probing ---------------------------------------------------------------------------


def fit_probe(feats_train_NF: np.ndarray, y_train_N: np.ndarray, *, C: float, max_iter: int, seed: int):
    """Multinomial logistic regression (scikit-learn, lbfgs) on standardised features.

    Standardising first puts raw activations, PCA codes and SAE codes on one L2 scale, so one C
    fits all; a constant column (a latent never active in the probe set) is left at zero.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    return probe.fit(np.asarray(feats_train_NF, dtype=np.float64), np.asarray(y_train_N))


def probe_logits(probe, feats_NF: np.ndarray, n_classes: int = 10) -> torch.Tensor:
    """The probe's class scores [N, C] (decision function) for metrics.accuracy; a class the probe
    never saw in training gets -inf, so column c is always class c."""
    scores_NC = np.full((len(feats_NF), n_classes), -np.inf)
    raw = probe.decision_function(np.asarray(feats_NF, dtype=np.float64))
    if raw.ndim == 1:  # two classes seen: sklearn returns the score of classes_[1] vs classes_[0]
        raw = np.stack([-raw, raw], axis=1)
    scores_NC[:, probe.classes_] = raw
    return torch.from_numpy(scores_NC)




# --- the site's data --------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteData:
    """What fitting and scoring need at one site. z = (y - mean_D) / std_D when `normalize`, else
    z = y. mean_D/std_D are the train statistics of y (collect stage); mean_D is also the
    mean-ablation vector of CE recovered. to_logits maps y [B, D] to logits [B, O] (identity at
    the logit site, the FFN head at the hidden site). Methods are fitted on train, SAE lambdas
    calibrated on val, everything scored on the eval split.
    """

    z_train_ND: torch.Tensor
    labels_train_N: torch.Tensor
    z_val_ND: torch.Tensor
    z_eval_ND: torch.Tensor
    labels_eval_N: torch.Tensor
    logits_eval_NO: torch.Tensor
    mean_D: torch.Tensor
    std_D: torch.Tensor
    normalize: bool
    to_logits: Callable[[torch.Tensor], torch.Tensor]

    def to_y(self, z_ND: torch.Tensor) -> torch.Tensor:
        return to_y(z_ND, self.mean_D, self.std_D, self.normalize)

    @property
    def d(self) -> int:
        return self.z_train_ND.shape[1]

    @cached_property
    def z_train_mean_D(self) -> torch.Tensor:
        """The train mean of z (float64 sum): the reference dictionaries' bias b_D, and the centre
        of the relative reconstruction bias gamma."""
        return self.z_train_ND.double().mean(0).float()


def make_site(load_split: Callable, mean_D: torch.Tensor, std_D: torch.Tensor, normalize: bool,
              eval_split: str, to_logits: Callable) -> SiteData:
    """SiteData from `load_split(split) -> (y_ND, logits_NO, labels_N)` (collect.load_collected)."""
    def z(y_ND):
        if y_ND.ndim != 2 or y_ND.shape[1] != mean_D.shape[0]:
            raise ValueError(f"make_site: activations {tuple(y_ND.shape)} do not match the {mean_D.shape[0]}-d stats")
        return to_z(y_ND.float(), mean_D, std_D, normalize)

    y_train, _, labels_train = load_split("train")
    y_val, _, _ = load_split("val")
    y_eval, logits_eval, labels_eval = load_split(eval_split)
    return SiteData(z(y_train), labels_train.long(), z(y_val), z(y_eval), labels_eval.long(),
                    logits_eval.float(), mean_D.float(), std_D.float(), normalize, to_logits)


# --- scoring: every method through the same metric functions ----------------------------------


def _finite_or_none(v):
    """JSON has no NaN: an undefined number (CE recovered when the ablation costs nothing, the
    purity of a dictionary with no live atom) becomes null."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class ProbeSettings:
    C: float  # inverse L2 strength of the logistic regression
    max_iter: int  # lbfgs iterations
    n_train: int  # train examples the probe is fitted on (a seeded subsample; all if larger)
    seed: int


def probe_train_index(n: int, settings: ProbeSettings) -> torch.Tensor:
    """The seeded subsample of train rows every probe is fitted on (the same for all methods)."""
    gen = torch.Generator().manual_seed(settings.seed)
    return torch.randperm(n, generator=gen)[:settings.n_train].sort().values


def probe_accuracy(feats_train_NF: torch.Tensor, feats_eval_NF: torch.Tensor, site: SiteData,
                   settings: ProbeSettings) -> float:
    """Eval-split accuracy of `fit_probe` fitted on `probe_train_index` rows of the train features."""
    idx = probe_train_index(feats_train_NF.shape[0], settings)
    model = fit_probe(feats_train_NF[idx].double().numpy(), site.labels_train_N[idx].numpy(),
                      C=settings.C, max_iter=settings.max_iter, seed=settings.seed)
    return metrics.accuracy(probe_logits(model, feats_eval_NF.double().numpy()), site.labels_eval_N)


@torch.no_grad()
def score(method: str, k: int, reconstruct_fn, W_dec_FD: torch.Tensor, signed: bool, site: SiteData, *,
          top_n: int, seed: int, probe: ProbeSettings | None = None) -> tuple[dict, dict]:
    """(row, dists): every metric of one method at one k on the eval split, and the raw samples of
    its distributions ("cos": pairwise decoder cosines, "mag": non-zero |activations|).

    reconstruct_fn(z_ND) -> (z_hat_ND, a_NF). The row holds metrics.fidelity on the eval split (y
    space, mean ablation = train mean of y), the dead fraction on train (DESIGN), label purity of
    the top_n and of top_n uniformly sampled activating examples averaged over live atoms (signed
    codes count as two atoms, `nonnegative_atoms`), non-zero activation quantiles, decoder
    cosines with the Welch bound, the relative reconstruction bias gamma (centred on the train
    mean of z) and, with `probe`, the eval accuracy of a logistic-regression probe on the codes.
    """
    z_hat_ND, a_NF = reconstruct_fn(site.z_eval_ND)
    _, a_train_NF = reconstruct_fn(site.z_train_ND)
    row = {"method": method, "k": k, "n_latents": int(a_NF.shape[1])}
    row.update(metrics.fidelity(site.to_y(site.z_eval_ND), site.to_y(z_hat_ND), site.labels_eval_N,
                                site.logits_eval_NO, site.to_logits, site.mean_D,
                                z_ND=site.z_eval_ND if site.normalize else None,
                                z_hat_ND=z_hat_ND if site.normalize else None, a_NF=a_NF))
    row["dead_fraction_train"] = metrics.dead_fraction(metrics.latent_frequency(a_train_NF))
    atoms_NA = nonnegative_atoms(a_NF, signed)
    top_A = metrics.top_activation_purity(atoms_NA, site.labels_eval_N, top_n)
    gen = torch.Generator().manual_seed(seed)
    row["purity_top"] = metrics.live_mean(top_A)
    row["purity_sampled"] = metrics.live_mean(metrics.sampled_activation_purity(atoms_NA, site.labels_eval_N, top_n, gen))
    row["live_atoms"] = int((~torch.isnan(top_A)).sum())
    row["n_atoms"] = int(atoms_NA.shape[1])
    mag_M = metrics.nonzero_magnitudes(a_NF)
    row.update({f"mag_{key}": v for key, v in metrics.magnitude_summary(mag_M).items()})
    cos_P = metrics.pairwise_cosine_similarities(W_dec_FD)
    row["cos_abs_mean"] = cos_P.abs().mean().item() if cos_P.numel() else 0.0
    row["cos_abs_max"] = cos_P.abs().max().item() if cos_P.numel() else 0.0
    row["welch_bound"] = metrics.welch_bound(W_dec_FD.shape[0], W_dec_FD.shape[1])
    z_mean_D = site.z_train_mean_D
    row["gamma"] = metrics.relative_reconstruction_bias(site.z_eval_ND - z_mean_D, z_hat_ND - z_mean_D)
    if probe is not None:
        row["probe_acc"] = probe_accuracy(a_train_NF, a_NF, site, probe)
    return {key: _finite_or_none(v) for key, v in row.items()}, {"cos": cos_P, "mag": mag_M}


# --- the reference methods --------------------------------------------------------------------

REFERENCE_METHODS = ("pca", "kmeans_gain_shape", "random", "class")


def reference_dictionaries(site: SiteData, ks: list[int], n_latents: int, *, seed: int, kmeans_n_init: int,
                           kmeans_max_iter: int, n_classes: int = 10) -> list[tuple[str, int, Dictionary]]:
    """[(method, k, Dictionary)], all fitted on train: ("kmeans", 1, nearest centroid) first, then
    for each k: PCA top-k, k-means gain-shape, random directions (seeded), class directions."""
    if max(ks) > min(site.d, n_latents, n_classes):
        raise ValueError(f"reference_dictionaries: k = {max(ks)} exceeds min(D = {site.d}, n_latents = {n_latents}, "
                         f"classes = {n_classes})")
    mean_D = site.z_train_mean_D
    components_KD, pca_mean_D = fit_pca(site.z_train_ND, max(ks))
    C_FD = fit_kmeans(site.z_train_ND, n_latents, seed, kmeans_n_init, kmeans_max_iter)
    W_rand_FD = random_directions(n_latents, site.d, torch.Generator().manual_seed(seed))
    W_class_CD = class_directions(site.z_train_ND, site.labels_train_N, mean_D, n_classes)
    out = [("kmeans", 1, kmeans_dictionary(C_FD, mean_D))]
    for k in ks:
        out += [("pca", k, pca_dictionary(components_KD[:k], pca_mean_D)),
                ("kmeans_gain_shape", k, topk_dictionary(C_FD - mean_D, mean_D, k)),
                ("random", k, topk_dictionary(W_rand_FD, mean_D, k)),
                ("class", k, topk_dictionary(W_class_CD, mean_D, k))]
    return out


# --- the SAE family at matched k (training and calibration from mnist_sae.sae_train) ----------

FAMILY = ("sae_jumprelu", "sae_topk", "sae_relu", "sae_jumprelu_kl")


@dataclass(frozen=True)
class FamilySettings:
    """How the baselines stage trains its SAE family (smaller budget than train_sae; see report)."""

    lr: float
    epochs: int
    batch_size: int
    lambdas: tuple[float, ...]  # ascending calibration grid (jumprelu L0 and relu L1 share it)
    refine: int  # bisection steps after the grid (mnist_sae.sae_train.calibrate)
    kl_coef: float  # weight of the KL term of sae_jumprelu_kl
    aux_coef: float  # topk AuxK weight
    dead_steps: int  # topk: steps without firing before a latent counts as dead for AuxK
    shift_thresholds: bool  # jumprelu: shift all thresholds so that the val L0 is exactly k


def family_variants(site_is_logits: bool) -> tuple[str, ...]:
    """The KL term compares softmax(y) with softmax(y_hat): defined at the logit site only."""
    return FAMILY if site_is_logits else tuple(v for v in FAMILY if v != "sae_jumprelu_kl")


def train_family_member(variant: str, k: int, site: SiteData, base_cfg, settings: FamilySettings, seed: int,
                        device: str = "cpu"):
    """(sae, info): one SAE of the family trained at sparsity k with sae_train's public functions.

    jumprelu / relu: lambda = sae_train.calibrate(target_l0 = k) on val, then one SAE trained
    with it (same seed, init and batches as the calibration run); jumprelu then optionally
    shifts its thresholds to val L0 = k exactly (sae_train.shift_thresholds_). topk: k active
    latents by construction, no lambda. sae_jumprelu_kl adds kl_coef * KL(softmax(y) ||
    softmax(y_hat)) to the loss (Braun et al. 2024). info: lambda, calibrated val L0, shift.
    """
    import dataclasses

    from mnist_sae import sae_train
    from mnist_sae.sae import SAE

    arch = {"sae_jumprelu": "jumprelu", "sae_jumprelu_kl": "jumprelu", "sae_relu": "relu", "sae_topk": "topk"}[variant]
    cfg = dataclasses.replace(base_cfg, arch=arch, d_in=site.d, k=k if arch == "topk" else min(base_cfg.k, base_cfg.n_latents))
    kl = settings.kl_coef if variant == "sae_jumprelu_kl" else 0.0
    train_settings = sae_train.TrainSettings(lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size,
                                             kl_coef=kl, aux_coef=settings.aux_coef, dead_steps=settings.dead_steps,
                                             log_every=10**9)
    loss_kw = {}
    if kl > 0:  # the KL term maps z back to logits; un-normalized z are the logits themselves
        ones_D = torch.ones(site.d)
        loss_kw = {"mean_D": site.mean_D if site.normalize else 0 * ones_D, "std_D": site.std_D if site.normalize else ones_D}
    info = {"lambda": 0.0, "calibrated_l0_val": None, "theta_shift": 0.0}
    if arch != "topk":
        cal = sae_train.calibrate(cfg, site.z_train_ND, site.z_val_ND, float(k), list(settings.lambdas), settings.refine,
                                  train_settings, seed, device=device, **loss_kw)
        info.update({"lambda": cal.lam, "calibrated_l0_val": cal.l0})
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, n_models=1, generator=gen).to(device)
    sae_train.train_sae(sae, site.z_train_ND, [info["lambda"]], train_settings, gen, **loss_kw)
    if arch == "jumprelu" and settings.shift_thresholds:
        info["theta_shift"] = sae_train.shift_thresholds_(sae, site.z_val_ND.to(device), float(k))
    return sae.cpu().eval(), info


def sae_method(sae):
    """(reconstruct_fn, W_dec_FD, signed) of a single trained SAE, for `score`."""
    from mnist_sae.sae import reconstruct

    return (lambda z_ND: reconstruct(sae, z_ND)), sae.W_dec_GFD[0].detach(), False


# --- the whole comparison ---------------------------------------------------------------------


@dataclass
class Results:
    rows: list[dict]  # one per (method, k), references (kmeans, sae_main) with their own k
    dists: dict[str, dict]  # "method@k" -> {"cos": pairwise decoder cosines, "mag": |activations|}
    probe_raw_acc: float | None  # the probe on the raw site activations z
    family: dict[str, dict]  # "method@k" -> training info (lambda, calibrated val L0, shift)


def run_baselines(site: SiteData, ks: list[int], n_latents: int, *, seed: int, top_n: int,
                  kmeans_n_init: int, kmeans_max_iter: int, probe: ProbeSettings | None,
                  family: FamilySettings | None, base_cfg=None, site_is_logits: bool = True,
                  main_sae=None, device: str = "cpu", log=print) -> Results:
    """Fit every reference method on train (and train the SAE family when `family` is given),
    score all on the eval split through `score`; `main_sae` (the train_sae stage's SAE) is
    scored as the reference row "sae_main" at its own L0 (k = 0 marks "not matched")."""
    res = Results([], {}, None, {})
    if probe is not None:
        res.probe_raw_acc = probe_accuracy(site.z_train_ND, site.z_eval_ND, site, probe)

    def add(method, k, fn, W_dec_FD, signed):
        row, dists = score(method, k, fn, W_dec_FD, signed, site, top_n=top_n, seed=seed, probe=probe)
        res.rows.append(row)
        res.dists[f"{method}@{k}"] = dists
        log(f"{method:18s} k={k}: L0 {row['l0']:.3f}  mse_norm {row['mse_norm']:.4f}  ce_recovered {row['ce_recovered']}")

    for method, k, dic in reference_dictionaries(site, ks, n_latents, seed=seed, kmeans_n_init=kmeans_n_init,
                                                 kmeans_max_iter=kmeans_max_iter):
        add(method, k, dic.reconstruct, dic.W_dec_FD, dic.signed)
    if family is not None:
        for k in ks:
            for variant in family_variants(site_is_logits):
                sae, info = train_family_member(variant, k, site, base_cfg, family, seed, device)
                res.family[f"{variant}@{k}"] = info
                add(variant, k, *sae_method(sae))
    if main_sae is not None:
        add("sae_main", 0, *sae_method(main_sae))
    return res


# --- outputs: JSON, markdown, plot data, figures ----------------------------------------------

METHOD_ORDER = ("pca", "kmeans", "kmeans_gain_shape", "random", "class") + FAMILY + ("sae_main",)
TABLE_COLUMNS = (  # (row key, header, format)
    ("l0", "L0", ".2f"), ("mse_norm", "MSE norm", ".4f"), ("explained_variance", "EV", ".3f"),
    ("acc_recon", "acc", ".4f"), ("ce_recon", "CE", ".4f"), ("ce_recovered", "CE rec", ".3f"),
    ("dead_fraction_train", "dead", ".2f"), ("purity_top", "purity top", ".3f"),
    ("purity_sampled", "purity sampled", ".3f"), ("probe_acc", "probe acc", ".4f"),
)


def _sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["k"], METHOD_ORDER.index(r["method"])))


def results_json(res: Results, header: dict) -> dict:
    """{**header, "probe_raw_acc", "k<k>": {method: row}, "sae_main": row, "family_training": ...}."""
    out = dict(header, probe_raw_acc=_finite_or_none(res.probe_raw_acc), family_training=res.family)
    for row in _sorted_rows(res.rows):
        body = {key: v for key, v in row.items() if key not in ("method", "k")}
        if row["method"] == "sae_main":
            out["sae_main"] = body
        else:
            out.setdefault(f"k{row['k']}", {})[row["method"]] = body
    return out


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def _table(rows: list[dict]) -> str:
    from tabulate import tabulate

    body = [[r["method"] + ("" if r["k"] == 0 or is_matched(r) else " (L0 off)")]
            + [_fmt(r.get(key), spec) for key, _, spec in TABLE_COLUMNS] for r in rows]
    return tabulate(body, headers=["method"] + [h for _, h, _ in TABLE_COLUMNS], tablefmt="github", disable_numparse=True)


def _best(rows, key, lowest=False):
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return None
    return (min if lowest else max)(rows, key=lambda r: r[key])


L0_TOLERANCE = 0.25  # a row counts as matched at k when |L0 - k| <= 0.25 k


def is_matched(row: dict) -> bool:
    """Whether a row's measured L0 is within L0_TOLERANCE of its k (calibration can miss)."""
    return row["k"] > 0 and abs(row["l0"] - row["k"]) <= L0_TOLERANCE * row["k"]


def _reading(rows: list[dict], probe_raw_acc) -> list[str]:
    """Who wins where at one k, in sentences made from the numbers (matched rows only)."""
    lines = []
    off = [r["method"] for r in rows if not is_matched(r)]
    if off:
        lines.append(f"- L0 off target by more than {L0_TOLERANCE:.0%} (left out below): {', '.join(off)}.")
    rows = [r for r in rows if is_matched(r)]
    sae_rows = [r for r in rows if r["method"].startswith("sae_")]
    for key, what, lowest in (("mse_norm", "lowest normalized MSE", True), ("ce_recovered", "highest CE recovered", False),
                              ("purity_top", "purest top activations", False),
                              ("purity_sampled", "purest typical activations", False)):
        best = _best(rows, key, lowest)
        if best is None:
            continue
        line = f"- {what}: **{best['method']}** ({best[key]:.4g})"
        best_sae = _best(sae_rows, key, lowest)
        if best_sae is not None and best_sae is not best:
            line += f"; best SAE {best_sae['method']} {best_sae[key]:.4g}"
        lines.append(line + ".")
    pca = next((r for r in rows if r["method"] == "pca"), None)
    best_sae = _best(sae_rows, "mse_norm", lowest=True)
    if pca is not None and best_sae is not None and pca["mse_norm"] > 0:
        ratio = best_sae["mse_norm"] / pca["mse_norm"]
        lines.append(f"- {best_sae['method']} reaches {ratio:.2f}x the MSE of PCA with the same number of "
                     f"active directions ({'better' if ratio < 1 else 'worse'} than PCA).")
    best_probe = _best(rows, "probe_acc")
    if best_probe is not None and probe_raw_acc is not None:
        lines.append(f"- probe: best codes {best_probe['method']} {best_probe['probe_acc']:.4f} vs raw activations "
                     f"{probe_raw_acc:.4f}.")
    return lines


def _theory(rows: list[dict]) -> list[str]:
    """Checks against what theory and toy models predict: a table per k, then which predictions
    hold at how many k.

    - shrinkage: the L1 penalty pulls reconstructions towards 0, so the relative reconstruction
      bias gamma of ReLU+L1 is the lowest (Rajamanoharan et al. 2024; Wright & Sharkey 2024);
    - activation floor: a JumpReLU never outputs a value below its threshold, a ReLU outputs many
      near 0, so the 5th percentile of non-zero activations is higher for JumpReLU;
    - superposition (Elhage et al. 2022): F > D directions cannot be orthogonal; the Welch bound is
      the least max |cos| any F unit vectors in D dims can have, random directions a reference.
    """
    from tabulate import tabulate

    by = {(r["method"], r["k"]): r for r in rows}
    ks = sorted(k for k in {r["k"] for r in rows} if all((m, k) in by for m in ("sae_jumprelu", "sae_relu", "sae_topk", "random")))
    if not ks:
        return []
    table, shrink, floor = [], 0, 0
    for k in ks:
        j, rl, tk, rd = (by[(m, k)] for m in ("sae_jumprelu", "sae_relu", "sae_topk", "random"))
        shrink += rl["gamma"] < min(j["gamma"], tk["gamma"])
        floor += (j["mag_p05"] or 0) > (rl["mag_p05"] or 0)
        table.append([k] + [_fmt(v, ".3f") for v in (rl["gamma"], j["gamma"], tk["gamma"], j["mag_p05"], rl["mag_p05"],
                                                    j["cos_abs_max"], rd["cos_abs_max"], j["welch_bound"],
                                                    j["cos_abs_mean"], rd["cos_abs_mean"])])
    # no "|" in headers: it would split a markdown table cell
    headers = ["k", "gamma relu", "gamma jumprelu", "gamma topk", "p05 act jumprelu", "p05 act relu",
               "max abs cos jumprelu", "max abs cos random", "Welch bound", "mean abs cos jumprelu", "mean abs cos random"]
    out = [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    out.append(f"- shrinkage (gamma: 1 = unbiased scale, < 1 shrunk towards 0): ReLU+L1 lowest at {shrink} of {len(ks)} k.")
    out.append(f"- activation floor: JumpReLU's 5th-percentile non-zero activation above ReLU's at {floor} of {len(ks)} k.")
    out.append("- decoder geometry: every max |cos| is at least the Welch bound (a theorem, F > D); a JumpReLU "
               "mean |cos| below random's means its directions spread out more than chance.")
    return out


def _headline(rows: list[dict]) -> list[str]:
    """The main SAE against every method at the k nearest its own L0: is its MSE impressive?"""
    main = next((r for r in rows if r["method"] == "sae_main"), None)
    ks = sorted({r["k"] for r in rows if r["method"] != "sae_main"})
    if main is None or not ks:
        return []
    k = min(ks, key=lambda v: abs(v - main["l0"]))
    others = [r for r in rows if r["k"] == k and r["method"] != "sae_main" and is_matched(r)]
    better = [r["method"] for r in others if r["mse_norm"] < main["mse_norm"]]
    parts = ", ".join(f"{r['method']} {r['mse_norm']:.4f}" for r in others)
    return [f"The main SAE (L0 {main['l0']:.2f}): normalized MSE {main['mse_norm']:.4f}, CE recovered "
            f"{_fmt(main['ce_recovered'], '.3f')}, accuracy {main['acc_recon']:.4f}. At k = {k}: {parts}. "
            f"Lower MSE than the main SAE: {', '.join(better) if better else 'none'}.", ""]


def markdown_report(res: Results, header: dict, notes: list[str]) -> str:
    """metrics/BASELINES.md: a settings line, one table per k, the reading, references, theory."""
    rows = _sorted_rows(res.rows)
    ks = sorted({r["k"] for r in rows if r["method"] not in ("kmeans", "sae_main")})
    out = ["# Baselines: the SAE against its reference class", ""]
    out += [f"- {key}: {v}" for key, v in header.items()] + [f"- {n}" for n in notes] + [""]
    out += _headline(rows)
    if res.probe_raw_acc is not None:
        out += [f"Probe on the raw site activations: accuracy {res.probe_raw_acc:.4f}.", ""]
    for k in ks:
        at_k = [r for r in rows if r["k"] == k and r["method"] != "sae_main"]
        out += [f"## k = {k}", "", _table(at_k), ""] + _reading(at_k, res.probe_raw_acc) + [""]
    refs = [r for r in rows if r["method"] in ("kmeans", "sae_main")]
    if refs:
        out += ["## References at their own L0", "", "kmeans: nearest centroid (L0 = 1); sae_main: the train_sae "
                "stage's SAE.", "", _table(refs), ""]
    theory = _theory(rows)
    if theory:
        out += ["## Theory checks", ""] + theory + [""]
    return "\n".join(out)


FRONTIER_COLUMNS = ("k", "l0", "mse_norm", "explained_variance", "ce_recovered", "purity_top", "purity_sampled",
                    "acc_recon", "probe_acc")


def frontier_csvs(res: Results) -> dict[str, str]:
    """{"frontier_<method>.csv": text}: one file per method, one line per k (for `dvc plots`:
    one series per file, x = l0). Every method gets a file, header only when it did not run
    (family off, KL variant off the logit site), so dvc.yaml's plot definitions always resolve."""
    out = {}
    for method in METHOD_ORDER:
        mrows = [r for r in _sorted_rows(res.rows) if r["method"] == method]
        lines = [",".join(FRONTIER_COLUMNS)]
        lines += [",".join("" if r.get(c) is None else repr(r[c]) for c in FRONTIER_COLUMNS) for r in mrows]
        out[f"frontier_{method}.csv"] = "\n".join(lines) + "\n"
    return out


def frontier_figure(res: Results):
    """MSE, CE recovered and purity against L0, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for method in METHOD_ORDER:
        mrows = [r for r in _sorted_rows(res.rows) if r["method"] == method]
        if not mrows:
            continue
        style, ms = ("*", 12) if method == "sae_main" else ("o-", 4) if method.startswith("sae") else ("s--", 4)
        for ax, key in zip(axes, ("mse_norm", "ce_recovered", "purity_top", "purity_sampled")):
            pts = [(r["l0"], r[key]) for r in mrows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=method, ms=ms)
    for ax, title in zip(axes, ("normalized MSE (lower is better)", "CE recovered", "purity of top activations",
                                "purity of sampled activations")):
        ax.set_xlabel("L0 (active latents per example)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def histogram_figure(res: Results, key: str, k: int, title: str, welch: bool = False):
    """One panel per method at k (plus kmeans and sae_main): a histogram of dists[key]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in (f"{m}@{k}" for m in METHOD_ORDER) if n in res.dists]
    names += [n for n in ("kmeans@1", "sae_main@0") if n in res.dists and n not in names]
    cols = 4
    nrows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    rows = {f"{r['method']}@{r['k']}": r for r in res.rows}
    for ax, name in zip(axes.flat, names):
        vals = res.dists[name][key].numpy()
        if vals.size:
            ax.hist(vals, bins=50, color="C0" if name.startswith("sae") else "C1")
        if welch:  # cosines: one x range for all panels, the Welch bound at +-
            ax.set_xlim(-1.05, 1.05)
            for s in (-1, 1):
                ax.axvline(s * rows[name]["welch_bound"], color="k", ls=":", lw=1)
        ax.set_title(f"{name} (n={vals.size})", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
