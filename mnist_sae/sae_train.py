"""SAE training and lambda calibration on in-memory tensors.

One loop, `train_sae`, trains G stacked SAEs (one lambda each) on the same batches: the
calibration runs its whole lambda grid through it at once. Batches are rows of z indexed from a
seeded permutation; Adam is fused; decoder rows are renormalized after every step. At batch 8 the
per-step Python overhead dominates, so the step does no host synchronisation: loss terms are
accumulated on the device and handed to `on_step` every `log_every` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mnist_sae import metrics
from mnist_sae.collect import load_collected, load_stats, to_z
from mnist_sae.sae import SAE, SAEConfig, sae_loss


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 1e-3  # Adam learning rate
    epochs: int = 5  # passes over z
    batch_size: int = 8
    kl_coef: float = 0.0  # weight of KL(softmax(y) || softmax(y_hat)), logit site only
    aux_coef: float = 1 / 32  # topk: weight of the AuxK loss (Gao et al. 2024)
    dead_steps: int = 1000  # topk: a latent that has not fired for this many steps is dead (AuxK)
    lr_decay: float = 0.0  # share of the run's last steps over which the learning rate decays linearly to 0
    log_every: int = 100  # steps between on_step calls
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay, Loshchilov & Hutter 2019), both fused
    weight_decay: float = 0.0  # adamw only


@dataclass
class TrainHistory:
    steps: list[int] = field(default_factory=list)  # step at the end of each logged window
    terms: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> per window, per model


def _check_z(z_ND: torch.Tensor, d: int, what: str) -> None:
    if z_ND.ndim != 2 or z_ND.shape[1] != d or z_ND.shape[0] == 0:
        raise ValueError(f"{what}: expected z [N, {d}] with N > 0, got {tuple(z_ND.shape)}")


def train_sae(sae: SAE, z_ND: torch.Tensor, sparsity_coef_G, settings: TrainSettings,
              generator: torch.Generator, *, mean_D: torch.Tensor | None = None,
              std_D: torch.Tensor | None = None, on_step=None, batch_source=None) -> TrainHistory:
    """Train the G models of `sae` in place, model g with sparsity coefficient sparsity_coef_G[g].

    Minimises sum_G sae_loss(...)["total"] with fused Adam (or AdamW: settings.optimizer) over
    minibatches of a fresh seeded permutation each epoch (the last partial batch is dropped).
    b_dec starts at the mean of z.
    The learning rate decays linearly to 0 over the last `lr_decay` share of the steps (Anthropic,
    "Circuits Updates - April 2024": the last 20%): at batch 8 Adam's steps are noisy, and
    annealing them settles the dictionary (TopK on MNIST logits, seed 2: test accuracy drop
    0.82 -> 0.59 pp).
    `on_step(step, terms)` gets, every settings.log_every steps, the mean of each loss term over
    the window as a CPU tensor [G].
    `batch_source` (rows too many to hold; z_ND is then None): an object with `n_rows`, `mean_D`
    (the mean of its z rows, for b_dec) and `gather(idx_B) -> z_BD` on the device, e.g.
    mnist_sae.acts_fit.CacheBatches reading a memmap; the batches are the same permutation's.
    """
    G, cfg = sae.n_models, sae.cfg
    device = sae.W_dec_GFD.device
    if batch_source is None:
        _check_z(z_ND, cfg.d_in, "train_sae")
        z_ND = z_ND.to(device, torch.float32)
        n, z_mean_D, gather = z_ND.shape[0], z_ND.mean(0), z_ND.__getitem__
    else:
        n, z_mean_D, gather = batch_source.n_rows, batch_source.mean_D.to(device), batch_source.gather
    coef_G = torch.as_tensor(sparsity_coef_G, dtype=torch.float32, device=device).reshape(-1)
    if coef_G.shape != (G,):
        raise ValueError(f"train_sae: {G} models need {G} sparsity coefficients, got {coef_G.numel()}")
    if settings.kl_coef > 0:
        if mean_D is None or std_D is None:
            raise ValueError("train_sae: kl_coef > 0 needs mean_D and std_D (to map z back to logits)")
        mean_D, std_D = mean_D.to(device), std_D.to(device)
    with torch.no_grad():
        sae.b_dec_GD.copy_(z_mean_D.expand(G, -1))
    if settings.optimizer == "adamw":
        opt = torch.optim.AdamW(sae.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    elif settings.optimizer == "adam" and settings.weight_decay == 0:
        opt = torch.optim.Adam(sae.parameters(), lr=settings.lr, fused=True)
    else:
        raise ValueError(f"train_sae: optimizer {settings.optimizer!r} with weight_decay {settings.weight_decay}: "
                         "expected adam (weight_decay 0) or adamw")
    bs = settings.batch_size
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise ValueError(f"train_sae: batch_size {bs} > {n} examples")
    use_aux = cfg.arch == "topk"
    total_steps = steps_per_epoch * settings.epochs
    decay_from = total_steps - int(settings.lr_decay * total_steps)  # first step with a reduced lr
    idle_GF = torch.zeros(G, cfg.n_latents, dtype=torch.long, device=device)  # steps since last fire
    history = TrainHistory()
    names, window, step = None, None, 0
    for _ in range(settings.epochs):
        perm_N = torch.randperm(n, generator=generator).to(device)
        for i in range(steps_per_epoch):
            z_BD = gather(perm_N[i * bs:(i + 1) * bs])
            u_GBF = sae.pre_acts(z_BD)
            a_GBF, penalty_GB = sae.activate(u_GBF)
            z_hat_GBD = sae.decode(a_GBF)
            aux_hat_GBD = None
            if use_aux:
                fired_GF = (a_GBF.detach() != 0).any(1)
                idle_GF = torch.where(fired_GF, 0, idle_GF + 1)
                aux_hat_GBD = sae.aux_decode(u_GBF, idle_GF > settings.dead_steps)
            terms = sae_loss(z_BD, z_hat_GBD, a_GBF, penalty_GB, coef_G, kl_coef=settings.kl_coef,
                             mean_D=mean_D, std_D=std_D, aux_hat_GBD=aux_hat_GBD, aux_coef=settings.aux_coef)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if step >= decay_from:
                opt.param_groups[0]["lr"] = settings.lr * (total_steps - step) / (total_steps - decay_from)
            opt.step()
            sae.normalize_decoder_()
            step += 1
            if names is None:
                names = [k for k in terms if k != "loss"]
                window = torch.zeros(len(names), G, device=device)
            window += torch.stack([terms[k].detach() for k in names])
            if step % settings.log_every == 0:
                means = (window / settings.log_every).cpu()
                window.zero_()
                history.steps.append(step)
                for name, row in zip(names, means):
                    history.terms.setdefault(name, []).append(row.tolist())
                if on_step is not None:
                    on_step(step, dict(zip(names, means)))
    return history


# --- evaluation helpers -------------------------------------------------------------------------


@torch.no_grad()
def hard_l0_G(sae: SAE, z_ND: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """metrics.l0 of each stacked model on z_ND (mean over examples of the non-zero count): [G]."""
    device = sae.W_dec_GFD.device
    count_G = torch.zeros(sae.n_models, dtype=torch.float64)
    for i in range(0, z_ND.shape[0], chunk):
        a_GBF = sae.encode(z_ND[i:i + chunk].to(device, torch.float32)).cpu()
        count_G += torch.stack([metrics.l0_per_example(a_BF).sum() for a_BF in a_GBF]).double()
    return count_G / z_ND.shape[0]


@torch.no_grad()
def shift_thresholds_(sae: SAE, z_ND: torch.Tensor, target_l0: float) -> float:
    """One global shift delta added to every JumpReLU threshold, theta_f <- theta_f + delta, chosen
    so that the mean L0 on z_ND is round(target_l0 * N) / N: delta sits halfway between the m-th
    and (m+1)-th largest u - theta over all (example, latent) pairs, m = round(target_l0 * N).
    Thresholds are kept > 0 (clamped at 1e-6). Returns delta.
    """
    if sae.cfg.arch != "jumprelu" or sae.n_models != 1:
        raise ValueError("shift_thresholds_: needs a single JumpReLU SAE")
    u_NF = torch.cat([sae.pre_acts(z_ND[i:i + 8192].float())[0] for i in range(0, z_ND.shape[0], 8192)])
    theta_F = sae.theta_GF[0]
    margin_sorted = (u_NF - theta_F).flatten().sort(descending=True).values
    m = min(max(int(round(target_l0 * u_NF.shape[0])), 0), margin_sorted.numel())
    hi = margin_sorted[m - 1] if m > 0 else margin_sorted[0] + 1.0
    lo = margin_sorted[m] if m < margin_sorted.numel() else margin_sorted[-1] - 1.0
    delta = float((hi + lo) / 2)
    sae.log_theta_GF.copy_((sae.theta_GF + delta).clamp_min(1e-6).log())
    return delta


# --- calibration --------------------------------------------------------------------------------


@dataclass
class Calibration:
    lam: float  # the chosen lambda: mean val L0 closest to the target over all points tried
    l0: float  # its mean val L0
    points: list[tuple[float, float, str]]  # (lambda, val L0, "grid" | "refine"), in order tried
    bracketed: bool  # the target lay between two grid L0s (else the grid edge was taken)


def lambda_grid(lambda_min: float, lambda_max: float, num: int) -> list[float]:
    """Geometric grid: lambda_min * (lambda_max / lambda_min)^(i / (num - 1)), i = 0..num-1."""
    if num == 1:
        return [float(lambda_min)]
    return [float(v) for v in np.geomspace(lambda_min, lambda_max, num)]


def train_grid(cfg: SAEConfig, z_train_ND: torch.Tensor, z_val_ND: torch.Tensor, lambdas: list[float],
               settings: TrainSettings, seed: int, *, device: str = "cpu", **loss_kw) -> torch.Tensor:
    """Train one SAE per lambda, all at once as a stacked model (same seeded init and batches for
    every point); return the mean hard L0 on z_val per lambda: [G]."""
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, n_models=len(lambdas), generator=gen).to(device)
    train_sae(sae, z_train_ND, lambdas, settings, gen, **loss_kw)
    return hard_l0_G(sae, z_val_ND)


def calibrate(cfg: SAEConfig, z_train_ND: torch.Tensor, z_val_ND: torch.Tensor, target_l0: float,
              lambdas: list[float], refine: int, settings: TrainSettings, seed: int, *,
              device: str = "cpu", **loss_kw) -> Calibration:
    """Pick lambda so that the mean hard L0 on val is closest to target_l0.

    1. Train the whole ascending grid `lambdas` at once (train_grid); L0 falls as lambda grows.
    2. Take the grid point closest to the target and its neighbour on the far side of the target;
       if their L0s bracket the target, bisect `refine` times in log-lambda (one SAE per step,
       the same seed and batches). Otherwise the target lies outside the grid: bracketed False.
    3. Return the point (grid or refine) whose L0 is closest to the target.
    """
    if sorted(lambdas) != list(lambdas) or min(lambdas) <= 0:
        raise ValueError(f"calibrate: lambdas must be ascending and > 0, got {lambdas}")
    l0_G = train_grid(cfg, z_train_ND, z_val_ND, lambdas, settings, seed, device=device, **loss_kw).tolist()
    points = [(lam, l0, "grid") for lam, l0 in zip(lambdas, l0_G)]
    best = int(np.argmin([abs(l0 - target_l0) for l0 in l0_G]))
    # the neighbour on the far side of the target: L0 above the target -> larger lambda
    nb = best + 1 if l0_G[best] > target_l0 else best - 1
    bracketed = 0 <= nb < len(lambdas) and (l0_G[nb] - target_l0) * (l0_G[best] - target_l0) <= 0
    if bracketed:
        lo, hi = sorted((lambdas[best], lambdas[nb]))
        for _ in range(refine):
            mid = math.sqrt(lo * hi)
            l0 = float(train_grid(cfg, z_train_ND, z_val_ND, [mid], settings, seed, device=device, **loss_kw)[0])
            points.append((mid, l0, "refine"))
            if l0 > target_l0:
                lo = mid  # still too dense: more sparsity pressure
            else:
                hi = mid
    lam, l0, _ = min(points, key=lambda p: abs(p[1] - target_l0))
    return Calibration(lam=lam, l0=l0, points=points, bracketed=bool(bracketed))


# --- data -----------------------------------------------------------------------------------------


def load_site(collected_dir, split: str) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """(z_ND, info, mean_D, std_D) from the collect stage's folder: the SAE's input for `split`,
    z = (acts - mean) / std when info["normalize"], else acts, as float32."""
    info, mean_D, std_D = load_stats(collected_dir)
    y_ND, _, _ = load_collected(collected_dir, split)
    return to_z(y_ND, mean_D, std_D, info["normalize"]), info, mean_D, std_D
