"""Fused Adam / AdamW for loops whose steps are tiny: torch's own kernel, called directly.

At the SAE's shapes (batch 8, 32 latents) a training step is nearly all per-call overhead, and
`torch.optim.Adam(fused=True).step()` plus `zero_grad` were a third of it (profiler hooks,
parameter grouping, lazy state checks on every call; bench/bench_sae_step.py: 0.98 vs 0.64 ms
per step). `FusedAdam` keeps the
state torch.optim.Adam would keep and makes the same two calls its fused path makes
(`torch._foreach_add_` on the step counts, then `torch._fused_adam_` / `torch._fused_adamw_`
with the same arguments), so the weights it produces are torch's bit for bit
(tests/test_adam.py).
"""

from __future__ import annotations

import torch


class FusedAdam:
    """One parameter group of Adam (decoupled=False) or AdamW (decoupled=True), fused kernel.

    `lr` may be changed between steps (a schedule). `state[p]` holds "step", "exp_avg" and
    "exp_avg_sq" as torch.optim.Adam's state does (resampling resets moments through it). A
    parameter whose .grad is None at a step is skipped, its step count unchanged, as in torch.
    """

    def __init__(self, params, lr: float, *, weight_decay: float = 0.0, decoupled: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, eps
        self._kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        self.state = {p: {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                          "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                          "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                      for p in self.params}

    def zero_grad(self) -> None:
        """Every parameter's .grad <- None (torch's zero_grad(set_to_none=True))."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        states = [self.state[p] for p in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        self._kernel(live, [p.grad for p in live], [s["exp_avg"] for s in states],
                     [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=self.lr,
                     beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
                     maximize=False, grad_scale=None, found_inf=None)
