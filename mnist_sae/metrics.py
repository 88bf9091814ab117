"""Every metric, defined once. Training logs, evaluate and baselines import from here.

Each function is pure (tensors in, float or tensor out) and its docstring states the formula and
how it averages.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cross_entropy(logits_NO: torch.Tensor, y_N: torch.Tensor) -> float:
    """CE = mean over examples of -log softmax(logits)[label] (natural log)."""
    return F.cross_entropy(logits_NO.double(), y_N.long()).item()


def accuracy(logits_NO: torch.Tensor, y_N: torch.Tensor) -> float:
    """Accuracy = mean over examples of 1[argmax logits == label], a fraction in [0, 1]."""
    return (logits_NO.argmax(dim=1) == y_N.long()).double().mean().item()
