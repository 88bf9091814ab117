"""mnist_sae.adam.FusedAdam against torch.optim.Adam / AdamW (fused=True): the same bits."""

import pytest
import torch

from mnist_sae.adam import FusedAdam


def _run(make_opt, set_lr, steps=25):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 7, generator=gen)), torch.nn.Parameter(torch.randn(7, generator=gen)),
              torch.nn.Parameter(torch.randn(3, generator=gen))]
    opt = make_opt(params)
    for step in range(steps):
        for p in params:
            p.grad = None
        loss = (params[0].sin() @ params[1].tanh()).square().sum()
        if step % 3:  # the third parameter has no gradient on some steps: skipped, step count kept
            loss = loss + params[2].pow(3).sum()
        loss.backward()
        set_lr(opt, 1e-2 * (steps - step) / steps)  # a schedule: lr changes between steps
        opt.step()
    return [p.detach().clone() for p in params], opt


@pytest.mark.parametrize("decoupled,weight_decay", [(False, 0.0), (False, 0.1), (True, 0.0), (True, 0.05)])
def test_fused_adam_matches_torch_bit_for_bit(decoupled, weight_decay):
    torch_cls = torch.optim.AdamW if decoupled else torch.optim.Adam

    def set_torch_lr(opt, lr):
        opt.param_groups[0]["lr"] = lr

    def set_lr(opt, lr):
        opt.lr = lr

    want, ref = _run(lambda ps: torch_cls(ps, lr=1e-2, weight_decay=weight_decay, fused=True), set_torch_lr)
    got, ours = _run(lambda ps: FusedAdam(ps, 1e-2, weight_decay=weight_decay, decoupled=decoupled), set_lr)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    for p_ref, p_ours in zip(ref.param_groups[0]["params"], ours.params):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ref.state[p_ref][key], ours.state[p_ours][key]), key
    # the skipped steps really were skipped (the test can tell a parameter without a gradient apart)
    assert float(ours.state[ours.params[2]]["step"]) < float(ours.state[ours.params[0]]["step"])
