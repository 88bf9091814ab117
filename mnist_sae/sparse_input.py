"""The FFN's first layer on CPU: kernels of our own for a product whose input is mostly zeros.

An MNIST image has ~150 of its 784 pixels non-zero, and the sweep trains at batch 8, where
MKL's GEMM (8 x 784 @ 784 x 8192) ran at ~11 GFLOP/s under the portable pin and took half of
the 8192-wide step (README, The FFN sweep). Two kernels, compiled by Numba, replace it:

    matmul(x_BI, W_IH)          x_BI @ W_IH, skipping the zero entries of x
    SparseInputAdam.step(...)   the weight gradient x_BI^T @ d_BH and Adam's update of W_IH,
                                one pass over W, m and v (the gradient is never stored), and
                                in the same pass the next batch's product with the new W

Both define their floating-point result completely, so it is the same on every IEEE-754 machine
(no BLAS, no vendor or ISA dispatch, no threads): every output element is a float32 sum in a fixed
order, and every operation is a correctly rounded multiply, add, divide or square root (Numba
compiles without fastmath, so LLVM neither reorders sums nor fuses multiply-adds; wider vectors
only compute more independent elements at once).

    matmul:  out[b, n] = sum over k = 0, 1, ... of x[b, k] * W[k, n], terms with x[b, k] == 0
             skipped, accumulated in float32 from +0.0
    Adam:    g[k, n] = sum over b = 0, 1, ... of x[b, k] * d[b, n], zero x skipped, from +0.0
             m = b1 * m + (1 - b1) * g
             v = b2 * v + (1 - b2) * (g * g)
             W = W - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
             with step_size = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) computed in
             float64 and rounded to float32 once per step (torch.optim.Adam's update, written out).
             A row whose pixel has been zero in every batch so far is skipped: its m and v are
             still exactly 0, so the update above would leave W, m and v as they are (69 of
             MNIST's 784 pixels are zero in every training image).

error_model="numpy" lets a division by zero give inf like NumPy instead of a Python exception;
that check is what kept LLVM from vectorizing the Adam loop (18 ms -> 3.8 ms per 8192-wide
update, measured on the AMD EPYC VM of the README).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

_JIT = dict(nogil=True, boundscheck=False, error_model="numpy", cache=True)
TILE = 512  # output columns per pass (the bits do not depend on it); 256-1024 were alike at batch 8 and 4096


@numba.njit(**_JIT)
def _axpy(a, x_N, y_N):
    for n in range(y_N.shape[0]):
        y_N[n] += a * x_N[n]


@numba.njit(**_JIT)
def _matmul_into(x_BI, W_IH, out_BH, tile):
    B, I = x_BI.shape
    H = W_IH.shape[1]
    nnz_B = np.zeros(B, dtype=np.int64)
    cols_BI = np.empty((B, I), dtype=np.int64)
    for b in range(B):
        for k in range(I):
            if x_BI[b, k] != 0:
                cols_BI[b, nnz_B[b]] = k
                nnz_B[b] += 1
    out_BH[:] = 0
    for n0 in range(0, H, tile):
        n1 = min(n0 + tile, H)
        for b in range(B):
            row = out_BH[b, n0:n1]
            for j in range(nnz_B[b]):
                k = cols_BI[b, j]
                _axpy(x_BI[b, k], W_IH[k, n0:n1], row)


@numba.njit(**_JIT)
def _adam_row(g_N, p_N, m_N, v_N, step_size, b1, omb1, b2, omb2, inv_sqrt_bc2, eps):
    for n in range(p_N.shape[0]):
        g = g_N[n]
        m = b1 * m_N[n] + omb1 * g
        v = b2 * v_N[n] + omb2 * (g * g)
        m_N[n] = m
        v_N[n] = v
        p_N[n] = p_N[n] - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)


@numba.njit(**_JIT)
def _grad_adam(x_BI, d_BH, W_IH, m_IH, v_IH, touched_I, step_size, b1, omb1, b2, omb2, inv_sqrt_bc2, eps,
               xn_CI, out_CH):
    """The update of the docstring, row by row; then, while row k of the new W is in cache, its
    terms of the next batch's product out_CH = xn_CI @ W (k ascending, as _matmul_into)."""
    B, I = x_BI.shape
    g_H = np.empty(W_IH.shape[1], dtype=np.float32)
    out_CH[:] = 0
    for k in range(I):
        if not touched_I[k]:
            for b in range(B):
                if x_BI[b, k] != 0:
                    touched_I[k] = True
        if touched_I[k]:  # else m = v = 0 and g = 0: the update would leave W, m and v exactly as they are
            g_H[:] = 0
            for b in range(B):
                if x_BI[b, k] != 0:
                    _axpy(x_BI[b, k], d_BH[b], g_H)
            _adam_row(g_H, W_IH[k], m_IH[k], v_IH[k], step_size, b1, omb1, b2, omb2, inv_sqrt_bc2, eps)
        for c in range(xn_CI.shape[0]):
            if xn_CI[c, k] != 0:
                _axpy(xn_CI[c, k], W_IH[k], out_CH[c])


