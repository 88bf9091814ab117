"""The `baselines` params section, shared by the baselines stage (fits the reference methods) and
the compare stage (scores the main SAE the same way and writes the report)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stages._common import NON_NEGATIVE, POSITIVE, ParamError, choice, load_params, rule

N_CLASSES = 10


@dataclass(frozen=True)
class ProbeParams:
    C: float = field(metadata=POSITIVE)  # inverse L2 strength of the logistic-regression probe
    max_iter: int = field(metadata=POSITIVE)  # lbfgs iterations
    n_train: int = field(metadata=POSITIVE)  # train examples the probes are fitted on (seeded subsample)


@dataclass(frozen=True)
class BaselinesParams:
    k: list[int] = field(metadata=rule(lambda v: len(v) > 0 and all(x >= 1 for x in v), "a non-empty list of integers >= 1"))  # matched sparsities
    eval_split: str = field(metadata=choice("val", "test"))  # split every method is scored on
    seed: int = field(metadata=NON_NEGATIVE)  # k-means, random directions, SAE family, purity sampling, probes
    top_n: int = field(metadata=POSITIVE)  # examples per latent in the purity metrics
    kmeans_n_init: int = field(metadata=POSITIVE)  # k-means restarts (k-means++ init)
    kmeans_max_iter: int = field(metadata=POSITIVE)  # Lloyd iterations per restart
    family: bool  # train the SAE family at each k (false: reference methods and the main SAE only)
    batch_size: int = field(metadata=POSITIVE)  # SAE family minibatch (larger than train_sae's, for speed)
    epochs: int = field(metadata=POSITIVE)  # SAE family epochs (calibration grid and final model)
    lr: float = field(metadata=POSITIVE)  # SAE family Adam learning rate (larger batch, larger step)
    lambda_min: float = field(metadata=POSITIVE)  # geometric lambda grid of the family's calibration
    lambda_max: float = field(metadata=POSITIVE)
    lambda_num: int = field(metadata=rule(lambda v: v >= 2, ">= 2"))
    refine: int = field(metadata=NON_NEGATIVE)  # bisection steps after the grid
    kl_coef: float = field(metadata=POSITIVE)  # KL weight of sae_jumprelu_kl (logit site only)
    dead_steps: int = field(metadata=POSITIVE)  # topk AuxK: steps without firing before a latent is dead
    shift_thresholds: bool  # jumprelu: shift thresholds so that the val L0 is exactly k
    probe: ProbeParams

    def validate(self, prefix: str) -> None:
        if sorted(set(self.k)) != self.k:
            raise ParamError(f"{prefix}.k = {self.k}: must be strictly increasing")
        if max(self.k) > N_CLASSES:
            raise ParamError(f"{prefix}.k = {self.k}: at most {N_CLASSES} (the class-direction dictionary has {N_CLASSES} atoms)")
        if self.lambda_min >= self.lambda_max:
            raise ParamError(f"{prefix}.lambda_min = {self.lambda_min}: must be < lambda_max = {self.lambda_max}")


def load_baselines_params(raw: dict) -> BaselinesParams:
    return load_params(BaselinesParams, "baselines", raw)


def matched_ks(p: BaselinesParams, target_l0: float) -> list[int]:
    """baselines.k plus the main SAE's target L0 (rounded, >= 1): the comparison with the main
    SAE is always made at its own sparsity, whatever baselines.k lists (issue 16: a target-20
    hidden-site SAE was otherwise compared with methods at k <= 5)."""
    return sorted(set(p.k) | {max(1, int(round(target_l0)))})
