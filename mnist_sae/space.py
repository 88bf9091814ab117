"""The SAE's input space: the one object that maps a site's raw activations y to what the SAE
reads, z, and back.

    z = (y - y_mean_D) / y_std_D    when `normalize` (per-dimension statistics of the train split)
    z = y                           otherwise

Every stage and the loss go through `InputSpace` instead of passing (mean, std, flag) around, so
"which units is this tensor in" has one answer: `to_z` / `to_y` for rows, `to_y_delta` for a
difference of rows (a decoder direction; the mean cancels). The KL term of the SAE loss compares
softmax(to_y(z)) with softmax(to_y(z_hat)): with `normalize` false that is softmax(z), by
construction, not softmax(z * std + mean) (issue 15's bug, when the statistics were passed on
regardless of the flag).

`y_mean_D` is also the mean-ablation vector of CE recovered (metrics.fidelity). It is the train
mean of y, not of z: the mean of z (0 up to rounding when normalized) is called z_mean_D where it
is used (the reference dictionaries' bias, b_dec's initial value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputSpace:
    y_mean_D: torch.Tensor  # float32 train mean of the raw activations y, per dimension
    y_std_D: torch.Tensor  # float32 train std of y (1 where y never varies: collect.normalization_stats)
    normalize: bool  # z = (y - mean) / std when true, z = y when false

    def __post_init__(self):
        if self.y_mean_D.ndim != 1 or self.y_std_D.shape != self.y_mean_D.shape:
            raise ValueError(f"InputSpace: mean {tuple(self.y_mean_D.shape)} and std {tuple(self.y_std_D.shape)} "
                             f"must be two vectors of one length")

    @classmethod
    def identity(cls, d: int) -> "InputSpace":
        """z = y in d dimensions (mean 0, std 1, not normalized): a cache or logits used as they are."""
        return cls(torch.zeros(d), torch.ones(d), False)

    @property
    def d(self) -> int:
        return self.y_mean_D.shape[0]

    def to(self, *args) -> "InputSpace":
        """The statistics moved or cast as Tensor.to(*args) does (a device, a dtype, or both)."""
        return InputSpace(self.y_mean_D.to(*args), self.y_std_D.to(*args), self.normalize)

    def _check(self, x_ND: torch.Tensor, name: str) -> None:
        if x_ND.shape[-1] != self.d:
            raise ValueError(f"InputSpace.{name}: rows of width {x_ND.shape[-1]}, the space has {self.d} dimensions")

    def to_z(self, y_ND: torch.Tensor) -> torch.Tensor:
        """Raw activations -> the SAE's input."""
        self._check(y_ND, "to_z")
        return (y_ND - self.y_mean_D) / self.y_std_D if self.normalize else y_ND

    def to_y(self, z_ND: torch.Tensor) -> torch.Tensor:
        """The SAE's input (or reconstruction) -> raw activations, the inverse of `to_z`."""
        self._check(z_ND, "to_y")
        return z_ND * self.y_std_D + self.y_mean_D if self.normalize else z_ND

    def to_y_delta(self, dz_ND: torch.Tensor) -> torch.Tensor:
        """A difference of z rows (e.g. a decoder direction times an activation) in raw units:
        dz * std when normalized (the mean cancels), dz otherwise."""
        self._check(dz_ND, "to_y_delta")
        return dz_ND * self.y_std_D if self.normalize else dz_ND
