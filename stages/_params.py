"""The params sections that belong to one stage each whose module imports torch: collect,
evaluate, features and truth. Their dataclasses live here, apart from the stages, so that
check_params imports every section's validator without torch (the whole stage ~0.6 s instead of
~3 s; it reruns on every `dvc exp run -S ...`). Each stage imports its own from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from mnist_sae.settings import BASELINES, SAE_VARIANTS, SITES, BenchSettings, lambda_grid
from stages._common import NON_NEGATIVE, POSITIVE, ParamError, choice, rule


def subset_of(names: tuple[str, ...]) -> dict:  # here, not in _common.py: every stage depends on that file
    return rule(lambda v: len(set(v)) == len(v) and set(v) <= set(names),
                "a list of distinct names from " + ", ".join(names))


@dataclass(frozen=True)
class CollectParams:
    site: str = field(metadata=choice(*SITES))  # what the SAE reads: the FFN's logits or hidden activations
    dtype: str = field(metadata=choice("float32", "float16"))  # storage of acts (float16 halves hidden-site disk)
    normalize: bool  # SAE input z = (y - train mean) / train std per dimension
    batch_size: int = field(metadata=POSITIVE)  # rows per forward chunk (memory only; results identical)


@dataclass(frozen=True)
class EvaluateParams:
    # a latent is dense when active on more than this share of a split's examples
    dense_threshold: float = field(metadata=rule(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    hist_bins: int = field(metadata=POSITIVE)  # bins of the per-example MSE histogram (log10-spaced)


@dataclass(frozen=True)
class FeaturesParams:
    split: str = field(metadata=choice("train", "val", "test"))  # examples for firing stats, top-k and input patterns
    top_n: int = field(metadata=POSITIVE)  # top activating examples per latent (pictures, input-pattern average)


@dataclass(frozen=True)
class TruthParams:
    l0: list[int] = field(metadata=rule(lambda v: len(v) > 0 and all(x >= 1 for x in v), "a non-empty list of integers >= 1"))  # matched L0s
    n_latents: int = field(metadata=POSITIVE)  # F of every SAE, k-means and random dictionary
    seed: int = field(metadata=NON_NEGATIVE)  # base seed of SAE init / batches, k-means, random directions
    epochs: int = field(metadata=POSITIVE)  # SAE epochs (calibration grid and final model)
    batch_size: int = field(metadata=POSITIVE)
    lr: float = field(metadata=POSITIVE)  # Adam learning rate
    lr_decay: float = field(metadata=rule(lambda v: 0 <= v <= 1, "a number in [0, 1]"))  # share of last steps decaying to 0
    lambda_min: float = field(metadata=POSITIVE)  # geometric calibration grid (jumprelu L0 and relu L1 share it)
    lambda_max: float = field(metadata=POSITIVE)
    lambda_num: int = field(metadata=rule(lambda v: v >= 2, ">= 2"))
    refine: int = field(metadata=NON_NEGATIVE)  # bisection steps in log-lambda after the grid
    tau: float = field(metadata=POSITIVE)  # jumprelu sigmoid surrogate temperature
    bandwidth: float = field(metadata=POSITIVE)  # jumprelu rectangle kernel width
    theta_init: float = field(metadata=POSITIVE)  # initial JumpReLU threshold
    aux_k: int = field(metadata=POSITIVE)  # topk AuxK: dead latents reconstructing the residual
    aux_coef: float = field(metadata=NON_NEGATIVE)  # topk AuxK loss weight
    dead_steps: int = field(metadata=POSITIVE)  # topk AuxK: steps without firing before a latent is dead
    shift_thresholds: bool  # jumprelu: one global threshold shift so that the val L0 is exactly k
    kmeans_n_init: int = field(metadata=POSITIVE)  # k-means restarts
    kmeans_max_iter: int = field(metadata=POSITIVE)  # Lloyd iterations per restart
    recovered_cosine: float = field(metadata=rule(lambda v: 0 < v <= 1, "a number in (0, 1]"))  # matched |cos| that counts as recovered
    archs: list[str] = field(metadata=subset_of(SAE_VARIANTS))  # the SAE variants fitted
    baselines: list[str] = field(metadata=subset_of(BASELINES))  # the dictionary baselines fitted

    def validate(self, prefix: str) -> None:
        if sorted(set(self.l0)) != self.l0:
            raise ParamError(f"{prefix}.l0 = {self.l0}: must be strictly increasing")
        if max(self.l0) > self.n_latents:
            raise ParamError(f"{prefix}.l0 = {self.l0}: at most n_latents = {self.n_latents}")
        if self.lambda_min >= self.lambda_max:
            raise ParamError(f"{prefix}.lambda_min = {self.lambda_min}: must be < lambda_max = {self.lambda_max}")
        if not self.archs and not self.baselines:
            raise ParamError(f"{prefix}.archs = []: archs and baselines are both empty; fit at least one method")

    def settings(self) -> BenchSettings:
        """The benchmark's settings: every field of the same name, plus the lambda grid."""
        shared = {f.name: getattr(self, f.name) for f in fields(BenchSettings) if f.name != "lambdas"}
        return BenchSettings(**shared, lambdas=tuple(lambda_grid(self.lambda_min, self.lambda_max, self.lambda_num)))
