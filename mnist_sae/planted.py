"""Synthetic activations with planted features: the ground truth a learned dictionary is scored against.

The toy model of Sharkey et al. 2022 ("Taking features out of superposition with sparse
autoencoders", LessWrong / AF interim report) with the extras of SynthSAEBench (Chanin &
Garriga-Alonso 2026, arXiv:2602.14687): T true features, unit directions d_t in R^D (T > D is
superposition), each row a sparse non-negative combination of them,

    x_ND = c_NT @ W_true_TD + noise_std * eps_ND,    eps ~ N(0, 1)

    firing:     feature t fires with probability p_t, Zipf-ranked between p_max (t = 0) and p_min
                (t = T - 1): p_t = p_min + (p_max - p_min) * ((t + 1)^-s - T^-s) / (1 - T^-s)
    magnitude:  c_nt = |m|, m ~ N(mag_mean, mag_std^2) (a folded normal), where t fires; else 0
    directions: T <= D: orthonormal rows (QR of a Gaussian matrix); T > D: normalised Gaussians
    correlation (optional, corr_rank R > 0): a low-rank Gaussian copula. A latent Gaussian
                g_nt = L_t . r_n + sqrt(1 - |L_t|^2) e_nt with r ~ N(0, I_R), rows L_t of norm
                sqrt(corr_strength) pointing in random directions, so g_nt ~ N(0, 1) and t fires
                when g_nt < Phi^-1(p_t): the marginal rate is still p_t, the firing correlated.
    hierarchy   (optional, n_parents P > 0, children C > 0): features 0..P-1 are parents; parent
                i has children P + i C .. P + (i + 1) C - 1. A child fires only when its parent
                fires, and at most one child of a parent fires (siblings mutually exclusive): given
                the parent fires, child c fires with probability q_c = p_c / max(p_parent,
                sum_siblings p). Its marginal rate is rate_c = p_parent q_c (= p_c when the
                siblings' Zipf probabilities fit under the parent's, else scaled down together).

Everything comes from one np.random.default_rng(seed), drawn in a fixed order (directions, copula
loadings, then rows in chunks of CHUNK): the same arguments give the same bytes.

The true codes are stored sparsely, as coordinate arrays (row_M, col_M, val_M) sorted by row, M
the number of (row, feature) pairs that fire.

Shape letters beyond the package's: T true (planted) features, M non-zero code entries,
R copula rank.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.special import ndtri

CHUNK = 8192  # rows drawn per step (part of the recipe: changing it changes the bytes)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PlantedSpec:
    n_features: int  # T, true features
    d: int  # D, activation width
    p_min: float  # firing probability of the rarest feature
    p_max: float  # firing probability of the most frequent feature
    zipf_exponent: float = 1.0  # s in (t + 1)^-s; 0 = all features at p_max
    mag_mean: float = 1.0  # folded normal |N(mag_mean, mag_std^2)| magnitudes
    mag_std: float = 0.5
    n_parents: int = 0  # hierarchy: parent features (0 = no hierarchy)
    children: int = 0  # hierarchy: children per parent (mutually exclusive siblings)
    corr_rank: int = 0  # copula rank R (0 = independent firing)
    corr_strength: float = 0.0  # |L_t|^2 in [0, 1): the share of g's variance from the R shared factors
    noise_std: float = 0.0  # isotropic Gaussian noise added to x

    def __post_init__(self):
        if self.n_features < 1 or self.d < 1:
            raise ValueError(f"PlantedSpec: n_features and d must be >= 1, got {self.n_features}, {self.d}")
        if not 0 < self.p_min <= self.p_max <= 1:
            raise ValueError(f"PlantedSpec: need 0 < p_min <= p_max <= 1, got {self.p_min}, {self.p_max}")
        if self.zipf_exponent < 0 or self.mag_std < 0 or self.noise_std < 0:
            raise ValueError("PlantedSpec: zipf_exponent, mag_std and noise_std must be >= 0")
        if self.n_parents < 0 or self.children < 0 or (self.n_parents > 0) != (self.children > 0):
            raise ValueError(f"PlantedSpec: n_parents and children are both 0 or both > 0, got {self.n_parents}, {self.children}")
        if self.n_parents * (1 + self.children) > self.n_features:
            raise ValueError(f"PlantedSpec: {self.n_parents} parents x (1 + {self.children} children) exceed "
                             f"{self.n_features} features")
        if self.corr_rank < 0 or not 0 <= self.corr_strength < 1 or (self.corr_rank == 0 and self.corr_strength > 0):
            raise ValueError(f"PlantedSpec: need corr_rank >= 0, 0 <= corr_strength < 1 (and rank > 0 when strength > 0), "
                             f"got {self.corr_rank}, {self.corr_strength}")


class Planted(NamedTuple):
    x_ND: np.ndarray  # float32 activations (a memmap when written to a path)
    W_true_TD: np.ndarray  # float32 unit directions
    row_M: np.ndarray  # int64 row of each non-zero code, ascending
    col_M: np.ndarray  # int32 feature of each non-zero code
    val_M: np.ndarray  # float32 its magnitude
    p_T: np.ndarray  # Zipf probabilities (float64)
    rate_T: np.ndarray  # planned marginal firing rates after the hierarchy (= p_T without one)
    parent_T: np.ndarray  # int32 parent feature, -1 for none


def zipf_probabilities(n: int, p_min: float, p_max: float, exponent: float) -> np.ndarray:
    """p_t = p_min + (p_max - p_min) * ((t + 1)^-s - n^-s) / (1 - n^-s), t = 0..n-1: Zipf-shaped,
    p_0 = p_max, p_{n-1} = p_min (all p_max when n = 1 or s = 0)."""
    r_T = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    span = 1.0 - r_T[-1]
    share_T = (r_T - r_T[-1]) / span if span > 0 else np.ones(n)
    return p_min + (p_max - p_min) * share_T


def true_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """W_TD unit rows: orthonormal (Q of a Gaussian's QR, signs fixed by R's diagonal) when n <= d,
    else independent normalised Gaussians."""
    if n <= d:
        q_DT, r_TT = np.linalg.qr(rng.standard_normal((d, n)))
        return (q_DT * np.sign(np.diag(r_TT))).T.astype(np.float32)
    W_TD = rng.standard_normal((n, d))
    return (W_TD / np.linalg.norm(W_TD, axis=1, keepdims=True)).astype(np.float32)


def hierarchy(spec: PlantedSpec) -> np.ndarray:
    """parent_T: the parent of each feature (-1 for roots), see the module docstring."""
    parent_T = np.full(spec.n_features, -1, dtype=np.int32)
    for i in range(spec.n_parents):
        start = spec.n_parents + i * spec.children
        parent_T[start:start + spec.children] = i
    return parent_T


def planned_rates(p_T: np.ndarray, parent_T: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(rate_T, q): marginal firing rates and, per parent, its children's conditional
    probabilities q_c = p_c / max(p_parent, sum_siblings p) given that the parent fires."""
    rate_T, q = p_T.copy(), {}
    for par in np.unique(parent_T[parent_T >= 0]):
        kids = np.flatnonzero(parent_T == par)
        q[int(par)] = p_T[kids] / max(p_T[par], p_T[kids].sum())
        rate_T[kids] = p_T[par] * q[int(par)]
    return rate_T, q


