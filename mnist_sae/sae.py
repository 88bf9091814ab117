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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mnist_sae.space import InputSpace

ARCHS = ("jumprelu", "relu", "topk")
STES = ("sigmoid", "rectangle")


@dataclass(frozen=True)
class SAEConfig:
    arch: str = "jumprelu"  # jumprelu | relu | topk
    d_in: int = 10  # D, width of the SAE's input site
    n_latents: int = 32  # F
    ste: str = "sigmoid"  # jumprelu gate gradient: sigmoid surrogate | rectangle pseudo-derivative
    tau: float = 0.1  # sigmoid surrogate temperature (ste sigmoid)
    bandwidth: float = 0.05  # rectangle kernel width epsilon (ste rectangle)
    theta_init: float = 0.1  # initial JumpReLU threshold of every latent
    k: int = 1  # topk: active latents per example
    aux_k: int = 8  # topk: dead latents that reconstruct the residual in AuxK

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"SAEConfig.arch = {self.arch!r}: expected one of {ARCHS}")
        if self.ste not in STES:
            raise ValueError(f"SAEConfig.ste = {self.ste!r}: expected one of {STES}")
        if self.d_in < 1 or self.n_latents < 1:
            raise ValueError(f"SAEConfig: d_in and n_latents must be >= 1, got {self.d_in}, {self.n_latents}")
        if not (self.tau > 0 and self.bandwidth > 0 and self.theta_init > 0):
            raise ValueError("SAEConfig: tau, bandwidth and theta_init must be > 0")
        if not (1 <= self.k <= self.n_latents and 1 <= self.aux_k <= self.n_latents):
            raise ValueError(f"SAEConfig: need 1 <= k, aux_k <= n_latents = {self.n_latents}, got k {self.k}, aux_k {self.aux_k}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        return cls(**d)


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

    def pre_acts(self, z_BD: torch.Tensor) -> torch.Tensor:
        """u_GBF = z_BD @ W_enc_GDF + b_enc_GF; z may also be [G, B, D] (a batch per model)."""
        G, D = self.n_models, self.cfg.d_in
        if not ((z_BD.ndim == 2 and z_BD.shape[1] == D) or (z_BD.ndim == 3 and z_BD.shape[0] == G and z_BD.shape[2] == D)):
            raise ValueError(f"SAE: expected z [B, {D}] or [{G}, B, {D}], got {tuple(z_BD.shape)}")
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
