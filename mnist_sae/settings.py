"""The library's settings and the names params are checked against, importable without torch.

The params dataclasses of the stages (stages/_*params.py) are built from these; check_params,
which validates every section of params.yaml whenever it changes, imports them all. Here, apart
from the modules that use them, they load in ~0.1 s (numpy) instead of the ~2-3 s of importing torch
(on the AMD EPYC VM of the README): check_params reruns on every `dvc exp run -S ...`. The
modules that use them import them from here (mnist_sae.sae.SAEConfig is this SAEConfig).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# --- the SAE (mnist_sae.sae) ------------------------------------------------------------------

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


# --- its training (mnist_sae.sae_train) ---------------------------------------------------------

DECODER_INITS = ("random", "data")


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
    decoder_init: str = "random"  # random (unit directions) | data (centred training rows, see init_from_data_)
    resample_every: int = 0  # every this many steps, latents that did not fire in them are resampled (0 = never)
    sparsity_warmup: float = 0.0  # share of the first steps over which the sparsity coefficient ramps linearly from 0
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay, Loshchilov & Hutter 2019), both fused
    weight_decay: float = 0.0  # adamw only
    # topk only: decode and backpropagate through the k active latents alone (SAE.sparse_forward);
    # the same numbers to float32 rounding, not bit for bit, so off by default (checkpoints keep their bits)
    sparse_topk: bool = False
    # sparse_topk only: choose the k latents from a bfloat16 encoder matmul (fast where the CPU has
    # AMX / AVX-512 BF16), then compute their pre-activations exactly in float32 (SAE.topk_select)
    select_bf16: bool = False


def lambda_grid(lambda_min: float, lambda_max: float, num: int) -> list[float]:
    """Geometric grid: lambda_min * (lambda_max / lambda_min)^(i / (num - 1)), i = 0..num-1."""
    if num == 1:
        return [float(lambda_min)]
    return [float(v) for v in np.geomspace(lambda_min, lambda_max, num)]


# --- the collected site (mnist_sae.collect) -----------------------------------------------------

SITES = ("logits", "hidden")


# --- the patch transformer (mnist_sae.vit) ------------------------------------------------------

@dataclass(frozen=True)
class ViTConfig:
    patch: int = 7  # patch side in pixels (28 must be a multiple)
    d_model: int = 64  # D, residual width
    n_layers: int = 2  # L
    n_heads: int = 4  # A (d_model must be a multiple)
    d_mlp: int = 128  # H
    n_classes: int = 10  # O
    image: int = 28  # image side

    def __post_init__(self):
        if self.image % self.patch or self.d_model % self.n_heads or min(dataclasses.astuple(self)) < 1:
            raise ValueError(f"ViTConfig: need image % patch == 0, d_model % n_heads == 0 and all >= 1, got {self}")

    @property
    def n_tokens(self) -> int:
        """S = patches + the class token."""
        return (self.image // self.patch) ** 2 + 1


@dataclass(frozen=True)
class ViTSettings:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    warmup: float = 0.05  # share of steps with a linear warmup; the rest decays linearly to 0


# --- the planted-truth benchmark (mnist_sae.truth_bench) ----------------------------------------

SAE_VARIANTS = ("sae_jumprelu_sigmoid", "sae_jumprelu_rectangle", "sae_relu", "sae_topk")
BASELINES = ("pca", "kmeans", "random")


@dataclass(frozen=True)
class BenchSettings:
    n_latents: int  # F of every SAE, k-means and random dictionary
    lr: float
    epochs: int
    batch_size: int
    lambdas: tuple[float, ...]  # ascending calibration grid (jumprelu L0 and relu L1 share it)
    refine: int  # bisection steps after the grid
    tau: float  # jumprelu sigmoid surrogate temperature
    bandwidth: float  # jumprelu rectangle kernel width
    theta_init: float
    aux_k: int  # topk AuxK
    aux_coef: float
    dead_steps: int
    lr_decay: float
    shift_thresholds: bool  # jumprelu: one global threshold shift so that val L0 = k exactly
    kmeans_n_init: int
    kmeans_max_iter: int
    recovered_cosine: float  # matched |cos| at or above which a true feature counts as recovered
    archs: Sequence[str] = SAE_VARIANTS  # the SAE variants fitted (a subset of SAE_VARIANTS)
    baselines: Sequence[str] = BASELINES  # the dictionaries fitted (a subset of BASELINES)
