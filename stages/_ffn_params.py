"""The `ffn:` section of params.yaml: read by train_ffn (the sweep) and select_ffn (the winner).

A module of its own so that select_ffn does not import the train_ffn stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stages._common import NON_EMPTY_POSITIVE, NON_NEGATIVE, POSITIVE, choice


@dataclass(frozen=True)
class SweepParams:
    hidden: list[int] = field(metadata=NON_EMPTY_POSITIVE)  # hidden widths
    lr: list[float] = field(metadata=NON_EMPTY_POSITIVE)  # Adam learning rates
    workers: int = field(metadata=NON_NEGATIVE)  # parallel training processes; 0 = one per core (bits do not depend on it)


@dataclass(frozen=True)
class FFNParams:
    type: str = field(metadata=choice("relu", "geglu"))  # hidden nonlinearity
    batch_size: int = field(metadata=POSITIVE)  # examples per Adam step (8 in the original notebooks)
    epochs: int = field(metadata=POSITIVE)  # passes over the train split
    seed: int = field(metadata=NON_NEGATIVE)  # init and batch-order seed (the same for every grid point)
    sweep: SweepParams  # the grid this stage trains
