"""Training loops on in-memory tensors: model, data, settings and a generator in; history out.

Batches are rows indexed from a seeded permutation of a tensor that lives in memory: no
DataLoader, no per-example Python. The optimizer is Adam. On CPU the pixel weights (W_in_IH, and
W_gate_IH for geglu) take the sparse-input kernels of mnist_sae/sparse_input.py: the product
x_BI @ W skips the zero pixels, and the weight gradient never exists as a tensor, being folded
into one pass that updates W, m and v. Autograd and torch's fused Adam (one kernel for all
parameters; ~10x faster than the default foreach step at batch 8, DESIGN.md) handle the rest of
the network: the biases and the head. On other devices every parameter takes fused Adam.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from tqdm import tqdm

from mnist_sae import sparse_input
from mnist_sae.adam import FusedAdam
from mnist_sae.ffn import FFN, pixels_to_float


def make_adam(params, lr: float) -> FusedAdam:
    """torch's fused Adam kernel wherever the parameters live (CPU and CUDA both have it), called
    without the Optimizer wrapper (mnist_sae.adam: the same bits, less per-step overhead)."""
    return FusedAdam(params, lr)


@dataclass
class FFNHistory:
    loss_per_epoch: list[float] = field(default_factory=list)  # mean train CE of each epoch
    diverged: bool = False  # a non-finite loss stopped training
    steps: int = 0


class _Step:
    """One Adam step on a batch: the CPU path (sparse-input kernels for the pixel weights) or,
    on other devices, autograd and fused Adam for every parameter."""

    def __init__(self, model: FFN, lr: float):
        self.model = model
        self.sparse = model.W_in_IH.device.type == "cpu"
        pixel_weights = model.input_weights() if self.sparse else []
        self.input_adams = [sparse_input.SparseInputAdam(W_IH, lr) for W_IH in pixel_weights]
        others = [p for p in model.parameters() if all(p is not W for W in pixel_weights)]
        self.opt = make_adam(others, lr)
        self.ahead = None  # (x_BI, [x_BI @ W]) computed by the previous step's update pass

    def __call__(self, x_BI: torch.Tensor, labels_B: torch.Tensor, x_next_BI: torch.Tensor | None = None) -> torch.Tensor:
        """One step on (x_BI, labels_B); x_next_BI, the next batch if known, lets the CPU path
        compute its products inside this step's update pass."""
        model = self.model
        if not self.sparse:
            loss = F.cross_entropy(model(x_BI), labels_B)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return loss
        # the products x_BI @ W are leaves: backward stops at them and leaves d loss / d product
        if self.ahead is not None and torch.equal(self.ahead[0], x_BI):
            xw_BH = self.ahead[1]
        else:
            xw_BH = [sparse_input.product(x_BI, W_IH) for W_IH in model.input_weights()]
        xw_BH = [xw.requires_grad_(True) for xw in xw_BH]
        loss = F.cross_entropy(model.head(model.hidden_from(*xw_BH)), labels_B)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        ahead = [adam.step(x_BI, xw.grad, x_next_BI) for adam, xw in zip(self.input_adams, xw_BH)]
        self.ahead = None if x_next_BI is None else (x_next_BI, ahead)
        return loss


def train_ffn(model: FFN, x_NI: torch.Tensor, y_N: torch.Tensor, *, lr: float, epochs: int,
              batch_size: int, generator: torch.Generator, progress: bool = True,
              check_every: int = 200, on_step=None) -> FFNHistory:
    """Adam on mean CE over minibatches; uint8 pixels x_NI are scaled to [0, 1] once, up front.

    A NaN/inf loss marks the run diverged and stops it (checked every `check_every` steps and
    at each epoch's end, so the check costs no per-step synchronisation).
    """
    n = x_NI.shape[0]
    if x_NI.ndim != 2 or x_NI.shape[1] != model.n_in or y_N.shape != (n,):
        raise ValueError(f"train_ffn: expected x [N, {model.n_in}] and y [N], got {tuple(x_NI.shape)} and {tuple(y_N.shape)}")
    device = model.W_in_IH.device
    xf_NI = pixels_to_float(x_NI).to(device)
    y_N = y_N.long().to(device)
    step_fn = _Step(model, lr)
    history = FFNHistory()
    steps_per_epoch = n // batch_size  # the last partial batch is dropped, as the notebooks did
    for epoch in range(epochs):
        perm_N = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"ffn epoch {epoch + 1}/{epochs}", disable=not progress,
                   mininterval=2.0, leave=True)
        for step in bar:
            idx_B = perm_N[step * batch_size:(step + 1) * batch_size]
            ahead = step_fn.sparse and step + 1 < steps_per_epoch  # the next batch's products come with this update
            x_next_BI = xf_NI[perm_N[(step + 1) * batch_size:(step + 2) * batch_size]] if ahead else None
            loss = step_fn(xf_NI[idx_B], y_N[idx_B], x_next_BI)
            loss_sum += loss.detach()
            history.steps += 1
            if on_step is not None:
                on_step(history.steps, loss)
            if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum):
                break
        bar.close()
        mean_loss = (loss_sum / max(1, steps_per_epoch)).item()
        history.loss_per_epoch.append(mean_loss)
        if not torch.isfinite(torch.tensor(mean_loss)) or not all(torch.isfinite(p).all() for p in model.parameters()):
            history.diverged = True
            break
    return history
