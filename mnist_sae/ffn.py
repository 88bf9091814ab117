"""The classifier: one hidden layer, ReLU or GeGLU, stored the way it is used (x_BI @ W_in_IH)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mnist_sae import sparse_input
from mnist_sae.pixels import pixels_to_float


class FFN(nn.Module):
    """y_BO = act(x_BI) @ W_out_HO + b_out_O with
    relu:  h_BH = relu(x_BI @ W_in_IH + b_in_H)
    geglu: h_BH = gelu(x_BI @ W_gate_IH + b_gate_H) * (x_BI @ W_in_IH + b_in_H)  (Shazeer 2020)
    Pixels come in as floats in [0, 1] (uint8 / 255).
    """

    def __init__(self, n_hidden: int, kind: str = "relu", n_in: int = 784, n_out: int = 10,
                 generator: torch.Generator | None = None):
        super().__init__()
        if kind not in ("relu", "geglu"):
            raise ValueError(f"FFN kind must be 'relu' or 'geglu', got {kind!r}")
        self.kind, self.n_in, self.n_hidden, self.n_out = kind, n_in, n_hidden, n_out

        def uniform(fan_in, *shape):
            # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound, generator=generator))

        self.W_in_IH = uniform(n_in, n_in, n_hidden)
        self.b_in_H = uniform(n_in, n_hidden)
        if kind == "geglu":
            self.W_gate_IH = uniform(n_in, n_in, n_hidden)
            self.b_gate_H = uniform(n_in, n_hidden)
        self.W_out_HO = uniform(n_hidden, n_hidden, n_out)
        self.b_out_O = uniform(n_hidden, n_out)

    def input_weights(self) -> list[nn.Parameter]:
        """The weights that multiply the pixels: [W_in_IH] (relu) or [W_in_IH, W_gate_IH] (geglu)."""
        return [self.W_in_IH] if self.kind == "relu" else [self.W_in_IH, self.W_gate_IH]

    def hidden(self, x_BI: torch.Tensor) -> torch.Tensor:
        """x_BI @ W by the sparse-input kernel on CPU (mnist_sae/sparse_input.py), `@` elsewhere."""
        return self.hidden_from(*[sparse_input.matmul(x_BI, W_IH) for W_IH in self.input_weights()])

    def hidden_from(self, xw_in_BH: torch.Tensor, xw_gate_BH: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden layer from the pixel products x_BI @ W_in_IH (and x_BI @ W_gate_IH for geglu)."""
        pre_BH = xw_in_BH + self.b_in_H
        if self.kind == "relu":
            return F.relu(pre_BH)
        return F.gelu(xw_gate_BH + self.b_gate_H) * pre_BH

    def head(self, h_BH: torch.Tensor) -> torch.Tensor:
        return h_BH @ self.W_out_HO + self.b_out_O

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x_BI))

    def config(self) -> dict:
        return {"n_hidden": self.n_hidden, "kind": self.kind, "n_in": self.n_in, "n_out": self.n_out}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "FFN":
        """ckpt = {"config": FFN.config(), "state": state_dict}, as the train_ffn stage saves it."""
        model = cls(**ckpt["config"])
        model.load_state_dict(ckpt["state"])
        return model


@torch.no_grad()
def apply_in_chunks(fn, x_NI: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """fn over x in chunks of rows (uint8 pixels converted per chunk), concatenated."""
    return torch.cat([fn(pixels_to_float(x_NI[i:i + chunk])) for i in range(0, x_NI.shape[0], chunk)])
