"""A small patch transformer (ViT-style, Dosovitskiy et al. 2021) for MNIST, in plain torch.

The 28 x 28 image is cut into 7 x 7 patches (16 tokens), each embedded linearly; a learned class
token is prepended and learned position embeddings added. Pre-LN blocks (Xiong et al. 2020):

    r_BSD  = [cls_D; x_patches_BQ @ W_patch_QD + b_patch_D] + pos_SD       the residual stream
    r_BSD += attn_l(LN(r_BSD))        softmax(q k^T / sqrt(E)) v over all tokens (no mask)
    r_BSD += mlp_l(LN(r_BSD))         gelu(h @ W_in_DH + b_in_H) @ W_out_HD + b_out_D
    logits_BO = LN(r_B0D) @ W_head_DO + b_head_O                             class token only

`residuals` returns the residual stream after every block at every token; `run_from(l, r)`
continues from "after block l" with any residual r, so splicing an SAE reconstruction in at
layer l is `run_from(l, sae(r_l))`, and `run_from(l, r_l)` equals the clean forward exactly.

Shape letters beyond the package's: S tokens (17 = 16 patches + class; T the same positions as
keys in attention), Q pixels of one patch (49), A heads, E head width, L blocks (layers). D is
d_model: the residual width the SAE reads. H is the MLP hidden width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnist_sae.pixels import pixels_to_float
from mnist_sae.settings import ViTConfig, ViTSettings


def _layer_norm(r_BSD: torch.Tensor, g_D: torch.Tensor, b_D: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(r_BSD, (r_BSD.shape[-1],), g_D, b_D, eps=1e-5)


class ViT(nn.Module):
    """Parameters are stacked over layers (index l of each *_L... tensor is block l)."""

    def __init__(self, cfg: ViTConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        L, D, A, H, O = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.n_classes
        E, Q, S = D // A, cfg.patch * cfg.patch, cfg.n_tokens

        def normal(*shape, std=0.02):
            return nn.Parameter(torch.randn(*shape, generator=generator) * std)

        def const(value, *shape):
            return nn.Parameter(torch.full(shape, float(value)))

        self.W_patch_QD, self.b_patch_D = normal(Q, D, std=1 / math.sqrt(Q)), const(0, D)
        self.cls_D, self.pos_SD = normal(D), normal(S, D)
        self.ln1_g_LD, self.ln1_b_LD = const(1, L, D), const(0, L, D)
        self.W_q_LDAE, self.W_k_LDAE, self.W_v_LDAE = (normal(L, D, A, E, std=1 / math.sqrt(D)) for _ in range(3))
        # residual-writing projections start small (GPT-2's scaled init) so each block starts near identity
        self.W_o_LAED, self.b_o_LD = normal(L, A, E, D, std=0.02 / math.sqrt(2 * L)), const(0, L, D)
        self.ln2_g_LD, self.ln2_b_LD = const(1, L, D), const(0, L, D)
        self.W_in_LDH, self.b_in_LH = normal(L, D, H, std=1 / math.sqrt(D)), const(0, L, H)
        self.W_out_LHD, self.b_out_LD = normal(L, H, D, std=0.02 / math.sqrt(2 * L)), const(0, L, D)
        self.ln_g_D, self.ln_b_D = const(1, D), const(0, D)
        self.W_head_DO, self.b_head_O = normal(D, O, std=1 / math.sqrt(D)), const(0, O)

    def embed(self, x_BI: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) pixels [B, 784] -> r_BSD, the residual before block 0."""
        cfg = self.cfg
        if x_BI.ndim != 2 or x_BI.shape[1] != cfg.image * cfg.image:
            raise ValueError(f"ViT: expected pixels [B, {cfg.image * cfg.image}], got {tuple(x_BI.shape)}")
        x_BI = pixels_to_float(x_BI) if x_BI.dtype == torch.uint8 else x_BI.float()
        g, p, B = cfg.image // cfg.patch, cfg.patch, x_BI.shape[0]
        # row-major patches: patch (i, j) holds pixels [i p:(i+1) p, j p:(j+1) p]
        x_BQ = x_BI.reshape(B, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(B, g * g, p * p)
        r_BSD = torch.cat([self.cls_D.expand(B, 1, -1), x_BQ @ self.W_patch_QD + self.b_patch_D], dim=1)
        return r_BSD + self.pos_SD

    def block(self, l: int, r_BSD: torch.Tensor) -> torch.Tensor:
        """Block l: attention then MLP, each read through a LayerNorm and added to the residual."""
        h_BSD = _layer_norm(r_BSD, self.ln1_g_LD[l], self.ln1_b_LD[l])
        q_BSAE = torch.einsum("BSD,DAE->BSAE", h_BSD, self.W_q_LDAE[l])
        k_BTAE = torch.einsum("BTD,DAE->BTAE", h_BSD, self.W_k_LDAE[l])
        v_BTAE = torch.einsum("BTD,DAE->BTAE", h_BSD, self.W_v_LDAE[l])
        scores_BAST = torch.einsum("BSAE,BTAE->BAST", q_BSAE, k_BTAE) / math.sqrt(q_BSAE.shape[-1])
        o_BSAE = torch.einsum("BAST,BTAE->BSAE", scores_BAST.softmax(-1), v_BTAE)
        r_BSD = r_BSD + torch.einsum("BSAE,AED->BSD", o_BSAE, self.W_o_LAED[l]) + self.b_o_LD[l]
        h_BSD = _layer_norm(r_BSD, self.ln2_g_LD[l], self.ln2_b_LD[l])
        m_BSH = F.gelu(h_BSD @ self.W_in_LDH[l] + self.b_in_LH[l])
        return r_BSD + m_BSH @ self.W_out_LHD[l] + self.b_out_LD[l]

    def head(self, r_BSD: torch.Tensor) -> torch.Tensor:
        """logits_BO from the class token (position 0) of the final residual."""
        return _layer_norm(r_BSD[:, 0], self.ln_g_D, self.ln_b_D) @ self.W_head_DO + self.b_head_O

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        return self.residuals(x_BI)[0]

    def residuals(self, x_BI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_BO, r_LBSD): the residual stream after each block l = 0..L-1, at every token."""
        r_BSD, rs = self.embed(x_BI), []
        for l in range(self.cfg.n_layers):
            r_BSD = self.block(l, r_BSD)
            rs.append(r_BSD)
        return self.head(r_BSD), torch.stack(rs)

    def run_from(self, layer: int, r_BSD: torch.Tensor) -> torch.Tensor:
        """logits_BO of the rest of the model, given the residual after block `layer` (0-based)."""
        if not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"run_from: layer must be in [0, {self.cfg.n_layers}), got {layer}")
        for l in range(layer + 1, self.cfg.n_layers):
            r_BSD = self.block(l, r_BSD)
        return self.head(r_BSD)

    def to_checkpoint(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "state": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "ViT":
        model = cls(ViTConfig(**ckpt["config"]), generator=torch.Generator())
        model.load_state_dict(ckpt["state"])
        return model


# --- training -------------------------------------------------------------------------------------


@dataclass
class ViTHistory:
    loss_per_epoch: list[float] = field(default_factory=list)
    steps: int = 0


def train_vit(model: ViT, x_NI: torch.Tensor, labels_N: torch.Tensor, settings: ViTSettings,
              generator: torch.Generator, on_step=None) -> ViTHistory:
    """AdamW on mean CE over minibatches of a fresh seeded permutation each epoch (last partial
    batch dropped); lr warms up linearly, then decays linearly to 0. on_step(step, loss) per step."""
    n, bs = x_NI.shape[0], settings.batch_size
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise ValueError(f"train_vit: batch_size {bs} > {n} examples")
    x_NI = pixels_to_float(x_NI) if x_NI.dtype == torch.uint8 else x_NI
    total = steps_per_epoch * settings.epochs
    warm = max(1, int(settings.warmup * total))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (total - s) / max(1, total - warm)))
    history = ViTHistory()
    for _ in range(settings.epochs):
        perm_N = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), device=x_NI.device)
        for i in range(steps_per_epoch):
            idx_B = perm_N[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x_NI[idx_B]), labels_N[idx_B].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            history.steps += 1
            if on_step is not None:
                on_step(history.steps, loss.detach())
        history.loss_per_epoch.append(float(loss_sum) / steps_per_epoch)
    return history


@torch.no_grad()
def predict_logits(model: ViT, x_NI: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([model(x_NI[i:i + chunk]) for i in range(0, x_NI.shape[0], chunk)])


# --- the residual cache -----------------------------------------------------------------------------


@torch.no_grad()
def write_residuals(model: ViT, x_NI: torch.Tensor, path, chunk: int = 256) -> dict[str, np.ndarray]:
    """Write the residual stream after every block at every token of each example to `path`, a
    float16 .npy memmap [R, D] with R = N x L x S rows ordered (example, layer, token); return
    the per-row meta {"example", "layer", "token"} (int64 [R])."""
    L, S, D = model.cfg.n_layers, model.cfg.n_tokens, model.cfg.d_model
    N = x_NI.shape[0]
    out_RD = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(N * L * S, D))
    device = model.W_patch_QD.device
    for i in range(0, N, chunk):
        _, r_LBSD = model.residuals(x_NI[i:i + chunk].to(device))
        r_BLSD = r_LBSD.permute(1, 0, 2, 3)
        out_RD[i * L * S:(i + r_BLSD.shape[0]) * L * S] = r_BLSD.reshape(-1, D).to(torch.float16).cpu().numpy()
    out_RD.flush()
    del out_RD
    ex_R, layer_R, token_R = (a.reshape(-1) for a in np.meshgrid(np.arange(N), np.arange(L), np.arange(S), indexing="ij"))
    return {"example": ex_R.astype(np.int64), "layer": layer_R.astype(np.int64), "token": token_R.astype(np.int64)}


@torch.no_grad()
def spliced_logits(model: ViT, x_NI: torch.Tensor, layer: int, replace,
                   chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits_NO, spliced logits_NO): the residual after block `layer` at every token is
    replaced by replace(r_BSD) -> r_BSD and the rest of the model runs from there."""
    clean, spliced = [], []
    for i in range(0, x_NI.shape[0], chunk):
        logits_BO, r_LBSD = model.residuals(x_NI[i:i + chunk])
        clean.append(logits_BO)
        spliced.append(model.run_from(layer, replace(r_LBSD[layer])))
    return torch.cat(clean), torch.cat(spliced)
