"""The one recipe that fits an SAE: calibrate lambda -> train -> optional threshold shift.

Every SAE the project trains goes through `fit_sae`: the main MNIST SAE (train_sae stage), the
baselines' SAE family at each k, the planted-truth benchmark and the activation-cache SAE. So a
change to the recipe (a new init, resurrection, a seed count) reaches them all at once.

    1. lambda: given (`lam`), none (topk: sparsity is structural), or calibrated on val towards
       target_l0 (sae_train.calibrate: a batched geometric grid, then bisection in log-lambda).
    2. train: S seeds at once as one stacked model (G = S), model s drawn from and batched by its
       own generator seeded seeds[s], all with the same lambda (sae_train.train_sae).
    3. jumprelu + shift: each model's thresholds shifted by one global delta so that its val L0
       is target_l0 exactly (sae_train.shift_thresholds_).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mnist_sae.sae import SAE, SAEConfig
from mnist_sae.space import InputSpace
from mnist_sae.sae_train import Calibration, TrainSettings, calibrate, shift_thresholds_, train_sae


@dataclass(frozen=True)
class FitPlan:
    target_l0: float  # mean active latents per example aimed at (calibration, threshold shift)
    train: TrainSettings  # the final training run
    seeds: tuple[int, ...] = (0,)  # one model per seed, trained at once; calibration uses seeds[0]
    lam: float | None = None  # sparsity coefficient; None = calibrate (ignored by topk)
    lam_source: str = "params"  # where a given lam comes from, as FitInfo.lambda_source reports it
    lambdas: tuple[float, ...] = ()  # ascending calibration grid (when lam is None)
    refine: int = 0  # bisection steps after the grid
    calibration: TrainSettings | None = None  # settings of the calibration runs (None = train's)
    shift_thresholds: bool = True  # jumprelu: shift thresholds so that val L0 = target_l0 exactly


@dataclass
class FitInfo:
    lam: float  # the lambda every seed trained with (0.0 for topk)
    lambda_source: str  # "params" | "calibration" | "none (topk)"
    calibration: Calibration | None  # the calibration run, when one was made
    theta_shift: list[float]  # per seed (0.0 without a shift)


def fit_sae(cfg: SAEConfig, z_train_ND: torch.Tensor, z_val_ND: torch.Tensor, plan: FitPlan, *,
            device: str = "cpu", space: InputSpace | None = None, on_step=None,
            batch_source=None) -> tuple[SAE, FitInfo]:
    """(sae with G = len(plan.seeds) models on CPU in eval mode, FitInfo). `space` maps z back to
    logits for the KL term (needed only when plan.train.kl_coef > 0). With `batch_source`
    (sae_train.train_sae's streaming rows, e.g. mnist_sae.acts_fit.CacheBatches) z_train_ND is
    None and training batches are gathered from it; z_val_ND is always in memory."""
    if not plan.seeds:
        raise ValueError("fit_sae: plan.seeds is empty")
    loss_kw = {"space": space, "batch_source": batch_source}
    cal = None
    if cfg.arch == "topk":
        lam, source = 0.0, "none (topk)"
    elif plan.lam is not None:
        lam, source = float(plan.lam), plan.lam_source
    else:
        if not plan.lambdas:
            raise ValueError("fit_sae: lam is None and no calibration grid (plan.lambdas) was given")
        cal = calibrate(cfg, z_train_ND, z_val_ND, plan.target_l0, list(plan.lambdas), plan.refine,
                        plan.calibration or plan.train, plan.seeds[0], device=device, **loss_kw)
        lam, source = cal.lam, "calibration"
    gens = [torch.Generator().manual_seed(s) for s in plan.seeds]
    sae = SAE(cfg, n_models=len(gens), generator=gens).to(device)
    train_sae(sae, z_train_ND, [lam] * len(gens), plan.train, gens, on_step=on_step, **loss_kw)
    sae = sae.cpu().eval()
    shifts = [0.0] * len(gens)
    if cfg.arch == "jumprelu" and plan.shift_thresholds:
        shifts = shift_thresholds_(sae, z_val_ND, plan.target_l0)
    return sae, FitInfo(lam=lam, lambda_source=source, calibration=cal, theta_shift=shifts)
