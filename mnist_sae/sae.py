"""The SAE family: JumpReLU (default), ReLU + L1, TopK + AuxK, one module and one forward signature.

Every SAE here is a stack of G independent models in one module (G = 1 for a single SAE), so the
calibration can train a whole lambda grid at once with batched matmuls (baddbmm over G):

    u_GBF     = z_BD @ W_enc_GDF + b_enc_GF                     encoder pre-activation
    a_GBF     = act(u_GBF)                                      latents
    z_hat_GBD = a_GBF @ W_dec_GFD + b_dec_GD                    reconstruction

    jumprelu: a = u * H(u - theta), theta = exp(log_theta) > 0 per latent; loss MSE + lambda * L0
    relu:     a = relu(u);                                       loss MSE + lambda * L1
    topk:     a = relu(u) on the k largest u per example, 0 elsewhere; loss MSE (+ AuxK)

Decoder rows are unit-norm (renormalized after every optimizer step by the training loop), so L1
of the latents equals the decoder-norm-weighted L1 of Anthropic's formulation, and the encoder
starts as the decoder's transpose (Conerly et al. 2024; Gao et al. 2024, sec. 2.4).

The loss is the pure function `sae_loss`; calibration and training both call it.

TopK's sparse path (opt-in: `TrainSettings.sparse_topk`): with k of F latents active per row, the
decoder and both weight gradients need only the active entries (as openai/sparse_autoencoder's
TopK kernels do on GPU, Gao et al. 2024). The encoder forward stays dense; then

    idx_GBK   = topk_F(u_GBF)                                   (no gradient: a selection)
    u_GBK     = gather(u_GBF, idx_GBK)                          `_SparsePreActs`
    z_hat_GBD = sum_K relu(u_GBK) * W_dec_GFD[idx_GBK] + b_dec_GD   `_SparseDecode`

with backward dW_enc[:, f] = sum_{(b, k): idx = f} du_bk z_b, dW_dec[f] = sum_{(b, k): idx = f}
a_bk dz_hat_b, da_bk = dz_hat_b . W_dec[idx_bk]: O(B K D) each instead of the O(B F D) matmuls of
the dense path. Same numbers to float32 rounding (the sums run in another order).
`TrainSettings.select_bf16`: u_GBF from a bfloat16 matmul only chooses idx_GBK; u_GBK is then
computed in float32 as K sampled dot products per row.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from mnist_sae.settings import SAEConfig
from mnist_sae.space import InputSpace


# --- JumpReLU gradients -----------------------------------------------------------------------
# H(x) has zero derivative almost everywhere, so theta would never learn and the L0 penalty would
# give no gradient. The forward stays hard; the backward uses one of two replacements for the
# derivative of the gate H(u - theta). One autograd node returns both the latents and the gates
# (fewer nodes per step: at batch 8 the per-node overhead is most of the step's time).


def _rectangle(x):
    """K(x) = 1[|x| < 1/2], the rectangle kernel."""
    return (x.abs() < 0.5).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """forward: gate = H(u - theta), a = u * gate (theta_G1F broadcasts over the batch).

    ste "sigmoid" (the original notebooks): dH(x)/dx := s'(x) = d/dx sigmoid(x / tau), reaching
    u and theta through x = u - theta, and a = u * gate by the product rule:
        da/du = gate + u s',  da/dtheta = -u s',  dgate/du = s',  dgate/dtheta = -s'
    ste "rectangle" (Rajamanoharan et al. 2024, arXiv:2407.14435, eqs. 11-12), K the rectangle
    kernel, eps the bandwidth:
        da/du = gate,  da/dtheta = -(theta / eps) K((u - theta) / eps)
        dgate/du = 0,  dgate/dtheta = -(1 / eps) K((u - theta) / eps)
    The theta gradient is summed over the batch axis.
    """

    @staticmethod
    def forward(ctx, u_GBF, theta_G1F, ste: str, width: float):
        gate_GBF = (u_GBF > theta_G1F).to(u_GBF.dtype)
        ctx.save_for_backward(u_GBF, theta_G1F, gate_GBF)
        ctx.ste, ctx.width = ste, width
        return u_GBF * gate_GBF, gate_GBF

    @staticmethod
    def backward(ctx, grad_a_GBF, grad_gate_GBF):
        u_GBF, theta_G1F, gate_GBF = ctx.saved_tensors
        x_GBF = (u_GBF - theta_G1F) / ctx.width
        if ctx.ste == "sigmoid":
            s_GBF = torch.sigmoid(x_GBF)
            ds_GBF = s_GBF * (1 - s_GBF) / ctx.width
            through_gate_GBF = (grad_a_GBF * u_GBF + grad_gate_GBF) * ds_GBF
            grad_u = grad_a_GBF * gate_GBF + through_gate_GBF
            grad_theta = -through_gate_GBF.sum(1, keepdim=True)
        else:
            k_GBF = _rectangle(x_GBF) / ctx.width
            grad_u = grad_a_GBF * gate_GBF
            grad_theta = -(k_GBF * (grad_a_GBF * theta_G1F + grad_gate_GBF)).sum(1, keepdim=True)
        return grad_u, grad_theta, None, None


def jumprelu(u_GBF: torch.Tensor, theta_G1F: torch.Tensor, ste: str, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_GBF, gate_GBF) = (u * H(u - theta), H(u - theta)) with the `ste` backward; width is tau
    for "sigmoid" and the bandwidth eps for "rectangle"."""
    return _JumpReLU.apply(u_GBF, theta_G1F, ste, width)