def generate(spec: PlantedSpec, n_rows: int, seed: int, x_path: str | Path | None = None) -> Planted:
    """Draw n_rows rows of planted activations (module docstring). With x_path the activations are
    written there as an .npy memmap (np.lib.format.open_memmap) instead of held in memory."""
    if n_rows < 1:
        raise ValueError(f"generate: n_rows must be >= 1, got {n_rows}")
    T, D = spec.n_features, spec.d
    rng = np.random.default_rng(seed)
    W_true_TD = true_directions(T, D, rng)
    p_T = zipf_probabilities(T, spec.p_min, spec.p_max, spec.zipf_exponent)
    parent_T = hierarchy(spec)
    rate_T, q = planned_rates(p_T, parent_T)
    roots = np.flatnonzero(parent_T < 0)
    L_TR = None
    if spec.corr_rank > 0:
        L_TR = rng.standard_normal((T, spec.corr_rank))
        L_TR *= np.sqrt(spec.corr_strength) / np.linalg.norm(L_TR, axis=1, keepdims=True)
    cut_T = ndtri(p_T)  # t fires when its standard-normal g falls below Phi^-1(p_t)

    if x_path is None:
        x_ND = np.empty((n_rows, D), dtype=np.float32)
    else:
        x_ND = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(n_rows, D))
    rows, cols, vals = [], [], []
    for start in range(0, n_rows, CHUNK):
        B = min(CHUNK, n_rows - start)
        g_BT = rng.standard_normal((B, T))
        if L_TR is not None:
            g_BT = rng.standard_normal((B, spec.corr_rank)) @ L_TR.T + np.sqrt(1 - spec.corr_strength) * g_BT
        fires_BT = np.zeros((B, T), dtype=bool)
        fires_BT[:, roots] = g_BT[:, roots] < cut_T[roots]
        for par, q_C in q.items():  # at most one child, and only where the parent fired
            kids = np.flatnonzero(parent_T == par)
            pick_B = np.searchsorted(np.cumsum(q_C), rng.random(B), side="right")  # C = no child
            on_B = fires_BT[:, par] & (pick_B < len(kids))
            fires_BT[np.flatnonzero(on_B), kids[pick_B[on_B]]] = True
        mag_BT = np.abs(rng.normal(spec.mag_mean, spec.mag_std, size=(B, T))).astype(np.float32)
        c_BT = np.where(fires_BT, mag_BT, np.float32(0))
        x_BD = c_BT @ W_true_TD
        if spec.noise_std > 0:
            x_BD += (spec.noise_std * rng.standard_normal((B, D))).astype(np.float32)
        x_ND[start:start + B] = x_BD
        r_M, c_M = np.nonzero(fires_BT)  # row-major: sorted by row
        rows.append(r_M.astype(np.int64) + start)
        cols.append(c_M.astype(np.int32))
        vals.append(c_BT[r_M, c_M])
    if x_path is not None:
        x_ND.flush()
    return Planted(x_ND, W_true_TD, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
                   p_T, rate_T, parent_T)


