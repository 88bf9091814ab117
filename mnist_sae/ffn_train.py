"""Training loops on in-memory tensors: model, data, settings and a generator in; history out.

Batches are rows indexed from a seeded permutation of a tensor that lives in memory: no
DataLoader, no per-example Python. At batch 8 the per-step overhead dominates, so the optimizer
is Adam with fused=True (one kernel for all parameters; ~10x faster than the default foreach
step on the 8192-wide FFN here, see DESIGN.md and bench/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from tqdm import tqdm

from mnist_sae.ffn import FFN, pixels_to_float


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with fused=True wherever the parameters live (CPU and CUDA both support it)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


@dataclass
class FFNHistory:
    loss_per_epoch: list[float] = field(default_factory=list)  # mean train CE of each epoch
    diverged: bool = False  # a non-finite loss stopped training
    steps: int = 0


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
    opt = make_adam(model.parameters(), lr)
    history = FFNHistory()
    steps_per_epoch = n // batch_size  # the last partial batch is dropped, as the notebooks did
    for epoch in range(epochs):
        perm_N = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"ffn epoch {epoch + 1}/{epochs}", disable=not progress,
                   mininterval=2.0, leave=True)
        for step in bar:
            idx_B = perm_N[step * batch_size:(step + 1) * batch_size]
            loss = F.cross_entropy(model(xf_NI[idx_B]), y_N[idx_B])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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
