"""The `sae:` section of params.yaml, shared by the calibrate and train_sae stages.

Both stages validate the whole section (so a typo anywhere in it fails either one); each lists in
dvc.yaml only the keys it actually reads. `lambda` is a Python keyword, so the field is `lam` and
this module maps the name both ways (messages still say `sae.lambda`).

The knobs of one arch are nested under it (`sae.jumprelu`, `sae.topk`), so a stage that never
builds that arch does not list them: calibrate reads no `sae.topk` key (topk has no lambda).
A knob written at its old flat place (`sae.tau`) fails naming its new one (`sae.jumprelu.tau`).
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field, fields
from mnist_sae.settings import ARCHS, DECODER_INITS, STES, SAEConfig, TrainSettings
from stages._common import NON_NEGATIVE, POSITIVE, ParamError, choice, load_params, rule


@dataclass(frozen=True)
class CalibrationParams:
    lambda_min: float = field(metadata=POSITIVE)  # smallest lambda of the geometric grid
    lambda_max: float = field(metadata=POSITIVE)  # largest lambda of the grid
    num: int = field(metadata=rule(lambda v: v >= 2, ">= 2"))  # grid points, trained at once as one batched model
    epochs: int = field(metadata=POSITIVE)  # epochs per grid point
    refine: int = field(metadata=NON_NEGATIVE)  # bisection steps in log-lambda around the best grid point
    batch_size: int = field(metadata=POSITIVE)  # minibatch size while calibrating

    def validate(self, prefix: str) -> None:
        if self.lambda_min >= self.lambda_max:
            raise ParamError(f"{prefix}.lambda_min = {self.lambda_min}: must be < lambda_max = {self.lambda_max}")


@dataclass(frozen=True)
class JumpReLUParams:
    """sae.jumprelu: knobs that matter only where a JumpReLU SAE is built (sae.arch jumprelu; the baselines' family)."""
    ste: str = field(metadata=choice(*STES))  # gate gradient: sigmoid surrogate | rectangle (Rajamanoharan 2024)
    tau: float = field(metadata=POSITIVE)  # sigmoid surrogate temperature
    bandwidth: float = field(metadata=POSITIVE)  # rectangle kernel width epsilon
    theta_init: float = field(metadata=POSITIVE)  # initial JumpReLU threshold
    theta_shift: bool  # after training shift all thresholds by one delta so val L0 = target


@dataclass(frozen=True)
class TopKParams:
    """sae.topk: knobs that matter only where a TopK SAE is trained (sae.arch topk; the baselines' family)."""
    k: int | None = field(metadata=POSITIVE)  # active latents per example; null = round(target_l0)
    aux_k: int = field(metadata=POSITIVE)  # dead latents used by the AuxK loss
    aux_coef: float = field(metadata=NON_NEGATIVE)  # AuxK loss weight (Gao et al. 2024: 1/32)
    dead_steps: int = field(metadata=POSITIVE)  # steps without firing after which a latent is dead


ARCH_SECTIONS = {"jumprelu": JumpReLUParams, "topk": TopKParams}


@dataclass(frozen=True)
class SAEParams:
    arch: str = field(metadata=choice(*ARCHS))  # jumprelu (MSE + lambda L0) | relu (MSE + lambda L1) | topk (+ AuxK)
    n_latents: int = field(metadata=POSITIVE)  # dictionary size F
    target_l0: float = field(metadata=POSITIVE)  # mean active latents per example that calibration aims at
    lam: float | None = field(metadata=POSITIVE)  # `lambda`: sparsity coefficient; null = the calibrated one
    epochs: int = field(metadata=POSITIVE)  # train_sae epochs
    lr: float = field(metadata=POSITIVE)  # Adam learning rate (calibration too)
    lr_decay: float = field(metadata=rule(lambda v: 0 <= v <= 1, "a number in [0, 1]"))  # share of last steps with lr decaying to 0
    batch_size: int = field(metadata=POSITIVE)  # train_sae minibatch size
    seed: int = field(metadata=NON_NEGATIVE)  # init and batch order (calibration too)
    seeds: int = field(metadata=POSITIVE)  # train_sae: models trained at once with seeds seed, seed+1, ...; metrics are mean and 95% interval
    kl_coef: float = field(metadata=NON_NEGATIVE)  # weight of KL(softmax(y) || softmax(y_hat)); logit site only
    log_every: int = field(metadata=POSITIVE)  # train_sae: steps per logged point of the training curves
    decoder_init: str = field(metadata=choice(*DECODER_INITS))  # random unit directions | data: centred training rows
    resample_every: int = field(metadata=NON_NEGATIVE)  # resample latents that did not fire in this many steps (0 = never)
    sparsity_warmup: float = field(metadata=rule(lambda v: 0 <= v <= 1, "a number in [0, 1]"))  # share of first steps with lambda ramping up from 0
    calibration: CalibrationParams
    jumprelu: JumpReLUParams  # the jumprelu-only knobs
    topk: TopKParams  # the topk-only knobs

    def validate(self, prefix: str) -> None:
        if self.target_l0 > self.n_latents:
            raise ParamError(f"{prefix}.target_l0 = {self.target_l0}: must be <= n_latents = {self.n_latents}")
        if self.arch == "topk" and self.top_k() > self.n_latents:
            raise ParamError(f"{prefix}.topk.k = {self.top_k()}: must be <= n_latents = {self.n_latents}")
        if self.arch == "topk" and self.top_k() < 1:
            raise ParamError(f"{prefix}.target_l0 = {self.target_l0}: rounds to k = 0; set {prefix}.topk.k")
        if self.topk.aux_k > self.n_latents:
            raise ParamError(f"{prefix}.topk.aux_k = {self.topk.aux_k}: must be <= n_latents = {self.n_latents}")

    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))

    def top_k(self) -> int:
        return self.topk.k if self.topk.k is not None else int(round(self.target_l0))

    def config(self, d_in: int) -> SAEConfig:
        # every arch's knobs go into the config (and so into the checkpoint), whatever sae.arch is
        j = self.jumprelu
        return SAEConfig(arch=self.arch, d_in=d_in, n_latents=self.n_latents, ste=j.ste, tau=j.tau,
                         bandwidth=j.bandwidth, theta_init=j.theta_init,
                         k=min(self.top_k(), self.n_latents) if self.arch == "topk" else 1, aux_k=self.topk.aux_k)

    def settings(self, epochs: int, batch_size: int) -> TrainSettings:
        return TrainSettings(lr=self.lr, epochs=epochs, batch_size=batch_size, kl_coef=self.kl_coef,
                             aux_coef=self.topk.aux_coef, dead_steps=self.topk.dead_steps, log_every=self.log_every,
                             lr_decay=self.lr_decay, decoder_init=self.decoder_init, resample_every=self.resample_every,
                             sparsity_warmup=self.sparsity_warmup)


def check_moved(node: dict, prefix: str) -> None:
    """An arch's knob at the SAE section's top level (its place before the nesting): one line
    naming where it lives now, in the form of any other unknown key."""
    for key in node:
        for arch, cls in ARCH_SECTIONS.items():
            if key in {f.name for f in fields(cls)}:
                allowed = sorted("lambda" if f.name == "lam" else f.name for f in fields(SAEParams))
                raise ParamError(f"{prefix}.{key}: unknown key (did you mean {prefix}.{arch}.{key}?); "
                                 f"allowed keys are {', '.join(allowed)}")


def load_sae_params(raw: dict) -> SAEParams:
    """params.yaml's `sae` section, validated (`lambda` read into the field `lam`)."""
    node = raw.get("sae")
    if isinstance(node, dict):
        if "lam" in node:
            raise ParamError("sae.lam: unknown key; the sparsity coefficient is sae.lambda")
        check_moved(node, "sae")
        node = {("lam" if k == "lambda" else k): v for k, v in node.items()}
        raw = {**raw, "sae": node}
    try:
        return load_params(SAEParams, "sae", raw)
    except ParamError as e:
        raise ParamError(re.sub(r"\blam\b", "lambda", str(e))) from None