# --- TopK's sparse kernels --------------------------------------------------------------------
# Stacked models are one block-diagonal problem: model g's latent f is row g F + f of the
# flattened [G F, D] weights and its batch row b is row g B + b, so one sparse product serves
# every g. On CPU, torch's CSR sparse @ dense and CSR sampled_addmm beat index_add_ over a
# materialised [B K, D] source, COO products and embedding_bag's own backward (measured at
# B 2048, K 32-64, D 768, F 4096; bench/bench_acts.py times the whole step).


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch.sparse_csr_tensor without its invariant check and its "CSR support is in beta state" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _cols(idx_GBK: torch.Tensor, n_latents: int) -> torch.Tensor:
    """[G B K] column g F + idx_gbk of every active entry in the flattened [G F] latents."""
    G = idx_GBK.shape[0]
    col_GBK = idx_GBK if G == 1 else idx_GBK + n_latents * torch.arange(G, device=idx_GBK.device)[:, None, None]
    return col_GBK.reshape(-1)


def _sampled_dot(idx_GBK: torch.Tensor, x_GBD: torch.Tensor, W_GFD: torch.Tensor) -> torch.Tensor:
    """out_GBK[g, b, k] = x_gb . W[g, idx_gbk]: only the K sampled entries of x @ W^T per row
    (CSR sampled_addmm; the pattern's values are ignored, beta 0)."""
    G, B, K = idx_GBK.shape
    Fl, D = W_GFD.shape[1:]
    pattern = _csr(torch.arange(0, G * B * K + 1, K, device=idx_GBK.device), _cols(idx_GBK, Fl),
                   torch.zeros(G * B * K, dtype=x_GBD.dtype, device=x_GBD.device), (G * B, G * Fl))
    return torch.sparse.sampled_addmm(pattern, x_GBD.reshape(G * B, D), W_GFD.reshape(G * Fl, D).T,
                                      beta=0.0).values().reshape(G, B, K)


def _latent_sum(idx_GBK: torch.Tensor, w_GBK: torch.Tensor, x_GBD: torch.Tensor, n_latents: int) -> torch.Tensor:
    """out_GFD[g, f] = sum_{(b, k): idx_gbk = f} w_gbk x_gbd, i.e. S^T @ x with S the [G B, G F]
    block-diagonal sparse matrix holding w at (g B + b, g F + idx_gbk): what the dense path gets as
    a^T @ x with a mostly zero. S^T is built as CSR from one stable sort of the columns (torch's
    COO product would sort them again, and copies more: ~5x slower here)."""
    G, B, K = idx_GBK.shape
    col_M = _cols(idx_GBK, n_latents)
    order_M = torch.argsort(col_M, stable=True)
    crow = torch.zeros(G * n_latents + 1, dtype=torch.long, device=idx_GBK.device)
    torch.cumsum(torch.bincount(col_M, minlength=G * n_latents), 0, out=crow[1:])
    row_M = torch.div(order_M, K, rounding_mode="floor")  # entry m sits in flattened batch row m // K
    S_T = _csr(crow, row_M, w_GBK.reshape(-1)[order_M], (G * n_latents, G * B))
    return torch.mm(S_T, x_GBD.reshape(G * B, -1)).reshape(G, n_latents, -1)


