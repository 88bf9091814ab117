"""collect: site activations and the normalization stats."""

import numpy as np
import torch

from mnist_sae.collect import collect_site, normalization_stats
from mnist_sae.ffn import FFN


def test_collect_site_shapes_and_consistency():
    model = FFN(12, generator=torch.Generator().manual_seed(0))
    x_NI = torch.randint(0, 256, (7, 784), dtype=torch.uint8)
    acts_ND, logits_NO = collect_site(model, x_NI, "hidden", chunk=3)
    assert acts_ND.shape == (7, 12) and logits_NO.shape == (7, 10)
    assert torch.allclose(model.head(acts_ND), logits_NO, atol=1e-5)
    acts2_ND, logits2_NO = collect_site(model, x_NI, "logits", chunk=4)
    assert torch.equal(acts2_ND, logits2_NO) and torch.allclose(logits2_NO, logits_NO, atol=1e-6)


def test_collect_site_in_forked_workers_is_bit_identical():
    model = FFN(64, generator=torch.Generator().manual_seed(1))
    x_NI = torch.randint(0, 256, (50, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    x_NI[x_NI < 200] = 0  # MNIST-like: mostly zero pixels (the sparse product skips them)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the stage's setting; map_forked forks only then
    try:
        one = collect_site(model, x_NI, "hidden", chunk=8)
        two = collect_site(model, x_NI, "hidden", chunk=8, workers=2)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not two[0].requires_grad and two[0].shape == (50, 64)


def test_normalization_stats_leaves_constant_dims_unscaled():
    a_ND = np.array([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]], dtype=np.float32)
    mean_D, std_D = normalization_stats(a_ND)
    assert np.allclose(mean_D, [2.0, 0.0, 5.0]) and np.allclose(std_D, [1.0, 1.0, 1.0])
    # a dead-on-train unit that fires on a new example stays on the activation's own scale
    z_D = (np.array([2.0, 4.0, 5.0]) - mean_D) / std_D
    assert np.allclose(z_D, [0.0, 4.0, 0.0])
    mean_D, std_D = normalization_stats(np.array([[0.0], [4.0]]))
    assert np.allclose(std_D, [2.0])