def dense_codes(row_M: np.ndarray, col_M: np.ndarray, val_M: np.ndarray, rows_N: np.ndarray, n_features: int) -> np.ndarray:
    """c_NT float32 for the given rows (any order) from the sorted coordinate arrays."""
    c_NT = np.zeros((len(rows_N), n_features), dtype=np.float32)
    lo_N = np.searchsorted(row_M, rows_N, side="left")
    len_N = np.searchsorted(row_M, rows_N, side="right") - lo_N
    i_M = np.repeat(np.arange(len(rows_N)), len_N)  # output row of each entry taken
    m_M = lo_N[i_M] + np.arange(len(i_M)) - np.repeat(np.cumsum(len_N) - len_N, len_N)
    c_NT[i_M, col_M[m_M]] = val_M[m_M]
    return c_NT


def split_rows(n_rows: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: disjoint sorted row indices from one seeded permutation (rows are
    independent draws, so a split by row is a split by example)."""
    n_val, n_test = int(round(val_fraction * n_rows)), int(round(test_fraction * n_rows))
    if n_val < 1 or n_test < 1 or n_val + n_test >= n_rows:
        raise ValueError(f"split_rows: {n_rows} rows do not split into {n_val} val, {n_test} test and a train part")
    perm_N = np.random.default_rng(seed).permutation(n_rows)
    parts = {"val": perm_N[:n_val], "test": perm_N[n_val:n_val + n_test], "train": perm_N[n_val + n_test:]}
    return {k: np.sort(v) for k, v in parts.items()}


# --- the cache folder ------------------------------------------------------------------------------

def write_planted(folder: str | Path, spec: PlantedSpec, n_rows: int, seed: int, splits: dict[str, np.ndarray],
                  extra: dict | None = None) -> dict:
    """Generate into `folder` (which must exist): x.npy [N, D] float32, directions.npy [T, D],
    codes_row/col/val.npy, p.npy, rate.npy, parent.npy, idx_<split>.npy and info.json; return info."""
    folder = Path(folder)
    pl = generate(spec, n_rows, seed, x_path=folder / "x.npy")
    arrays = {"directions": pl.W_true_TD, "codes_row": pl.row_M, "codes_col": pl.col_M, "codes_val": pl.val_M,
              "p": pl.p_T, "rate": pl.rate_T, "parent": pl.parent_T}
    arrays.update({f"idx_{k}": v for k, v in splits.items()})
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    info = {"spec": asdict(spec), "n_rows": n_rows, "seed": seed, "n_codes": int(len(pl.row_M)),
            "mean_l0": float(len(pl.row_M) / n_rows), "split_sizes": {k: int(len(v)) for k, v in splits.items()},
            **(extra or {})}
    (folder / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


class PlantedSplit(NamedTuple):
    x_ND: np.ndarray  # float32 activations of the split's rows
    c_NT: np.ndarray  # float32 true codes (0 where a feature is off)
    W_true_TD: np.ndarray


def load_planted(folder: str | Path, split: str) -> PlantedSplit:
    """One split of a folder written by write_planted, read into memory, shapes checked."""
    folder = Path(folder)
    if split not in SPLITS:
        raise ValueError(f"load_planted: split must be one of {SPLITS}, got {split!r}")
    x_ND = np.load(folder / "x.npy", mmap_mode="r")
    W_true_TD = np.load(folder / "directions.npy")
    idx_N = np.load(folder / f"idx_{split}.npy")
    row_M, col_M, val_M = (np.load(folder / f"codes_{k}.npy") for k in ("row", "col", "val"))
    if x_ND.ndim != 2 or W_true_TD.ndim != 2 or x_ND.shape[1] != W_true_TD.shape[1]:
        raise ValueError(f"load_planted: {folder}: x {x_ND.shape} and directions {W_true_TD.shape} disagree on D")
    if not (len(row_M) == len(col_M) == len(val_M)) or (len(idx_N) and idx_N.max() >= x_ND.shape[0]):
        raise ValueError(f"load_planted: {folder}: codes or split indices do not fit x {x_ND.shape}")
    c_NT = dense_codes(row_M, col_M, val_M, idx_N, W_true_TD.shape[0])
    return PlantedSplit(np.array(x_ND[idx_N]), c_NT, W_true_TD)
