"""The `planted:` section of params.yaml: the planted-feature generator's settings.

Read by the planted stage and, for `acts.source: planted`, by acts_cache (a params module, so that
no stage imports another stage).
"""

from dataclasses import dataclass, field

from mnist_sae.planted import PlantedSpec
from stages._common import NON_NEGATIVE, POSITIVE, ParamError, rule

PROBABILITY = rule(lambda v: 0 < v <= 1, "a number in (0, 1]")
FRACTION = rule(lambda v: 0 < v < 0.5, "a number in (0, 0.5)")


@dataclass(frozen=True)
class PlantedParams:
    n_features: int = field(metadata=POSITIVE)  # T true features (T > d is superposition)
    d: int = field(metadata=POSITIVE)  # D, width of the activations
    n_rows: int = field(metadata=rule(lambda v: v >= 10, ">= 10"))  # rows per generator seed (all splits)
    p_min: float = field(metadata=PROBABILITY)  # firing probability of the rarest feature
    p_max: float = field(metadata=PROBABILITY)  # of the most frequent one; Zipf-ranked in between
    zipf_exponent: float = field(metadata=NON_NEGATIVE)  # s in p ~ (rank)^-s (0: all at p_max)
    mag_mean: float  # magnitudes |N(mag_mean, mag_std^2)| (folded normal)
    mag_std: float = field(metadata=NON_NEGATIVE)
    n_parents: int = field(metadata=NON_NEGATIVE)  # hierarchy: parent features (0 = none)
    children: int = field(metadata=NON_NEGATIVE)  # hierarchy: mutually exclusive children per parent
    corr_rank: int = field(metadata=NON_NEGATIVE)  # low-rank Gaussian copula of the firing (0 = independent)
    corr_strength: float = field(metadata=rule(lambda v: 0 <= v < 1, "a number in [0, 1)"))  # shared variance share
    noise_std: float = field(metadata=NON_NEGATIVE)  # isotropic Gaussian noise on x
    seeds: list[int] = field(metadata=rule(lambda v: len(v) > 0 and all(x >= 0 for x in v), "a non-empty list of integers >= 0"))
    val_fraction: float = field(metadata=FRACTION)  # rows held out for calibration
    test_fraction: float = field(metadata=FRACTION)  # rows held out for scoring

    def validate(self, prefix: str) -> None:
        if self.p_min > self.p_max:
            raise ParamError(f"{prefix}.p_min = {self.p_min}: must be <= p_max = {self.p_max}")
        if (self.n_parents > 0) != (self.children > 0):
            raise ParamError(f"{prefix}.n_parents = {self.n_parents}: n_parents and children are both 0 or both > 0 "
                             f"(children = {self.children})")
        if self.n_parents * (1 + self.children) > self.n_features:
            raise ParamError(f"{prefix}.n_parents = {self.n_parents}: n_parents x (1 + children) must be <= "
                             f"n_features = {self.n_features}")
        if (self.corr_rank == 0) != (self.corr_strength == 0):
            raise ParamError(f"{prefix}.corr_rank = {self.corr_rank}: corr_rank and corr_strength are both 0 or both > 0 "
                             f"(corr_strength = {self.corr_strength})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ParamError(f"{prefix}.seeds = {self.seeds}: must be distinct")
        if round(self.val_fraction * self.n_rows) < 1 or round(self.test_fraction * self.n_rows) < 1:
            raise ParamError(f"{prefix}.n_rows = {self.n_rows}: too few rows for a val and a test split")

    def spec(self) -> PlantedSpec:
        keep = ("n_features", "d", "p_min", "p_max", "zipf_exponent", "mag_mean", "mag_std", "n_parents", "children",
                "corr_rank", "corr_strength", "noise_std")
        return PlantedSpec(**{k: getattr(self, k) for k in keep})
