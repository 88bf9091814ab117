"""The classifier: shapes for both types, training learns, divergence is recorded, not raised."""

import math

import pytest
import torch

from mnist_sae import data
from mnist_sae.ffn import FFN, apply_in_chunks
from mnist_sae.ffn_train import train_ffn


@pytest.mark.parametrize("kind", ["relu", "geglu"])
def test_shapes_and_head_composition(kind):
    model = FFN(32, kind, generator=torch.Generator().manual_seed(0))
    x_BI = torch.rand(5, 784)
    h_BH = model.hidden(x_BI)
    assert h_BH.shape == (5, 32) and model(x_BI).shape == (5, 10)
    assert torch.equal(model.head(h_BH), model(x_BI))
    if kind == "relu":
        assert (h_BH >= 0).all()
    ckpt = {"config": model.config(), "state": model.state_dict()}
    assert torch.equal(FFN.from_checkpoint(ckpt)(x_BI), model(x_BI))


def synthetic_tensors(n=400):
    mnist = data.make_synthetic(n, 10, seed=0)
    return torch.from_numpy(mnist.x_train_NI), torch.from_numpy(mnist.y_train_N)


def test_training_lowers_the_loss_and_is_deterministic():
    x_NI, y_N = synthetic_tensors()
    runs = []
    for _ in range(2):
        model = FFN(16, generator=torch.Generator().manual_seed(0))
        hist = train_ffn(model, x_NI, y_N, lr=1e-2, epochs=3, batch_size=8,
                         generator=torch.Generator().manual_seed(1), progress=False)
        runs.append((hist, model))
    (hist, model), (_, model2) = runs
    assert not hist.diverged and hist.loss_per_epoch[-1] < 0.5 * hist.loss_per_epoch[0]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    logits_NO = apply_in_chunks(model, x_NI, chunk=64)
    assert (logits_NO.argmax(1) == y_N.long()).float().mean() > 0.9


def test_divergence_is_recorded_not_raised():
    x_NI, y_N = synthetic_tensors()
    model = FFN(16, generator=torch.Generator().manual_seed(0))
    hist = train_ffn(model, x_NI, y_N, lr=1e30, epochs=2, batch_size=8,
                     generator=torch.Generator().manual_seed(1), progress=False, check_every=10)
    assert hist.diverged
    assert not all(math.isfinite(x) for x in hist.loss_per_epoch) or not all(
        torch.isfinite(p).all() for p in model.parameters())
