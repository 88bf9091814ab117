"""mnist_sae.sae_kernel: the same training as torch's autograd loop to float32 rounding, its own
bits independent of how many models are stacked, and its exp / log to float64 accuracy."""

import math

import numpy as np
import pytest
import torch

from mnist_sae import sae_kernel, sae_train
from mnist_sae.sae import SAE
from mnist_sae.settings import SAEConfig, TrainSettings
from mnist_sae.space import InputSpace

D, FL = 10, 32


def _data():
    g = torch.Generator().manual_seed(0)
    z_ND = torch.randn(1200, D, generator=g)
    space = InputSpace(torch.randn(D, generator=g), torch.rand(D, generator=g) + 0.5, True)
    return z_ND, space


def _train(kernel: bool, *, arch="jumprelu", ste="sigmoid", seeds=(0, 1, 2), coefs=None, shared=False, **kw):
    z_ND, space = _data()
    cfg = SAEConfig(arch=arch, d_in=D, n_latents=FL, ste=ste)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    sae = SAE(cfg, n_models=len(seeds), generator=gens[0] if shared else gens)
    settings = TrainSettings(**{"lr": 1e-3, "epochs": 2, "batch_size": 8, "lr_decay": 0.2, "log_every": 25, **kw})
    logs = []
    sae_train.train_sae(sae, z_ND, coefs or [0.1] * len(seeds), settings, gens[0] if shared else gens, space=space,
                        kernel=kernel, on_step=lambda step, terms: logs.append((step, terms)))
    return sae, logs


CONFIGS = {
    "jumprelu_sigmoid_kl": dict(kl_coef=1.0),
    "jumprelu_rectangle": dict(ste="rectangle"),
    "relu_l1": dict(arch="relu"),
    "warmup_adamw_kl": dict(kl_coef=0.5, sparsity_warmup=0.1, optimizer="adamw", weight_decay=0.01),
    "grid_data_init": dict(shared=True, coefs=[0.01, 0.1, 1.0], decoder_init="data"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_trains_what_the_autograd_loop_trains(name):
    """300 steps of both loops from the same init and batches: weights and every logged loss term
    agree to float32 rounding (the kernel's sums run in another order than MKL's)."""
    ours, our_logs = _train(True, **CONFIGS[name])
    theirs, their_logs = _train(False, **CONFIGS[name])
    for key, value in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[key], value, rtol=1e-4, atol=2e-5), key
    assert [step for step, _ in our_logs] == [step for step, _ in their_logs] == list(range(25, 301, 25))
    for (_, mine), (_, yours) in zip(our_logs, their_logs):
        assert list(mine) == list(yours)  # the same terms in sae_loss's order
        for key in yours:
            assert torch.allclose(mine[key], yours[key], rtol=1e-4, atol=1e-6), key


def test_stacked_models_train_bit_for_bit_as_single_runs():
    """Model g's arithmetic reads only its own weights and batches: seeds trained at once equal
    each seed trained alone, to the bit (the autograd loop's baddbmm promises that only to rounding)."""
    stacked, _ = _train(True, seeds=(0, 1), kl_coef=1.0)
    for g, seed in enumerate((0, 1)):
        single, _ = _train(True, seeds=(seed,), kl_coef=1.0)
        for key, value in single.state_dict().items():
            assert torch.equal(stacked.state_dict()[key][g], value[0]), (key, seed)


def test_the_loop_picks_the_kernel_only_where_it_applies():
    def supported(arch="relu", device="cpu", dtype=torch.float32, batch_size=8, streamed=False, resample_every=0):
        return sae_kernel.supported(arch, torch.device(device), dtype, batch_size=batch_size, streamed=streamed,
                                    resample_every=resample_every, sparse_topk=False)

    assert supported("jumprelu") and supported("relu") and supported(batch_size=sae_kernel.MAX_BATCH)
    assert not supported("topk")
    assert not supported(batch_size=sae_kernel.MAX_BATCH + 1)  # the baselines' family (128), the truth bench (64)
    assert not supported(streamed=True) and not supported(resample_every=100)
    assert not supported(device="meta") and not supported(dtype=torch.float64)
    # the default (kernel=None) is the kernel for the default arch: bit for bit kernel=True's weights
    auto, _ = _train(None, kl_coef=1.0)
    forced, _ = _train(True, kl_coef=1.0)
    for key, value in forced.state_dict().items():
        assert torch.equal(auto.state_dict()[key], value), key


def test_exp_and_log_are_accurate_to_float64():
    xs = np.concatenate([np.linspace(-700, 700, 20001), np.linspace(-1, 1, 20001), [0.0, 1e-300, -1e-20]])
    for x in xs:
        got, want = sae_kernel._exp64(float(x)), math.exp(float(x))
        assert abs(got - want) <= 4e-16 * want, x
    for x in np.concatenate([np.geomspace(1e-300, 1e300, 20001), np.linspace(0.5, 2.0, 20001)]):
        got, want = sae_kernel._log64(float(x)), math.log(float(x))
        assert abs(got - want) <= 4e-16 * max(abs(want), 1.0), x
    assert sae_kernel._exp64(800.0) == math.inf and sae_kernel._exp64(-800.0) == 0.0