class _SparsePreActs(torch.autograd.Function):
    """u_GBK = u_GBF.gather(idx_GBK), u_GBF = z_BD @ W_enc_GDF + b_enc_GF given (computed without
    gradient); the backward reaches W_enc, b_enc (and z) only through the K entries per row:
        dW_enc[g, :, f] = sum_{(b, k): idx = f} du_gbk z_gb,   db_enc[g, f] = sum du_gbk,
        dz_gb = sum_k du_gbk W_enc[g, :, idx_gbk]  (summed over g when z is shared)."""

    @staticmethod
    def forward(ctx, z_BD, W_enc_GDF, b_enc_GF, u_GBF, idx_GBK):
        ctx.save_for_backward(z_BD, W_enc_GDF, idx_GBK)
        if u_GBF.dtype == z_BD.dtype:
            return u_GBF.gather(-1, idx_GBK)
        # u_GBF was a reduced-precision matmul (it chose idx): the K values exactly, in z's dtype
        G, B, K = idx_GBK.shape
        b_GBK = b_enc_GF.gather(-1, idx_GBK.reshape(G, -1)).reshape(G, B, K)
        return _sampled_dot(idx_GBK, z_BD.expand(G, B, -1).contiguous(), W_enc_GDF.transpose(1, 2)) + b_GBK

    @staticmethod
    def backward(ctx, du_GBK):
        z_BD, W_enc_GDF, idx_GBK = ctx.saved_tensors
        G, B, K = idx_GBK.shape
        Fl = W_enc_GDF.shape[2]
        du_GBK = du_GBK.contiguous()
        z_GBD = z_BD.expand(G, B, -1)
        dz = dW = db = None
        if ctx.needs_input_grad[1]:
            # (du^T @ z)^T: F-major memory, W_enc's own layout (SAE.__init__ clones a transposed
            # W_dec), so autograd keeps it without a copy
            dW = _latent_sum(idx_GBK, du_GBK, z_GBD.contiguous(), Fl).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            db = torch.zeros(G, Fl, dtype=du_GBK.dtype, device=du_GBK.device)
            db.scatter_add_(-1, idx_GBK.reshape(G, -1), du_GBK.reshape(G, -1))
        if ctx.needs_input_grad[0]:  # z itself rarely needs one (an input), so no care for speed
            dz = _SparseDecode.apply(du_GBK, idx_GBK, W_enc_GDF.transpose(1, 2).contiguous())
            dz = dz.sum(0) if z_BD.ndim == 2 else dz
        return dz, dW, db, None, None


class _SparseDecode(torch.autograd.Function):
    """x_GBD = sum_k a_GBK[..., k] W_GFD[g, idx_GBK[..., k]] (no bias): embedding_bag with per-row
    weights over the flattened [G F, D] rows. Backward:
        da_gbk = dx_gb . W[g, idx_gbk]   (CSR sampled_addmm: only the K sampled dot products)
        dW[g, f] = sum_{(b, k): idx = f} a_gbk dx_gb"""

    @staticmethod
    def forward(ctx, a_GBK, idx_GBK, W_GFD):
        G, B, K = idx_GBK.shape
        Fl, D = W_GFD.shape[1:]
        ctx.save_for_backward(a_GBK, idx_GBK, W_GFD)
        x_MD = F.embedding_bag(_cols(idx_GBK, Fl).reshape(G * B, K), W_GFD.reshape(G * Fl, D),
                               per_sample_weights=a_GBK.reshape(G * B, K), mode="sum")
        return x_MD.reshape(G, B, D)

    @staticmethod
    def backward(ctx, dx_GBD):
        a_GBK, idx_GBK, W_GFD = ctx.saved_tensors
        G, B, K = idx_GBK.shape
        Fl, D = W_GFD.shape[1:]
        dx_MD = dx_GBD.contiguous().reshape(G * B, D)
        da = dW = None
        if ctx.needs_input_grad[0]:
            da = _sampled_dot(idx_GBK, dx_MD, W_GFD)
        if ctx.needs_input_grad[2]:
            dW = _latent_sum(idx_GBK, a_GBK, dx_MD, Fl)
        return da, None, dW


# --- the module -------------------------------------------------------------------------------


