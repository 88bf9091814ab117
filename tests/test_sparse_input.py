"""The sparse-input kernels: the result they define, bit for bit, and agreement with torch."""

import numpy as np
import pytest
import torch

from mnist_sae import sparse_input
from mnist_sae.ffn import FFN
from mnist_sae.ffn_train import train_ffn


def _pixels(B: int, I: int, seed: int) -> torch.Tensor:
    """MNIST-like rows: ~80% exact zeros, the rest k/255."""
    g = torch.Generator().manual_seed(seed)
    x_BI = torch.randint(1, 256, (B, I), generator=g).float() / 255.0
    return x_BI * (torch.rand(B, I, generator=g) < 0.2)


def _reference_product(x_BI: np.ndarray, W_IH: np.ndarray) -> np.ndarray:
    """The documented order written with NumPy float32 operations: k ascending, zeros skipped."""
    out_BH = np.zeros((x_BI.shape[0], W_IH.shape[1]), np.float32)
    for b in range(x_BI.shape[0]):
        for k in range(x_BI.shape[1]):
            if x_BI[b, k] != 0:
                out_BH[b] += x_BI[b, k] * W_IH[k]
    return out_BH


@pytest.mark.parametrize("B,H", [(8, 1000), (37, 1030)])  # H not a multiple of the tile
def test_product_is_the_documented_sum_bit_for_bit(B, H):
    x_BI, W_IH = _pixels(B, 784, 0), torch.randn(784, H, generator=torch.Generator().manual_seed(1))
    got = sparse_input.product(x_BI, W_IH).numpy()
    assert np.array_equal(got, _reference_product(x_BI.numpy(), W_IH.numpy()))
    assert np.allclose(got, (x_BI.double() @ W_IH.double()).numpy(), atol=1e-4)


def test_matmul_gradients_match_torch():
    x_BI = _pixels(8, 50, 2).requires_grad_(True)
    W_IH = torch.randn(50, 40, generator=torch.Generator().manual_seed(3), requires_grad=True)
    up_BH = torch.randn(8, 40, generator=torch.Generator().manual_seed(4))
    (sparse_input.matmul(x_BI, W_IH) * up_BH).sum().backward()
    gx, gW = x_BI.grad.clone(), W_IH.grad.clone()
    x_BI.grad = W_IH.grad = None
    ((x_BI @ W_IH) * up_BH).sum().backward()
    assert torch.allclose(gx, x_BI.grad, atol=1e-5) and torch.allclose(gW, W_IH.grad, atol=1e-5)


def test_matmul_refuses_what_the_kernel_cannot_read():
    with pytest.raises(ValueError, match="float32"):
        sparse_input.product(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))


def test_adam_step_is_torch_adam_and_the_documented_update():
    x_BI, d_BH = _pixels(8, 30, 5), torch.randn(8, 20, generator=torch.Generator().manual_seed(6))
    assert (x_BI == 0).all(0).any()  # some pixel zero in the whole batch: its row takes the skip
    W0_IH = torch.randn(30, 20, generator=torch.Generator().manual_seed(7))
    ours = W0_IH.clone()
    adam = sparse_input.SparseInputAdam(ours, lr=1e-2)
    theirs = W0_IH.clone().requires_grad_(True)
    opt = torch.optim.Adam([theirs], lr=1e-2)
    x, d, m, v, W = (a.numpy().copy() for a in (x_BI, d_BH, torch.zeros_like(W0_IH), torch.zeros_like(W0_IH), W0_IH))
    f32 = np.float32
    for t in range(1, 4):
        adam.step(x_BI, d_BH)
        theirs.grad = x_BI.T @ d_BH
        opt.step()
        # the documented update in NumPy float32, row by row in the kernel's order
        for k in range(x.shape[1]):
            g = np.zeros(W.shape[1], f32)
            for b in range(x.shape[0]):
                if x[b, k] != 0:
                    g += x[b, k] * d[b]
            m[k] = f32(0.9) * m[k] + f32(0.1) * g
            v[k] = f32(0.999) * v[k] + f32(1 - 0.999) * (g * g)
            W[k] = W[k] - f32(1e-2 / (1 - 0.9 ** t)) * m[k] / (np.sqrt(v[k]) * f32(1 / np.sqrt(1 - 0.999 ** t)) + f32(1e-8))
        assert np.array_equal(ours.numpy(), W)
        assert torch.allclose(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["relu", "geglu"])
def test_cpu_training_follows_the_autograd_path(kind):
    """The sparse-input step and plain autograd + Adam on the same batches end up close."""
    x_NI = (_pixels(256, 784, 8) * 255).round().to(torch.uint8)
    y_N = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(9))
    models = [FFN(64, kind, generator=torch.Generator().manual_seed(10)) for _ in range(2)]
    train_ffn(models[0], x_NI, y_N, lr=1e-3, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(11),
              progress=False)
    opt = torch.optim.Adam(models[1].parameters(), lr=1e-3)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(11))
    xf_NI = x_NI.float() / 255.0
    for s in range(32):
        idx = perm[s * 8:(s + 1) * 8]
        loss = torch.nn.functional.cross_entropy(models[1](xf_NI[idx]), y_N[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert not torch.equal(a, FFN(64, kind, generator=torch.Generator().manual_seed(10)).get_parameter(name))
        assert torch.allclose(a, b, atol=1e-4), name


def test_adam_step_returns_the_next_product_of_the_updated_weight():
    W_IH = torch.randn(784, 600, generator=torch.Generator().manual_seed(12))
    adam = sparse_input.SparseInputAdam(W_IH, lr=1e-3)
    x_BI, x_next_BI = _pixels(8, 784, 13), _pixels(8, 784, 14)
    assert adam.step(x_BI, torch.randn(8, 600, generator=torch.Generator().manual_seed(15))) is None
    ahead = adam.step(x_BI, torch.randn(8, 600, generator=torch.Generator().manual_seed(16)), x_next_BI)
    assert torch.equal(ahead, sparse_input.product(x_next_BI, W_IH))  # W_IH as updated by this step