def _as_array(t: torch.Tensor) -> np.ndarray:
    """A float32, C-contiguous CPU tensor's memory as an array (no copy)."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        raise ValueError(f"sparse_input: expected a contiguous float32 CPU tensor, got {t.dtype} on {t.device}")
    return t.detach().numpy()


def product(x_BI: torch.Tensor, W_IH: torch.Tensor) -> torch.Tensor:
    """x_BI @ W_IH by the kernel above; no autograd (the training step supplies the gradient)."""
    out_BH = torch.empty(x_BI.shape[0], W_IH.shape[1], dtype=torch.float32)
    _matmul_into(_as_array(x_BI.contiguous()), _as_array(W_IH), out_BH.numpy(), TILE)
    return out_BH


class _Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BI, W_IH):
        ctx.save_for_backward(x_BI, W_IH)
        return product(x_BI, W_IH)

    @staticmethod
    def backward(ctx, d_BH):
        x_BI, W_IH = ctx.saved_tensors
        dx_BI = d_BH @ W_IH.T if ctx.needs_input_grad[0] else None
        dW_IH = x_BI.T @ d_BH if ctx.needs_input_grad[1] else None
        return dx_BI, dW_IH


def matmul(x_BI: torch.Tensor, W_IH: torch.Tensor) -> torch.Tensor:
    """x_BI @ W_IH: the kernel on CPU (float32), with gradients for x and W by torch's matmul
    (features.py differentiates the FFN by its input); plain `@` on other devices and dtypes."""
    if x_BI.device.type == "cpu" and x_BI.dtype == torch.float32 and W_IH.dtype == torch.float32:
        return _Matmul.apply(x_BI, W_IH.contiguous())
    return x_BI @ W_IH


class SparseInputAdam:
    """Adam (torch.optim.Adam's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay) for one
    first-layer weight W_IH, updated in place from the batch x_BI and d_BH = dloss/d(x_BI @ W_IH)."""

    def __init__(self, W_IH: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.W_IH = _as_array(W_IH)
        self.m_IH = np.zeros_like(self.W_IH)
        self.v_IH = np.zeros_like(self.W_IH)
        self.touched_I = np.zeros(self.W_IH.shape[0], dtype=np.bool_)  # rows whose pixel was non-zero in a batch so far
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0

    def step(self, x_BI: torch.Tensor, d_BH: torch.Tensor, x_next_CI: torch.Tensor | None = None) -> torch.Tensor | None:
        """One update; with x_next_CI, also returns x_next_CI @ W (the updated W), bit for bit
        `product`'s result, computed in the same pass while each row of W is in cache (on the
        8192-wide FFN a separate product re-reads ~12 MB of W from memory every step)."""
        self.t += 1
        b1, b2 = self.betas
        f32 = np.float32
        xn_CI = x_BI[:0] if x_next_CI is None else x_next_CI.contiguous()
        out_CH = torch.empty(xn_CI.shape[0], self.W_IH.shape[1], dtype=torch.float32)
        _grad_adam(_as_array(x_BI.contiguous()), _as_array(d_BH.contiguous()), self.W_IH, self.m_IH, self.v_IH, self.touched_I,
                   f32(self.lr / (1.0 - b1 ** self.t)), f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2),
                   f32(1.0 / math.sqrt(1.0 - b2 ** self.t)), f32(self.eps), _as_array(xn_CI), out_CH.numpy())
        return None if x_next_CI is None else out_CH
