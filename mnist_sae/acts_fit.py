"""The SAE recipe on rows of an activation cache: standardize, pick lambda, train, shift thresholds.

    z = (x - mean_D) / std_D            per-dimension statistics of the training rows
    lambda, train, theta shift          mnist_sae.fit.fit_sae, the one recipe (one seed), with the
                                        training rows streamed from the memmap

`fit_cache_sae` runs it on any subset of the cache's rows: all train rows (the acts_sae SAE), or
one layer's rows only (the per-layer SAEs compared with it in acts_eval).

Streaming: the training rows are never loaded whole. The statistics come from two chunked passes
(mnist_sae.acts.row_stats) and every training step gathers its minibatch from the memmap
(`CacheBatches`, train_sae's batch_source), so memory holds one chunk or batch of them; the val
rows (calibration, threshold shift, val metrics) are read into memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mnist_sae import metrics
from mnist_sae.acts import Activations, Cache, row_stats
from mnist_sae.fit import FitPlan, fit_sae
from mnist_sae.sae import SAE, SAEConfig, reconstruct
from mnist_sae.sae_train import Calibration
from mnist_sae.space import InputSpace


@dataclass
class Fitted:
    sae: SAE  # on CPU, eval mode
    lam: float
    lambda_source: str  # "params" | "calibration" | "none (topk)"
    theta_shift: float
    space: InputSpace  # the training rows' standardization (float32 mean and std, normalize true)
    calibration: Calibration | None
    val: dict  # l0, mse_norm (z space) and dead_fraction on the val rows
    train_rows: int

    def checkpoint(self) -> dict:
        return {"sae": self.sae.to_checkpoint(), "lambda": self.lam, "lambda_source": self.lambda_source,
                "theta_shift": self.theta_shift, "mean_D": self.space.y_mean_D, "std_D": self.space.y_std_D}


def checkpoint_space(ckpt: dict) -> InputSpace:
    """The input space of a cache SAE's checkpoint (Fitted.checkpoint; acts_sae's per-layer ones too)."""
    return InputSpace(ckpt["mean_D"], ckpt["std_D"], True)


class CacheBatches:
    """Rows of a cache as train_sae's `batch_source`: gather(idx_B) reads rows rows_N[idx_B] from
    the memmap (in file order, then put back in idx_B's order), widens them to float32 and
    standardizes them (space.to_z): memory is one batch whatever the cache's size."""

    def __init__(self, acts: Activations, rows_N: np.ndarray, space: InputSpace, device: str = "cpu"):
        self.acts, self.rows_N, self.space, self.device = acts, rows_N, space, device
        self.n_rows = len(rows_N)
        self.z_mean_D = torch.zeros(acts.d)  # the mean of z over these rows (exactly 0 up to rounding): b_dec's start

    def gather(self, idx_B: torch.Tensor) -> torch.Tensor:
        r_B = self.rows_N[idx_B.cpu().numpy()]
        order_B = np.argsort(r_B, kind="stable")
        x_BD = np.empty((len(r_B), self.acts.d), dtype=np.float32)
        x_BD[order_B] = self.acts.rows(r_B[order_B])
        return self.space.to_z(torch.from_numpy(x_BD)).to(self.device)


def fit_cache_sae(cache: Cache, train_rows_N: np.ndarray, val_rows_N: np.ndarray, cfg: SAEConfig, plan: FitPlan, *,
                  device: str = "cpu", on_step=None) -> Fitted:
    """The recipe (module docstring) on the given rows of the cache (indices into its rows); one
    seed (plan.seeds of length 1: CacheBatches gathers one batch per step)."""
    if len(plan.seeds) != 1:
        raise ValueError(f"fit_cache_sae: one seed per cache SAE, got seeds {plan.seeds}")
    space = InputSpace(*(torch.from_numpy(a) for a in row_stats(cache.acts, train_rows_N)), True)
    train = CacheBatches(cache.acts, train_rows_N, space, device)
    z_val_ND = space.to_z(torch.from_numpy(cache.load_rows(val_rows_N)))
    sae, fitted = fit_sae(cfg, None, z_val_ND, plan, device=device, on_step=on_step, batch_source=train)
    z_hat_ND, a_NF = reconstruct(sae, z_val_ND)
    val = {"l0": metrics.l0(a_NF), "mse_norm": metrics.mse(z_val_ND, z_hat_ND),
           "dead_fraction": metrics.dead_fraction(metrics.latent_frequency(a_NF))}
    return Fitted(sae, fitted.lam, fitted.lambda_source, fitted.theta_shift[0], space, fitted.calibration, val,
                  len(train_rows_N))
