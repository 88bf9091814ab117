"""The `acts:` section of params.yaml, shared by the activation-cache track's stages.

Every acts_* stage validates the whole section before any work (a typo anywhere stops each one);
each lists in dvc.yaml only the keys it reads. `acts.sae` is the MNIST track's SAEParams (one set
of SAE knobs, one validator), read from its own section so `sae.lambda` keeps meaning the MNIST SAE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from mnist_sae.acts import ALLOWED_SOURCE, parse_source
from mnist_sae.settings import TrainSettings, ViTConfig, ViTSettings
from stages._common import (NON_NEGATIVE, POSITIVE, ParamError, choice, load_device, load_params, read_params_file,
                            rule, setup_torch)
from stages._sae_params import SAEParams, check_moved

FRACTION = rule(lambda v: 0 < v < 0.5, "a number in (0, 0.5)")


def _source_ok(v: str) -> bool:
    try:
        parse_source(v)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class ModelParams:
    d_model: int = field(metadata=POSITIVE)  # residual width D (the SAE's input width)
    n_layers: int = field(metadata=POSITIVE)  # transformer blocks; the cache holds the residual after each
    n_heads: int = field(metadata=POSITIVE)  # attention heads (d_model must be a multiple)
    d_mlp: int = field(metadata=POSITIVE)  # MLP hidden width
    epochs: int = field(metadata=POSITIVE)  # passes over the prepared train split
    batch_size: int = field(metadata=POSITIVE)
    lr: float = field(metadata=POSITIVE)  # AdamW peak learning rate (linear warmup 5%, then linear decay to 0)
    weight_decay: float = field(metadata=NON_NEGATIVE)  # AdamW decoupled weight decay
    seed: int = field(metadata=NON_NEGATIVE)  # init and batch order

    def validate(self, prefix: str) -> None:
        if self.d_model % self.n_heads:
            raise ParamError(f"{prefix}.n_heads = {self.n_heads}: must divide d_model = {self.d_model}")

    def config(self) -> ViTConfig:
        return ViTConfig(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads, d_mlp=self.d_mlp)

    def settings(self) -> ViTSettings:
        return ViTSettings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class EvalParams:
    # a latent is dense when active on more than this share of a split's rows
    dense_threshold: float = field(metadata=rule(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    probe_token: int | None = field(metadata=NON_NEGATIVE)  # probes read this token's rows (0 = class token); null = all
    probe_n_train: int = field(metadata=POSITIVE)  # train rows per probe (seeded subsample), same for codes and raw
    probe_C: float = field(metadata=POSITIVE)  # inverse L2 strength of the logistic probes
    probe_max_iter: int = field(metadata=POSITIVE)  # lbfgs iterations
    top_latents: int = field(metadata=POSITIVE)  # most-used latents in the usage table and heat map
    max_rows: int = field(metadata=POSITIVE)  # a split with more rows is scored on a seeded subsample of this many
    chunk_rows: int = field(metadata=POSITIVE)  # rows per chunk of every pass over a split (memory ~ one chunk)
    seed: int = field(metadata=NON_NEGATIVE)  # probe subsample and fit


@dataclass(frozen=True)
class OptimizerParams:
    """acts.sae.optimizer and acts.sae.weight_decay: read beside acts.sae's SAEParams (the MNIST
    `sae:` section has no such keys; its loop stays fused Adam)."""
    optimizer: str = field(metadata=choice("adam", "adamw"))  # adam (as the MNIST SAE) | adamw (the seed-003 recipe)
    weight_decay: float = field(metadata=NON_NEGATIVE)  # adamw's decoupled weight decay; 0.0 with adam

    def validate(self, prefix: str) -> None:
        if self.optimizer == "adam" and self.weight_decay != 0:
            raise ParamError(f"{prefix}.weight_decay = {self.weight_decay}: only with optimizer adamw (set 0.0 for adam)")


OPT_KEYS = ("optimizer", "weight_decay")


@dataclass(frozen=True)
class ActsParams:
    source: str = field(metadata=rule(_source_ok, ALLOWED_SOURCE))  # where the activations come from (planted: the `planted:` section, first seed)
    labels: str | None  # user caches: (N,) integer .npy of labels; null = none (transformer: the digit)
    meta: str | None  # user caches: .npz of named (N,) integer columns (example, layer, token...); null = none
    n_examples: int = field(metadata=rule(lambda v: v >= 10, ">= 10"))  # transformer: test images whose residuals are cached
    val_fraction: float = field(metadata=FRACTION)  # share of examples (not rows) held out for calibration
    test_fraction: float = field(metadata=FRACTION)  # share of examples held out for evaluation
    seed: int = field(metadata=NON_NEGATIVE)  # example subsample and split
    per_layer: bool  # caches with a layer column: also one SAE per layer (its rows only), compared in acts_eval
    model: ModelParams
    sae: SAEParams
    eval: EvalParams
    sae_opt: OptimizerParams  # acts.sae.optimizer, acts.sae.weight_decay (load_acts_params moves them here)

    def sae_settings(self, epochs: int, batch_size: int) -> TrainSettings:
        """acts.sae's training settings with the acts.sae optimizer."""
        return replace(self.sae.settings(epochs, batch_size), optimizer=self.sae_opt.optimizer,
                       weight_decay=self.sae_opt.weight_decay)

    def validate(self, prefix: str) -> None:
        if self.sae.kl_coef != 0:
            raise ParamError(f"{prefix}.sae.kl_coef = {self.sae.kl_coef}: must be 0.0 (no logits at a residual site)")
        if self.sae.seeds != 1:
            raise ParamError(f"{prefix}.sae.seeds = {self.sae.seeds}: must be 1 (acts_sae trains one SAE, seed "
                             f"{prefix}.sae.seed; vary that for another seed)")
        kind = parse_source(self.source).kind
        if kind in ("transformer", "planted") and (self.labels is not None or self.meta is not None):
            raise ParamError(f"{prefix}.labels = {self.labels!r}, meta = {self.meta!r}: only for npy: or raw: sources; "
                             f"the {kind} source writes its own (set null)")


def load_acts_params(raw: dict) -> ActsParams:
    """params.yaml's `acts` section, validated (`acts.sae.lambda` read into the field `lam`)."""
    node = raw.get("acts")
    if isinstance(node, dict) and isinstance(node.get("sae"), dict):
        sae = node["sae"]
        if "lam" in sae or "sae_opt" in node:
            raise ParamError("acts.sae.lam: unknown key; the sparsity coefficient is acts.sae.lambda" if "lam" in sae
                             else "acts.sae_opt: unknown key; the optimizer is acts.sae.optimizer")
        check_moved(sae, "acts.sae")
        raw = {**raw, "acts": {**node, "sae_opt": {k: sae[k] for k in OPT_KEYS if k in sae},
                               "sae": {("lam" if k == "lambda" else k): v for k, v in sae.items() if k not in OPT_KEYS}}}
    try:
        return load_params(ActsParams, "acts", raw)
    except ParamError as e:
        raise ParamError(re.sub(r"\blam\b", "lambda", str(e)).replace("acts.sae_opt", "acts.sae")) from None


def start_acts_stage(seed_of=lambda p: p.seed) -> tuple[ActsParams, str]:
    """Params and device validated before any work; torch seeded."""
    raw = read_params_file()
    p = load_acts_params(raw)
    device = load_device(raw)
    setup_torch(seed_of(p))
    return p, device