class SAE(nn.Module):
    """G stacked SAEs of one config.

    `generator` one torch.Generator: all G start from the same seeded init (one model drawn and
    repeated), so a batched lambda grid and one-at-a-time runs with the same seed start
    identically. A list of G generators: model g is drawn from generator g (independent seeds
    trained at once; model g starts exactly as a single SAE drawn from that generator would).
    """

    def __init__(self, cfg: SAEConfig, n_models: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None):
        super().__init__()
        self.cfg, self.n_models = cfg, n_models
        G, D, Fl = n_models, cfg.d_in, cfg.n_latents
        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        if len(gens) not in (1, G):
            raise ValueError(f"SAE: {G} models need 1 or {G} generators, got {len(gens)}")
        # decoder rows: random unit directions; encoder = decoder transpose (Gao et al. 2024, 2.4)
        W_dec_gFD = torch.stack([torch.randn(Fl, D, generator=g) for g in gens])
        W_dec_gFD = W_dec_gFD / W_dec_gFD.norm(dim=-1, keepdim=True)
        self.W_dec_GFD = nn.Parameter(W_dec_gFD.expand(G, Fl, D).clone())
        self.W_enc_GDF = nn.Parameter(W_dec_gFD.transpose(1, 2).expand(G, D, Fl).clone())
        self.b_enc_GF = nn.Parameter(torch.zeros(G, Fl))
        self.b_dec_GD = nn.Parameter(torch.zeros(G, D))
        if cfg.arch == "jumprelu":
            self.log_theta_GF = nn.Parameter(torch.full((G, Fl), math.log(cfg.theta_init)))

    # theta lives in log space so it stays > 0 (a JumpReLU with theta <= 0 could pass negative u)
    @property
    def theta_GF(self) -> torch.Tensor:
        return self.log_theta_GF.exp()

    def pre_acts(self, z_BD: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """u_GBF = z_BD @ W_enc_GDF + b_enc_GF; z may also be [G, B, D] (a batch per model).
        dtype: the matmul in that dtype (the operands cast to it), e.g. torch.bfloat16."""
        G, D = self.n_models, self.cfg.d_in
        if not ((z_BD.ndim == 2 and z_BD.shape[1] == D) or (z_BD.ndim == 3 and z_BD.shape[0] == G and z_BD.shape[2] == D)):
            raise ValueError(f"SAE: expected z [B, {D}] or [{G}, B, {D}], got {tuple(z_BD.shape)}")
        if dtype is not None:
            return torch.baddbmm(self.b_enc_GF.to(dtype)[:, None, :], z_BD.to(dtype).expand(G, -1, -1),
                                 self.W_enc_GDF.to(dtype))
        return torch.baddbmm(self.b_enc_GF[:, None, :], z_BD.expand(G, -1, -1), self.W_enc_GDF)

    def activate(self, u_GBF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_GBF, penalty_GB): latents and the per-example sparsity term the loss weights by lambda.

        jumprelu: penalty = sum_f H(u - theta) (L0, surrogate gradient per cfg.ste)
        relu:     penalty = sum_f a (L1; decoder rows are unit-norm)
        topk:     penalty = 0 (sparsity is structural)
        """
        cfg = self.cfg
        if cfg.arch == "jumprelu":
            width = cfg.tau if cfg.ste == "sigmoid" else cfg.bandwidth
            a_GBF, gate_GBF = jumprelu(u_GBF, self.theta_GF[:, None, :], cfg.ste, width)
            return a_GBF, gate_GBF.sum(-1)
        if cfg.arch == "relu":
            a_GBF = F.relu(u_GBF)
            return a_GBF, a_GBF.sum(-1)
        vals_GBK, idx_GBK = u_GBF.topk(cfg.k, dim=-1)
        a_GBF = torch.zeros_like(u_GBF).scatter(-1, idx_GBK, F.relu(vals_GBK))
        return a_GBF, u_GBF.new_zeros(u_GBF.shape[:2])

    def encode(self, z_BD: torch.Tensor) -> torch.Tensor:
        """a_GBF, hard latents: L0 = number of non-zeros per example."""
        return self.activate(self.pre_acts(z_BD))[0]

    def decode(self, a_GBF: torch.Tensor) -> torch.Tensor:
        """z_hat_GBD = a_GBF @ W_dec_GFD + b_dec_GD."""
        return torch.baddbmm(self.b_dec_GD[:, None, :], a_GBF, self.W_dec_GFD)

    def forward(self, z_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_hat_GBD, a_GBF) = (decode(encode(z)), encode(z))."""
        a_GBF = self.encode(z_BD)
        return self.decode(a_GBF), a_GBF

    def aux_decode(self, u_GBF: torch.Tensor, dead_GF: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024, arXiv:2406.04093, sec. A.2): the top aux_k pre-activations among
        dead latents, relu'd, decoded without bias: e_hat_GBD, a model of the residual z - z_hat."""
        u_dead_GBF = u_GBF.masked_fill(~dead_GF[:, None, :], float("-inf"))
        vals_GBK, idx_GBK = u_dead_GBF.topk(self.cfg.aux_k, dim=-1)
        # relu(-inf) = 0: fewer than aux_k dead latents just leaves the rest at zero
        a_GBF = torch.zeros_like(u_GBF).scatter(-1, idx_GBK, F.relu(vals_GBK))
        return torch.bmm(a_GBF, self.W_dec_GFD)

    # --- TopK's sparse path (see the module docstring); G >= 1 -----------------------------------

    @torch.no_grad()
    def topk_select(self, z_BD: torch.Tensor, select_dtype: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u_GBF, idx_GBK, fired_GF) without gradients: the dense pre-activations, the k largest
        per row (the latents `activate` keeps) and which latents fired (u > 0 at a kept index; with
        select_dtype, judged on the rounded u) in the batch. select_dtype (e.g. torch.bfloat16, where the CPU has AMX / AVX-512 BF16): u_GBF
        from a matmul in that dtype, ~8x faster here; it only chooses idx (near-ties at the k-th
        value may then differ from float32's choice); sparse_forward computes the chosen
        pre-activations exactly."""
        if self.cfg.arch != "topk":
            raise ValueError(f"SAE.topk_select: the sparse path is for arch topk, not {self.cfg.arch!r}")
        u_GBF = self.pre_acts(z_BD, select_dtype)
        vals_GBK, idx_GBK = u_GBF.topk(self.cfg.k, dim=-1)
        fired_GF = torch.zeros(u_GBF.shape[0], u_GBF.shape[2], device=u_GBF.device)
        fired_GF.scatter_add_(-1, idx_GBK.flatten(1), (vals_GBK > 0).flatten(1).to(fired_GF.dtype))
        return u_GBF, idx_GBK, fired_GF > 0

    @torch.no_grad()
    def aux_select(self, u_GBF: torch.Tensor, dead_GF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx_GBA, valid_GBA), A = aux_k: `aux_decode`'s choice (the aux_k largest pre-activations
        among dead latents); valid is False where fewer than aux_k are dead."""
        u_dead_GBF = u_GBF.masked_fill(~dead_GF[:, None, :], float("-inf"))
        vals_GBA, idx_GBA = u_dead_GBF.topk(self.cfg.aux_k, dim=-1)
        return idx_GBA, vals_GBA > float("-inf")

    def sparse_forward(self, z_BD: torch.Tensor, u_GBF: torch.Tensor, idx_GBK: torch.Tensor,
                       aux: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(z_hat_GBD, a_GBK, aux_hat_GBD or None): `decode(activate(u))` and `aux_decode` of the
        dense path from the active entries alone (u_GBF, idx_GBK from topk_select, aux from
        aux_select). a_GBK holds the latents at idx_GBK (sae_loss's L0 counts its non-zeros)."""
        K = idx_GBK.shape[-1]
        idx_all = idx_GBK if aux is None else torch.cat([idx_GBK, aux[0]], -1)
        u_sel_GBK = _SparsePreActs.apply(z_BD, self.W_enc_GDF, self.b_enc_GF, u_GBF, idx_all)
        a_GBK = F.relu(u_sel_GBK[..., :K])
        z_hat_GBD = _SparseDecode.apply(a_GBK, idx_GBK, self.W_dec_GFD) + self.b_dec_GD[:, None, :]
        if aux is None:
            return z_hat_GBD, a_GBK, None
        # an invalid slot (fewer than aux_k dead latents) is 0 as relu(-inf) is in aux_decode
        a_aux_GBA = torch.where(aux[1], F.relu(u_sel_GBK[..., K:]), 0.0)
        return z_hat_GBD, a_GBK, _SparseDecode.apply(a_aux_GBA, aux[0], self.W_dec_GFD)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """W_dec rows <- W_dec rows / ||row||, so latent magnitudes carry the scale."""
        self.W_dec_GFD /= self.W_dec_GFD.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def select(self, g: int) -> "SAE":
        """Model g of the stack as an SAE with G = 1 (a copy)."""
        out = SAE(self.cfg, n_models=1, generator=torch.Generator())  # overwritten; keeps the global RNG untouched
        out.load_state_dict({k: v[g:g + 1].detach().clone() for k, v in self.state_dict().items()})
        return out.to(self.W_dec_GFD.device)

    def to_checkpoint(self) -> dict:
        """{"config": SAEConfig dict, "n_models": G, "state": state_dict} (tensors on CPU)."""
        return {"config": self.cfg.to_dict(), "n_models": self.n_models,
                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "SAE":
        sae = cls(SAEConfig.from_dict(ckpt["config"]), n_models=ckpt.get("n_models", 1), generator=torch.Generator())
        sae.load_state_dict(ckpt["state"])
        return sae


# --- loss ---------------------------------------------------------------------------------------


def sae_loss(z_BD: torch.Tensor, z_hat_GBD: torch.Tensor, a_GBF: torch.Tensor, penalty_GB: torch.Tensor,
             sparsity_coef_G: torch.Tensor, *, kl_coef: float = 0.0, space: InputSpace | None = None,
             aux_hat_GBD: torch.Tensor | None = None,
             aux_coef: float | None = None) -> dict[str, torch.Tensor]:
    """Named terms, each [G] (one value per stacked model), and their sum "loss" (a scalar):

        mse_G      = mean_{B,D} (z_hat - z)^2
        sparsity_G = mean_B penalty                      (L0 for jumprelu, L1 for relu, 0 for topk)
        kl_G       = mean_B KL(softmax(y) || softmax(y_hat)),  y = space.to_y(z), y_hat likewise
                     (logit site only: the end-to-end idea of Braun et al. 2024, arXiv:2405.12241)
        aux_G      = mean_{B,D} (e_hat - (z - z_hat))^2  (AuxK, z_hat detached, Gao et al. 2024)
        total_G    = mse + sparsity_coef * sparsity + kl_coef * kl + aux_coef * aux
        l0_G       = mean_B #{f: a_f != 0}               (hard, no gradient; for logging)
        loss       = sum_G total_G

    Summing over G keeps each model's gradient its own, so with an elementwise optimizer (Adam) a
    batched grid trains exactly like its points one after another (up to float rounding).
    """
    diff_GBD = z_hat_GBD - z_BD  # z_BD may be [G, B, D]: a batch per model
    terms = {"mse": diff_GBD.square().mean((1, 2)), "sparsity": penalty_GB.mean(1)}
    total_G = terms["mse"] + sparsity_coef_G * terms["sparsity"]
    if kl_coef > 0:
        if space is None:
            raise ValueError("sae_loss: kl_coef > 0 needs the input space (z -> logits)")
        logp_BO = F.log_softmax(space.to_y(z_BD), dim=-1)
        logq_GBO = F.log_softmax(space.to_y(z_hat_GBD), dim=-1)
        terms["kl"] = (logp_BO.exp() * (logp_BO - logq_GBO)).sum(-1).mean(-1)
        total_G = total_G + kl_coef * terms["kl"]
    if aux_hat_GBD is not None:
        if aux_coef is None:
            raise ValueError("sae_loss: aux_hat_GBD needs aux_coef (TrainSettings.aux_coef holds the default)")
        terms["aux"] = (aux_hat_GBD + diff_GBD.detach()).square().mean((1, 2))
        total_G = total_G + aux_coef * terms["aux"]
    terms["total"] = total_G
    terms["l0"] = (a_GBF.detach() != 0).sum(-1).to(z_BD.dtype).mean(-1)
    terms["loss"] = total_G.sum()
    return terms


@torch.no_grad()
def reconstruct(sae: SAE, z_ND: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_hat_ND, a_NF) for a single SAE (G = 1), computed in chunks of rows without gradients."""
    if sae.n_models != 1:
        raise ValueError(f"reconstruct: expected a single SAE (G = 1), got G = {sae.n_models}; use sae.select(g)")
    device = sae.W_dec_GFD.device
    z_hats, acts = [], []
    for i in range(0, z_ND.shape[0], chunk):
        z_hat_GBD, a_GBF = sae(z_ND[i:i + chunk].to(device, torch.float32))
        z_hats.append(z_hat_GBD[0])
        acts.append(a_GBF[0])
    return torch.cat(z_hats), torch.cat(acts)
