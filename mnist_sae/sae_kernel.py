"""The SAE training loop on CPU as one compiled kernel: every step of every stacked model in one call.

At the MNIST SAE's shapes (batch 8, 10 inputs, 32 latents, 3 seeds stacked) a training step is
~30k multiply-adds, and torch spent ~0.74 ms on it: ~70 ATen calls, autograd's graph and the fused
Adam call, each costing more than its arithmetic (README, "The sparse autoencoder"). This module
writes the step out, forward, backward and Adam, and runs all the steps of `train_sae` inside one
Numba function, so a step costs its arithmetic (~0.044 ms; bench/bench_sae_step.py). Its first
call in a checkout compiles it (~10 s, cached in __pycache__ after that).

`sae_train.train_sae` uses it on CPU, in float32, for the archs jumprelu (both gate gradients) and
relu, with or without the KL term, at batch sizes up to 32 (where torch's per-call overhead is
most of a step), when no resampling and no streamed batches are asked for (`supported`):
the train_sae stage and the calibration. Everything else (the baselines' SAE family and the truth
bench at batch 64-128, TopK, every device but the CPU) runs torch's autograd loop. Both
loops train the same model: the same init, batches, loss, gradients, Adam, schedule and decoder
renormalization, to float32 rounding (tests/test_sae_kernel.py compares them step by step). They
are not bit for bit the same: the kernel's arithmetic is its own, defined below, and so are its bits.

Like mnist_sae.sparse_input's kernels it defines its floating-point result completely, so it is
the same on every IEEE-754 machine: sums run in the order written (Numba compiles without
fastmath: no reordering, no fused multiply-adds), and every operation is a correctly rounded add,
multiply, divide or square root. The few transcendental values (exp of log_theta, the sigmoid
gate gradient, the KL term's softmax and log) come from `_exp64` / `_log64` below, polynomials in
float64 evaluated in a fixed order, not from the C library (whose exp and log differ between
versions); they are then rounded to float32 where float32 is stored.

Per model g and step, batch rows z_BD (the rows idx_GSB[g, s] of z_ND), in float32:

    u_bf      = b_enc_f + sum_d z_bd W_enc_df                       (d ascending)
    jumprelu: gate = 1[u > theta], a = u gate, penalty_b = sum_f gate, theta = exp(log_theta)
    relu:     a = max(u, 0), penalty_b = sum_f a
    z_hat_bd  = b_dec_d + sum_f a_bf W_dec_fd                       (f ascending, zero a skipped)
    mse       = sum_bd (z_hat - z)^2 / (B D);   sparsity = sum_b penalty_b / B
    kl        = sum_b KL(softmax(y_b) || softmax(y_hat_b)) / B,  y = z std + mean when normalized
    total     = mse + coef sparsity + kl_coef kl
    backward: the gradients of `total` that autograd computes through mnist_sae.sae (the sigmoid
    or rectangle gate gradient of _JumpReLU, relu's, the KL's softmax(y_hat) - softmax(y)), then
    Adam (m, v, step_size = lr / (1 - b1^t), 1 / sqrt(1 - b2^t) in float64, rounded to float32
    once per step; AdamW first scales the weights by 1 - lr wd) and W_dec rows / max(||row||, 1e-12).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from mnist_sae.sparse_input import _adam_row

_JIT = dict(nogil=True, boundscheck=False, error_model="numpy", cache=True)

ARCH_CODES = {"jumprelu": 0, "relu": 1}
STE_CODES = {"sigmoid": 0, "rectangle": 1}

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm's constants): k ln2 exactly in the high part
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.44269504088896338700e+00
_SQRT_HALF = 0.70710678118654752440
_EXP_C = np.array([1.0 / math.factorial(n) for n in range(14)])  # Taylor coefficients of exp on |r| <= ln2 / 2
_POW2 = np.ldexp(1.0, np.arange(-1022, 1024))  # 2^k, k = -1022..1023 (normal floats: exact)
_LOG_C = np.array([1.0 / n for n in range(1, 24, 2)])  # 1, 1/3, 1/5, ...: log m = 2 atanh(s) = 2 sum s^n / n


@numba.njit(**_JIT)
def _exp64(x):
    """exp(x) in float64 to ~1e-17 relative for -708 <= x <= 709 (0 below, inf above; every value
    the kernel rounds to float32 lies far inside): x = k ln2 + r, |r| <= ln2 / 2, Horner on the
    Taylor series to degree 13 (remainder < 4e-18), times 2^k from a table (exact powers of two)."""
    if x > 709.0:
        return np.inf
    if not x >= -708.0:  # NaN stays NaN
        return 0.0 if x < -708.0 else x
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _EXP_C[13]
    for n in range(12, -1, -1):
        p = p * r + _EXP_C[n]
    return p * _POW2[int(k) + 1022]


@numba.njit(**_JIT)
def _log64(x):
    """log(x) for finite x > 0 in float64: x = m 2^e with m in [sqrt(1/2), sqrt(2)), s = (m - 1) / (m + 1),
    log m = 2 (s + s^3 / 3 + ... + s^23 / 23) (|s| <= 0.172: remainder < 1e-18)."""
    m, e = math.frexp(x)
    if m < _SQRT_HALF:
        m *= 2.0
        e -= 1
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = _LOG_C[11]
    for n in range(10, -1, -1):
        p = p * s2 + _LOG_C[n]
    return e * _LN2_HI + (2.0 * s * p + e * _LN2_LO)


@numba.njit(**_JIT)
def _axpy(a, x_N, y_N):
    for n in range(y_N.shape[0]):
        y_N[n] += a * x_N[n]


@numba.njit(**_JIT)
def _adam(g_N, p_N, m_N, v_N, step_size, b1, omb1, b2, omb2, inv_sqrt_bc2, eps, decay):
    """Adam's update of one flat parameter (the FFN kernels' row update); AdamW first scales the
    weights by decay = 1 - lr wd (1 for Adam: skipped)."""
    if decay != 1:
        for n in range(p_N.shape[0]):
            p_N[n] = p_N[n] * decay
    _adam_row(g_N, p_N, m_N, v_N, step_size, b1, omb1, b2, omb2, inv_sqrt_bc2, eps)


@numba.njit(**_JIT)
def _kl_row(z_D, zh_D, mean_D, std_D, normalize, p_D, q_D):
    """KL(softmax(y) || softmax(y_hat)) of one row in float64; leaves softmax(y) in p_D and
    softmax(y_hat) in q_D (the gradient with respect to y_hat is q - p)."""
    D = z_D.shape[0]
    ymax = -np.inf
    yhmax = -np.inf
    for d in range(D):
        y = z_D[d] * std_D[d] + mean_D[d] if normalize else z_D[d]
        yh = zh_D[d] * std_D[d] + mean_D[d] if normalize else zh_D[d]
        p_D[d] = y
        q_D[d] = yh
        ymax = max(ymax, p_D[d])
        yhmax = max(yhmax, q_D[d])
    sp = 0.0
    sq = 0.0
    for d in range(D):
        p_D[d] = p_D[d] - ymax  # now y - max y (float64)
        q_D[d] = q_D[d] - yhmax
        sp += _exp64(p_D[d])
        sq += _exp64(q_D[d])
    lsp = _log64(sp)
    lsq = _log64(sq)
    kl = 0.0
    for d in range(D):
        logp = p_D[d] - lsp
        logq = q_D[d] - lsq
        p_D[d] = _exp64(logp)
        q_D[d] = _exp64(logq)
        kl += p_D[d] * (logp - logq)
    return kl


@numba.njit(**_JIT)
def _train(z_ND, idx_GSB, W_enc_GDF, W_dec_GFD, b_enc_GF, b_dec_GD, log_theta_GF,
           m_enc_GDF, v_enc_GDF, m_dec_GFD, v_dec_GFD, m_benc_GF, v_benc_GF, m_bdec_GD, v_bdec_GD,
           m_th_GF, v_th_GF, coef_G, arch, ste, width, kl_coef, mean_D, std_D, normalize,
           lr0, decay_from, warm_steps, weight_decay, b1, b2, eps, log_every, out_TGW):
    """All S steps of G models in place (weights and Adam moments); the loss terms' window means
    into out_TGW [terms, G, S // log_every]: mse, sparsity, (kl when kl_coef > 0), total, l0."""
    G, S, B = idx_GSB.shape
    D = z_ND.shape[1]
    Fl = W_enc_GDF.shape[2]
    f32 = np.float32
    jump = arch == 0
    with_kl = kl_coef > 0
    z_BD = np.empty((B, D), dtype=f32)
    zh_BD = np.empty((B, D), dtype=f32)
    dzh_BD = np.empty((B, D), dtype=f32)
    u_BF = np.empty((B, Fl), dtype=f32)
    a_BF = np.empty((B, Fl), dtype=f32)
    gate_BF = np.empty((B, Fl), dtype=f32)
    du_BF = np.empty((B, Fl), dtype=f32)
    theta_F = np.ones(Fl, dtype=f32)
    gW_enc_DF = np.empty((D, Fl), dtype=f32)
    gW_dec_FD = np.empty((Fl, D), dtype=f32)
    gb_enc_F = np.empty(Fl, dtype=f32)
    gb_dec_D = np.empty(D, dtype=f32)
    gth_F = np.empty(Fl, dtype=f32)
    da_F = np.empty(Fl, dtype=f32)
    W_dec_DF = np.empty((D, Fl), dtype=f32)
    p_D = np.empty(D, dtype=np.float64)
    q_D = np.empty(D, dtype=np.float64)
    win_TG = np.zeros((out_TGW.shape[0], G), dtype=f32)
    mse_scale = f32(2.0) / f32(B * D)  # d mse / d z_hat = 2 (z_hat - z) / (B D)
    b1f, b2f, omb1, omb2 = f32(b1), f32(b2), f32(1.0 - b1), f32(1.0 - b2)
    inv_width = f32(1.0) / width
    w = 0
    for s in range(S):
        lr = lr0 * (S - s) / (S - decay_from) if s >= decay_from else lr0  # float64, as the torch loop's float
        t = s + 1
        step_size = f32(lr / (1.0 - b1 ** t))
        inv_sqrt_bc2 = f32(1.0 / math.sqrt(1.0 - b2 ** t))
        decay = f32(1.0 - lr * weight_decay)
        ramp = f32(1.0) if s >= warm_steps else f32((s + 1) / warm_steps)  # sparsity warm-up
        for g in range(G):
            coef = coef_G[g] * ramp
            for b in range(B):
                z_BD[b] = z_ND[idx_GSB[g, s, b]]
            if jump:
                for f in range(Fl):
                    theta_F[f] = f32(_exp64(float(log_theta_GF[g, f])))
            # forward
            pen = f32(0.0)
            nnz = 0
            for b in range(B):
                u_BF[b] = b_enc_GF[g]
                for d in range(D):
                    _axpy(z_BD[b, d], W_enc_GDF[g, d], u_BF[b])
                for f in range(Fl):
                    u = u_BF[b, f]
                    if jump:
                        on = u > theta_F[f]
                        gate_BF[b, f] = f32(1.0) if on else f32(0.0)
                        a_BF[b, f] = u if on else f32(0.0)
                        pen += gate_BF[b, f]
                    else:
                        a_BF[b, f] = u if u > 0 else f32(0.0)
                        pen += a_BF[b, f]
                    if a_BF[b, f] != 0:
                        nnz += 1
                zh_BD[b] = b_dec_GD[g]
                for f in range(Fl):
                    if a_BF[b, f] != 0:
                        _axpy(a_BF[b, f], W_dec_GFD[g, f], zh_BD[b])
            sq = f32(0.0)
            for b in range(B):
                for d in range(D):
                    diff = zh_BD[b, d] - z_BD[b, d]
                    sq += diff * diff
                    dzh_BD[b, d] = diff * mse_scale
            mse = sq / f32(B * D)
            kl = 0.0
            if with_kl:
                for b in range(B):
                    kl += _kl_row(z_BD[b], zh_BD[b], mean_D, std_D, normalize, p_D, q_D)
                    for d in range(D):
                        dy = kl_coef * (q_D[d] - p_D[d]) / B
                        dzh_BD[b, d] += f32(dy * std_D[d] if normalize else dy)
            kl_G = f32(kl / B)
            sparsity = pen / f32(B)
            total = mse + coef * sparsity
            if with_kl:
                total = total + f32(kl_coef) * kl_G
            # backward: decoder
            gb_dec_D[:] = 0
            gW_dec_FD[:] = 0
            for b in range(B):
                for d in range(D):
                    gb_dec_D[d] += dzh_BD[b, d]
                for f in range(Fl):
                    if a_BF[b, f] != 0:
                        _axpy(a_BF[b, f], dzh_BD[b], gW_dec_FD[f])
            # through the activation (dgate: the sparsity term's weight per example)
            dgate = coef / f32(B)
            gth_F[:] = 0
            for d in range(D):
                for f in range(Fl):
                    W_dec_DF[d, f] = W_dec_GFD[g, f, d]
            for b in range(B):
                da_F[:] = 0  # da_bf = sum_d dz_hat_bd W_dec_fd, d ascending from +0.0 (one row at a time)
                for d in range(D):
                    _axpy(dzh_BD[b, d], W_dec_DF[d], da_F)
                for f in range(Fl):
                    da = da_F[f]
                    u = u_BF[b, f]
                    if jump:
                        x = (u - theta_F[f]) / width
                        if ste == 0:
                            sg = 1.0 / (1.0 + _exp64(-float(x)))
                            ds = f32(sg * (1.0 - sg) / width)
                            through = (da * u + dgate) * ds
                            du_BF[b, f] = da * gate_BF[b, f] + through
                            gth_F[f] -= through
                        else:
                            k = inv_width if abs(x) < 0.5 else f32(0.0)
                            du_BF[b, f] = da * gate_BF[b, f]
                            gth_F[f] -= k * (da * theta_F[f] + dgate)
                    else:
                        du_BF[b, f] = da + dgate if u > 0 else f32(0.0)
            # encoder
            gb_enc_F[:] = 0
            gW_enc_DF[:] = 0
            for b in range(B):
                for f in range(Fl):
                    gb_enc_F[f] += du_BF[b, f]
                for d in range(D):
                    if z_BD[b, d] != 0:
                        _axpy(z_BD[b, d], du_BF[b], gW_enc_DF[d])
            # Adam, then unit decoder rows
            _adam(gW_enc_DF.reshape(-1), W_enc_GDF[g].reshape(-1), m_enc_GDF[g].reshape(-1), v_enc_GDF[g].reshape(-1),
                  step_size, b1f, omb1, b2f, omb2, inv_sqrt_bc2, eps, decay)
            _adam(gW_dec_FD.reshape(-1), W_dec_GFD[g].reshape(-1), m_dec_GFD[g].reshape(-1), v_dec_GFD[g].reshape(-1),
                  step_size, b1f, omb1, b2f, omb2, inv_sqrt_bc2, eps, decay)
            _adam(gb_enc_F, b_enc_GF[g], m_benc_GF[g], v_benc_GF[g], step_size, b1f, omb1, b2f, omb2, inv_sqrt_bc2, eps, decay)
            _adam(gb_dec_D, b_dec_GD[g], m_bdec_GD[g], v_bdec_GD[g], step_size, b1f, omb1, b2f, omb2, inv_sqrt_bc2, eps, decay)
            if jump:
                for f in range(Fl):
                    gth_F[f] = gth_F[f] * theta_F[f]  # d/dlog_theta = d/dtheta * theta
                _adam(gth_F, log_theta_GF[g], m_th_GF[g], v_th_GF[g], step_size, b1f, omb1, b2f, omb2, inv_sqrt_bc2, eps, decay)
            for f in range(Fl):
                ss = f32(0.0)
                for d in range(D):
                    ss += W_dec_GFD[g, f, d] * W_dec_GFD[g, f, d]
                nrm = max(np.sqrt(ss), f32(1e-12))
                for d in range(D):
                    W_dec_GFD[g, f, d] = W_dec_GFD[g, f, d] / nrm
            # the loss terms' window
            i = 0
            win_TG[i, g] += mse
            win_TG[i + 1, g] += sparsity
            i += 2
            if with_kl:
                win_TG[i, g] += kl_G
                i += 1
            win_TG[i, g] += total
            win_TG[i + 1, g] += f32(nnz) / f32(B)
        if t % log_every == 0 and w < out_TGW.shape[2]:
            for i in range(win_TG.shape[0]):
                for g in range(G):
                    out_TGW[i, g, w] = win_TG[i, g] / f32(log_every)
            win_TG[:] = 0
            w += 1


# Above this batch size torch's loop is as fast (its per-call overhead is then a small part of a
# step); measured here (AMD EPYC, one thread) per step, kernel / torch: batch 8, 3 models, KL
# 38 / 700 us; batch 32: 128 / 654 us; batch 64 (D 32, F 64, 10 models): 1968 / 1477 us;
# batch 128 (16 models): 2141 / 1977 us.
MAX_BATCH = 32


def supported(arch: str, device: torch.device, dtype: torch.dtype, *, batch_size: int, streamed: bool,
              resample_every: int, sparse_topk: bool) -> bool:
    """Whether train_sae runs this kernel: CPU float32, arch jumprelu or relu, batch_size <= MAX_BATCH,
    rows in memory, no resampling."""
    return (device.type == "cpu" and dtype == torch.float32 and arch in ARCH_CODES and batch_size <= MAX_BATCH
            and not streamed and resample_every == 0 and not sparse_topk)


def term_names(kl: bool) -> list[str]:
    """The loss terms the kernel logs, in sae_loss's order."""
    return ["mse", "sparsity"] + (["kl"] if kl else []) + ["total", "l0"]


def train(params: dict[str, torch.Tensor], z_ND: torch.Tensor, idx_GSB: np.ndarray, coef_G: torch.Tensor, *,
          arch: str, ste: str, width: float, kl_coef: float, space, lr: float, decay_from: int, warm_steps: int,
          weight_decay: float, log_every: int, betas=(0.9, 0.999), eps: float = 1e-8) -> np.ndarray:
    """Train the stacked SAE whose parameters are `params` (W_enc_GDF, W_dec_GFD, b_enc_GF, b_dec_GD
    and, for jumprelu, log_theta_GF; written back in place) on the batches z_ND[idx_GSB[g, s]] of
    model g at step s, from fresh Adam moments. Returns the window means of the loss terms,
    [len(term_names(kl_coef > 0)), G, S // log_every]."""
    f32 = np.float32
    arrays = {k: np.ascontiguousarray(v.detach().numpy(), dtype=f32) for k, v in params.items()}
    G, S, _ = idx_GSB.shape
    if "log_theta_GF" not in arrays:
        arrays["log_theta_GF"] = np.zeros_like(arrays["b_enc_GF"])
    moments = {k: (np.zeros_like(a), np.zeros_like(a)) for k, a in arrays.items()}
    with_kl = kl_coef > 0
    if with_kl:
        mean_D, std_D, normalize = space.y_mean_D.numpy().astype(f32), space.y_std_D.numpy().astype(f32), space.normalize
    else:
        mean_D = std_D = np.zeros(z_ND.shape[1], dtype=f32)
        normalize = False
    out_TGW = np.zeros((len(term_names(with_kl)), G, S // log_every), dtype=f32)
    order = ("W_enc_GDF", "W_dec_GFD", "b_enc_GF", "b_dec_GD", "log_theta_GF")
    _train(np.ascontiguousarray(z_ND.numpy(), dtype=f32), np.ascontiguousarray(idx_GSB, dtype=np.int64),
           *(arrays[k] for k in order), *(m for k in order for m in moments[k]),
           coef_G.numpy().astype(f32), ARCH_CODES[arch], STE_CODES[ste], f32(width), float(kl_coef),
           mean_D, std_D, bool(normalize), float(lr), int(decay_from),
           int(warm_steps), float(weight_decay), float(betas[0]), float(betas[1]), f32(eps), int(log_every), out_TGW)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(arrays[k]))
    return out_TGW
