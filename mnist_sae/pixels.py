"""Pixels as every model here reads them: uint8 -> float32 in [0, 1] (uint8 / 255).

Its own module so that the patch transformer's stages (vit.py) and the readers of the collect
stage's folder do not depend on the FFN's code (a change to the FFN reruns only the MNIST track).
"""

from __future__ import annotations

import torch


def pixels_to_float(x_NI: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], the scaling of the original notebooks."""
    return x_NI.to(torch.float32) / 255.0
