"""The reference dictionaries an SAE is compared with (baselines stage, truth benchmark).

Every one is a dictionary with a fixed encoder; all reconstruct the same way as an SAE,

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

import torch
from torch.nn import functional as F


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


def class_directions(z_ND: torch.Tensor, labels_N: torch.Tensor, mean_D: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """W_CD rows (mean(z | y = c) - b) / ||.||, one per class; a class absent from y is an error."""
    counts_C = torch.bincount(labels_N.long(), minlength=n_classes)
    if counts_C.shape[0] != n_classes or (counts_C == 0).any():
        raise ValueError(f"class_directions: every class 0..{n_classes - 1} needs examples, counts {counts_C.tolist()}")
    sums_CD = torch.zeros(n_classes, z_ND.shape[1], dtype=torch.float64).index_add_(0, labels_N.long(), z_ND.double())
    return unit_rows((sums_CD / counts_C[:, None] - mean_D.double()).float())
