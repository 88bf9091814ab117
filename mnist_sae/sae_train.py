"""SAE training and lambda calibration on in-memory tensors.

One loop, `train_sae`, trains G stacked SAEs (one lambda each) on the same batches: the
calibration runs its whole lambda grid through it at once. Batches are rows of z indexed from a
seeded permutation; Adam is torch's fused kernel, called without the Optimizer wrapper
(mnist_sae.adam); decoder rows are renormalized after every step. At batch 8 the per-step Python
overhead dominates, so the step does no host synchronisation: loss terms are accumulated on the
device and handed to `on_step` every `log_every` steps. On CPU at batch <= 32 (the train_sae stage,
calibration) the same loop runs as one compiled kernel instead (mnist_sae.sae_kernel: the same
training to float32 rounding, ~16x faster per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mnist_sae import metrics, sae_kernel
from mnist_sae.adam import FusedAdam
from mnist_sae.sae import SAE, SAEConfig, sae_loss
from mnist_sae.settings import DECODER_INITS, TrainSettings, lambda_grid  # noqa: F401  (lambda_grid: its importers' name)
from mnist_sae.space import InputSpace


def _check_z(z_ND: torch.Tensor, d: int, what: str) -> None:
    if z_ND.ndim != 2 or z_ND.shape[1] != d or z_ND.shape[0] == 0:
        raise ValueError(f"{what}: expected z [N, {d}] with N > 0, got {tuple(z_ND.shape)}")


def train_sae(sae: SAE, z_ND: torch.Tensor, sparsity_coef_G, settings: TrainSettings,
              generator: torch.Generator | list[torch.Generator], *, space: InputSpace | None = None,
              on_step=None, batch_source=None, kernel: bool | None = None) -> None:
    """Train the G models of `sae` in place, model g with sparsity coefficient sparsity_coef_G[g].

    Minimises sum_G sae_loss(...)["total"] with fused Adam (or AdamW: settings.optimizer) over
    minibatches of a fresh seeded permutation each epoch (the last partial batch is dropped).
    b_dec starts at the mean of z.
    One generator: every model sees the same batches (a lambda grid). A list of G generators (the
    ones the models were drawn from, see SAE): model g draws its own permutation from generator g,
    so G seeds train at once and model g sees the batches a single run with that seed would.
    The learning rate decays linearly to 0 over the last `lr_decay` share of the steps (Anthropic,
    "Circuits Updates - April 2024": the last 20%): at batch 8 Adam's steps are noisy, and
    annealing them settles the dictionary (TopK on MNIST logits, seed 2: test accuracy drop
    0.82 -> 0.59 pp).
    `on_step(step, terms)` gets, every settings.log_every steps, the mean of each loss term over
    the window as a CPU tensor [G].
    `batch_source` (rows too many to hold; z_ND is then None): an object with `n_rows`, `z_mean_D`
    (the mean of its z rows, for b_dec) and `gather(idx_B) -> z_BD` on the device, e.g.
    mnist_sae.acts_fit.CacheBatches reading a memmap; the batches are the same permutation's.
    `kernel`: run all steps in mnist_sae.sae_kernel (the same training to float32 rounding, ~18x
    faster at batch 8); None = where it applies and pays (sae_kernel.supported), False = torch's
    autograd loop below.
    """
    G, cfg = sae.n_models, sae.cfg
    device = sae.W_dec_GFD.device
    if batch_source is None:
        _check_z(z_ND, cfg.d_in, "train_sae")
        z_ND = z_ND.to(device, torch.float32)
        n, z_mean_D, gather = z_ND.shape[0], z_ND.mean(0), z_ND.__getitem__
    else:
        n, z_mean_D, gather = batch_source.n_rows, batch_source.z_mean_D.to(device), batch_source.gather
    coef_G = torch.as_tensor(sparsity_coef_G, dtype=torch.float32, device=device).reshape(-1)
    if coef_G.shape != (G,):
        raise ValueError(f"train_sae: {G} models need {G} sparsity coefficients, got {coef_G.numel()}")
    if settings.kl_coef > 0:
        if space is None:
            raise ValueError("train_sae: kl_coef > 0 needs the input space (to map z back to logits)")
        space = space.to(device)
    if settings.decoder_init not in DECODER_INITS:
        raise ValueError(f"train_sae: decoder_init {settings.decoder_init!r}: expected one of {DECODER_INITS}")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]  # one model: its own generator is the shared one
    per_model = isinstance(generator, (list, tuple))
    if per_model and len(generator) != G:
        raise ValueError(f"train_sae: {G} models need 1 or {G} generators, got {len(generator)}")
    gens = list(generator) if per_model else [generator]
    with torch.no_grad():
        sae.b_dec_GD.copy_(z_mean_D.expand(G, -1))
    if settings.decoder_init == "data":
        init_from_data_(sae, gather, n, gens)
    if not (settings.optimizer == "adamw" or (settings.optimizer == "adam" and settings.weight_decay == 0)):
        raise ValueError(f"train_sae: optimizer {settings.optimizer!r} with weight_decay {settings.weight_decay}: "
                         "expected adam (weight_decay 0) or adamw")
    bs = settings.batch_size
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise ValueError(f"train_sae: batch_size {bs} > {n} examples")
    use_aux = cfg.arch == "topk"
    if settings.sparse_topk and not use_aux:
        raise ValueError(f"train_sae: sparse_topk needs arch topk, got {cfg.arch!r}")
    if settings.select_bf16 and not settings.sparse_topk:
        raise ValueError("train_sae: select_bf16 needs sparse_topk")
    select_dtype = torch.bfloat16 if settings.select_bf16 else None
    total_steps = steps_per_epoch * settings.epochs
    decay_from = total_steps - int(settings.lr_decay * total_steps)  # first step with a reduced lr
    # sparsity warm-up (Anthropic, "Circuits Updates - April 2024": lambda ramped up over the first 5%)
    warm_steps = int(settings.sparsity_warmup * total_steps)
    if kernel is None:
        kernel = sae_kernel.supported(cfg.arch, device, sae.W_dec_GFD.dtype, batch_size=bs, streamed=batch_source is not None,
                                      resample_every=settings.resample_every, sparse_topk=settings.sparse_topk)
    if kernel:
        _train_in_kernel(sae, z_ND, coef_G, settings, generator, per_model, space, steps_per_epoch, decay_from,
                         warm_steps, on_step)
        return
    if settings.optimizer == "adamw":
        opt = FusedAdam(sae.parameters(), settings.lr, weight_decay=settings.weight_decay, decoupled=True)
    else:
        opt = FusedAdam(sae.parameters(), settings.lr)
    fired_window_GF = torch.zeros(G, cfg.n_latents, dtype=torch.bool, device=device)  # for resampling
    idle_GF = torch.zeros(G, cfg.n_latents, dtype=torch.long, device=device)  # steps since last fire
    names, window, step = None, None, 0
    for _ in range(settings.epochs):
        perm_N = _epoch_order(n, generator, per_model).to(device)  # [G, N] per model: z_BD is then [G, B, D]
        for i in range(steps_per_epoch):
            z_BD = gather(perm_N[..., i * bs:(i + 1) * bs])
            if settings.sparse_topk:  # a_GBF is then a_GBK: the k active latents of each row
                u_GBF, idx_GBK, fired_GF = sae.topk_select(z_BD, select_dtype)
                idle_GF = torch.where(fired_GF, 0, idle_GF + 1)
                dead_GF = idle_GF > settings.dead_steps
                # none dead (the usual case): aux_decode's output is exactly 0, with no gradient
                aux = sae.aux_select(u_GBF, dead_GF) if bool(dead_GF.any()) else None
                z_hat_GBD, a_GBF, aux_hat_GBD = sae.sparse_forward(z_BD, u_GBF, idx_GBK, aux)
                if aux_hat_GBD is None:
                    aux_hat_GBD = torch.zeros_like(z_hat_GBD)
                penalty_GB = z_hat_GBD.new_zeros(G, z_hat_GBD.shape[1])
            else:
                u_GBF = sae.pre_acts(z_BD)
                a_GBF, penalty_GB = sae.activate(u_GBF)
                z_hat_GBD = sae.decode(a_GBF)
                aux_hat_GBD = None
                fired_GF = (a_GBF.detach() != 0).any(1) if use_aux or settings.resample_every else None
                if use_aux:
                    idle_GF = torch.where(fired_GF, 0, idle_GF + 1)
                    aux_hat_GBD = sae.aux_decode(u_GBF, idle_GF > settings.dead_steps)
            step_coef_G = coef_G if step >= warm_steps else coef_G * ((step + 1) / warm_steps)
            terms = sae_loss(z_BD, z_hat_GBD, a_GBF, penalty_GB, step_coef_G, kl_coef=settings.kl_coef,
                             space=space, aux_hat_GBD=aux_hat_GBD, aux_coef=settings.aux_coef)
            opt.zero_grad()
            terms["loss"].backward()
            if step >= decay_from:
                opt.lr = settings.lr * (total_steps - step) / (total_steps - decay_from)
            opt.step()
            sae.normalize_decoder_()
            step += 1
            if settings.resample_every:
                fired_window_GF |= fired_GF
                if step % settings.resample_every == 0 and step <= decay_from:
                    resample_dead_(sae, opt, ~fired_window_GF, gather, n, gens)
                    fired_window_GF.zero_()
            if names is None:
                names = [k for k in terms if k != "loss"]
                window = [torch.zeros(G, device=device) for _ in names]
            torch._foreach_add_(window, [terms[k].detach() for k in names])  # one call for every term
            if step % settings.log_every == 0:
                means = [(w / settings.log_every).cpu() for w in window]
                torch._foreach_zero_(window)
                if on_step is not None:
                    on_step(step, dict(zip(names, means)))


def _epoch_order(n: int, generator, per_model: bool) -> torch.Tensor:
    """One epoch's row order: [G, n], a permutation from each model's generator, or [n], one
    permutation every model shares (one generator)."""
    if per_model:
        return torch.stack([torch.randperm(n, generator=g) for g in generator])
    return torch.randperm(n, generator=generator)


def _train_in_kernel(sae: SAE, z_ND: torch.Tensor, coef_G: torch.Tensor, settings: TrainSettings, generator,
                     per_model: bool, space: InputSpace | None, steps_per_epoch: int, decay_from: int,
                     warm_steps: int, on_step) -> None:
    """train_sae's loop in mnist_sae.sae_kernel: the same batches (each epoch's `_epoch_order`,
    drawn in the same order), all steps in one call, then on_step per window."""
    G, bs = sae.n_models, settings.batch_size
    n = z_ND.shape[0]
    epochs = []
    for _ in range(settings.epochs):
        perm_GN = _epoch_order(n, generator, per_model).expand(G, n)
        epochs.append(perm_GN[:, :steps_per_epoch * bs].reshape(G, steps_per_epoch, bs))
    cfg = sae.cfg
    params = {"W_enc_GDF": sae.W_enc_GDF, "W_dec_GFD": sae.W_dec_GFD, "b_enc_GF": sae.b_enc_GF, "b_dec_GD": sae.b_dec_GD}
    if cfg.arch == "jumprelu":
        params["log_theta_GF"] = sae.log_theta_GF
    out_TGW = sae_kernel.train(
        params, z_ND, torch.cat(epochs, 1).numpy(), coef_G, arch=cfg.arch, ste=cfg.ste,
        width=cfg.tau if cfg.ste == "sigmoid" else cfg.bandwidth, kl_coef=settings.kl_coef, space=space,
        lr=settings.lr, decay_from=decay_from, warm_steps=warm_steps,
        weight_decay=settings.weight_decay if settings.optimizer == "adamw" else 0.0, log_every=settings.log_every)
    if on_step is not None:
        names = sae_kernel.term_names(settings.kl_coef > 0)
        for w in range(out_TGW.shape[2]):
            on_step((w + 1) * settings.log_every, {k: torch.from_numpy(out_TGW[i, :, w].copy()) for i, k in enumerate(names)})


@torch.no_grad()
def init_from_data_(sae: SAE, gather, n: int, gens: list[torch.Generator]) -> None:
    """Decoder rows <- (z_i - b_dec) / ||z_i - b_dec|| for F training rows i drawn without
    replacement from the n rows that gather(idx) returns (model g with generator g, or one draw
    shared by all models); encoder = decoder transpose. Every latent then starts pointing at real
    data, so none starts dead (a data-sampled init, as k-means++ seeding or Anthropic's resampling
    start from real inputs)."""
    G, Fl = sae.n_models, sae.cfg.n_latents
    device = sae.W_dec_GFD.device
    shared = len(gens) != G or G == 1  # one generator: one draw, the same init for every model (a grid)
    idx_F = torch.randperm(n, generator=gens[0])[:Fl].to(device) if shared else None
    for g in range(G):
        if not shared:
            idx_F = torch.randperm(n, generator=gens[g])[:Fl].to(device)
        W_FD = gather(idx_F) - sae.b_dec_GD[g]
        W_FD = W_FD / W_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sae.W_dec_GFD[g].copy_(W_FD)
        sae.W_enc_GDF[g].copy_(W_FD.T)


@torch.no_grad()
def resample_dead_(sae: SAE, opt: FusedAdam, dead_GF: torch.Tensor, gather, n: int,
                   gens: list[torch.Generator], n_candidates: int = 4096) -> int:
    """Resample latents that did not fire over the last window (Anthropic, "Towards
    Monosemanticity", 2023, appendix: neuron resampling): draw candidate rows, weight each by its
    squared reconstruction error under the current model, and point each dead latent's decoder
    row at a drawn row's residual z - z_hat (unit norm); its encoder column is that direction
    times 0.2 x the mean encoder-column norm of the live latents, its encoder bias 0, a JumpReLU
    threshold its mean over live latents; Adam's moments of the touched entries are reset.
    Returns the number of latents resampled."""
    G = sae.n_models
    jumprelu = sae.cfg.arch == "jumprelu"
    touched = (sae.W_dec_GFD, sae.W_enc_GDF, sae.b_enc_GF) + ((sae.log_theta_GF,) if jumprelu else ())
    total = 0
    for g in range(G):
        dead_F = dead_GF[g]
        n_dead = int(dead_F.sum())
        if n_dead == 0 or n_dead == dead_F.numel():
            continue
        gen = gens[g if len(gens) == G else 0]
        idx_C = torch.randint(n, (min(n_candidates, n),), generator=gen).to(sae.W_dec_GFD.device)
        z_CD = gather(idx_C)
        one = sae.select(g)
        z_hat_CD = one(z_CD)[0][0]
        resid_CD = z_CD - z_hat_CD
        err_C = resid_CD.square().sum(-1)
        if float(err_C.sum()) <= 0:
            continue
        pick = torch.multinomial(err_C.cpu(), n_dead, replacement=n_dead > err_C.numel(), generator=gen).to(z_CD.device)
        dirs_KD = resid_CD[pick] / resid_CD[pick].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        dead_idx = dead_F.nonzero().flatten()
        live_norm = sae.W_enc_GDF[g][:, ~dead_F].norm(dim=0).mean()
        sae.W_dec_GFD[g, dead_idx] = dirs_KD
        sae.W_enc_GDF[g][:, dead_idx] = dirs_KD.T * 0.2 * live_norm
        sae.b_enc_GF[g, dead_idx] = 0.0
        if jumprelu:
            sae.log_theta_GF[g, dead_idx] = sae.log_theta_GF[g][~dead_F].mean()
        for p in touched:  # FusedAdam holds every parameter's moments from the start
            for key in ("exp_avg", "exp_avg_sq"):
                if p is sae.W_enc_GDF:
                    opt.state[p][key][g][:, dead_idx] = 0.0
                else:
                    opt.state[p][key][g, dead_idx] = 0.0
        total += n_dead
    return total


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
def shift_thresholds_(sae: SAE, z_ND: torch.Tensor, target_l0: float) -> list[float]:
    """For each JumpReLU model g, one global shift delta_g added to all its thresholds,
    theta_gf <- theta_gf + delta_g, chosen so that its mean L0 on z_ND is round(target_l0 * N) / N:
    delta_g sits halfway between the m-th and (m+1)-th largest u - theta over all (example, latent)
    pairs, m = round(target_l0 * N). Thresholds are kept > 0 (clamped at 1e-6). Returns [delta_g].
    """
    if sae.cfg.arch != "jumprelu":
        raise ValueError("shift_thresholds_: needs a JumpReLU SAE")
    z_ND = z_ND.to(sae.W_dec_GFD.device, torch.float32)
    u_GNF = torch.cat([sae.pre_acts(z_ND[i:i + 8192]) for i in range(0, z_ND.shape[0], 8192)], dim=1)
    deltas = []
    for g in range(sae.n_models):
        theta_F = sae.theta_GF[g]
        margin_sorted = (u_GNF[g] - theta_F).flatten().sort(descending=True).values
        m = min(max(int(round(target_l0 * u_GNF.shape[1])), 0), margin_sorted.numel())
        hi = margin_sorted[m - 1] if m > 0 else margin_sorted[0] + 1.0
        lo = margin_sorted[m] if m < margin_sorted.numel() else margin_sorted[-1] - 1.0
        delta = float((hi + lo) / 2)
        sae.log_theta_GF[g].copy_((theta_F + delta).clamp_min(1e-6).log())
        deltas.append(delta)
    return deltas


# --- calibration --------------------------------------------------------------------------------


@dataclass
class Calibration:
    lam: float  # the chosen lambda: mean val L0 closest to the target over all points tried
    l0: float  # its mean val L0
    points: list[tuple[float, float, str]]  # (lambda, val L0, "grid" | "refine"), in order tried
    bracketed: bool  # the target lay between two grid L0s (else the grid edge was taken)


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
