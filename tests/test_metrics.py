"""Every metric in mnist_sae/metrics.py against a value computed by hand on a tiny example."""

import math

import pytest
import torch

from mnist_sae import metrics

# 3 examples, 2 dims: y, its reconstruction, and the codes of a 4-latent dictionary
Y_ND = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
Y_HAT_ND = torch.tensor([[1.0, 1.0], [3.0, 6.0], [2.0, 0.0]])
A_NF = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])


def test_cross_entropy_and_accuracy():
    logits_NO = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels_N = torch.tensor([0, 1])
    # -log(1/2) and -log(1/4), averaged
    assert metrics.cross_entropy(logits_NO, labels_N) == pytest.approx((math.log(2) + math.log(4)) / 2)
    # argmax of a tie is the first index: [0, 0] -> 0 (right), [log 3, 0] -> 0 (wrong)
    assert metrics.accuracy(logits_NO, labels_N) == 0.5


def test_agreement_and_kl():
    a_NO = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    b_NO = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert metrics.agreement(a_NO, b_NO) == 0.5
    # KL of two 2-way softmaxes, by hand: p = sigmoid(logit gap)
    def kl2(gp, gq):
        p, q = 1 / (1 + math.exp(-gp)), 1 / (1 + math.exp(-gq))
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert metrics.kl_divergence(a_NO, b_NO) == pytest.approx((kl2(2, 1) + kl2(-1, 1)) / 2)
    assert metrics.kl_divergence(a_NO, a_NO) == pytest.approx(0.0, abs=1e-15)


def test_mse_and_per_example():
    # squared errors: [0, 1], [0, 4], [9, 0] -> per example 0.5, 2, 4.5; overall 7 / 3
    assert metrics.mse_per_example(Y_ND, Y_HAT_ND).tolist() == [0.5, 2.0, 4.5]
    assert metrics.mse(Y_ND, Y_HAT_ND) == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(Y_ND, Y_HAT_ND[:2])


def test_explained_variance():
    # mean y = (3, 2); total = (4+0+4) + (0+4+4) = 16; residual = 1 + 4 + 9 = 14 -> 1 - 14/16
    assert metrics.explained_variance(Y_ND, Y_HAT_ND) == pytest.approx(1 - 14 / 16)
    assert metrics.explained_variance(Y_ND, Y_ND) == 1.0
    assert metrics.explained_variance(Y_ND, Y_ND.mean(0).expand(3, 2)) == pytest.approx(0.0)


def test_per_example_summary():
    s = metrics.per_example_summary(torch.tensor([0.4, 0.1, 0.9, 0.2]))
    # sorted 0.1 0.2 0.4 0.9: median (0.2 + 0.4) / 2; p95 at rank 0.95 * 3 = 2.85 -> 0.4 + 0.85 * 0.5
    assert s["mean"] == pytest.approx(0.4)
    assert s["median"] == pytest.approx(0.3)
    assert s["p95"] == pytest.approx(0.825)
    assert (s["best_index"], s["worst_index"]) == (1, 2)


def test_ce_recovered():
    assert metrics.ce_recovered(ce_orig=0.1, ce_recon=0.4, ce_ablate=2.1) == pytest.approx(0.85)
    assert metrics.ce_recovered(0.1, 0.1, 2.1) == 1.0
    assert metrics.ce_recovered(0.1, 2.1, 2.1) == 0.0
    assert math.isnan(metrics.ce_recovered(0.5, 0.7, 0.5))


def test_sparsity_metrics():
    assert metrics.l0_per_example(A_NF).tolist() == [1, 2, 1]
    assert metrics.l0(A_NF) == pytest.approx(4 / 3)
    assert metrics.l0_histogram(A_NF).tolist() == [0, 2, 1, 0, 0]
    freq_F = metrics.latent_frequency(A_NF)
    assert freq_F.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])
    assert metrics.dead_fraction(freq_F) == 0.5
    assert metrics.dense_fraction(freq_F) == 0.5  # 1/3 and 1 exceed 0.1
    assert metrics.dense_fraction(freq_F, threshold=0.5) == 0.25
    assert metrics.dense_fraction(torch.tensor([0.1, 0.1000001])) == 0.5  # strictly more than 10%


def test_calibration_error():
    assert metrics.calibration_error(1.63, 1.0) == pytest.approx(0.63)
    assert metrics.calibration_error(9.5, 20.0) == pytest.approx(0.525)
    with pytest.raises(ValueError):
        metrics.calibration_error(1.0, 0.0)


def test_fidelity_logit_site_by_hand():
    # the logit site: y are logits, to_logits is the identity, ablation the train mean
    y_NO = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y_hat_NO = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    labels_N = torch.tensor([0, 1, 1])
    ablation_O = torch.tensor([0.5, 0.0])
    mu_O, sigma_O = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])
    z, z_hat = (y_NO - mu_O) / sigma_O, (y_hat_NO - mu_O) / sigma_O
    a_NF = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    out = metrics.fidelity(y_NO, y_hat_NO, labels_N, y_NO, lambda y: y, ablation_O,
                           z_ND=z, z_hat_ND=z_hat, a_NF=a_NF)

    def ce(gap_wrong):  # -log softmax of the label when the other logit is ahead by gap_wrong
        return math.log(1 + math.exp(gap_wrong))
    ce_orig = (ce(-2) + ce(-1) + ce(1)) / 3
    ce_recon = (ce(-1) + ce(1) + ce(0)) / 3
    ce_ablate = (ce(-0.5) + ce(0.5) + ce(0.5)) / 3
    # original argmax 0, 1, 0 -> right, right, wrong; reconstructed 0, 0, 0 (tie) -> right, wrong, wrong
    assert out["acc_orig"] == pytest.approx(2 / 3)
    assert out["acc_recon"] == pytest.approx(1 / 3)
    assert out["acc_drop_pp"] == pytest.approx(100 / 3)
    assert out["agreement"] == pytest.approx(2 / 3)
    assert out["ce_orig"] == pytest.approx(ce_orig)
    assert out["ce_recon"] == pytest.approx(ce_recon)
    assert out["ce_increase"] == pytest.approx(ce_recon - ce_orig)
    assert out["ce_ablate"] == pytest.approx(ce_ablate)
    assert out["ce_recovered"] == pytest.approx((ce_ablate - ce_recon) / (ce_ablate - ce_orig))
    # raw squared errors [1, 0], [1, 1], [0, 1] -> 4 / 6; normalized: dim 0 / 4 -> [1/4, 0], [1/4, 1], [0, 1]
    assert out["mse_raw"] == pytest.approx(4 / 6)
    assert out["mse_norm"] == pytest.approx(2.5 / 6)
    assert out["mse_ex_mean"] == out["mse_norm"]
    assert out["mse_ex_median"] == pytest.approx(0.5)  # per example 1/8, 5/8, 1/2
    assert (out["mse_ex_best_index"], out["mse_ex_worst_index"]) == (0, 1)
    # mean y = (1, 1/3); total = 2 + (1/9 + 4/9 + 1/9) = 8/3; residual 4
    assert out["explained_variance"] == pytest.approx(1 - 4 / (8 / 3))
    assert out["l0"] == pytest.approx(4 / 3)
    assert out["l0_max"] == 2
    assert out["dead_fraction"] == 0.0
    assert out["dense_fraction"] == 1.0
    assert list(out) == sorted(out)
    assert all(isinstance(v, (int, float)) for v in out.values())


def test_fidelity_hidden_site_uses_head_and_no_codes():
    # hidden site: a linear head maps [N, 3] activations to [N, 2] logits
    W_DO = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    head = lambda h_BD: h_BD @ W_DO  # noqa: E731
    h_ND = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    h_hat_ND = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    labels_N = torch.tensor([0, 1])
    out = metrics.fidelity(h_ND, h_hat_ND, labels_N, head(h_ND), head, h_ND.mean(0), chunk=1)
    # logits: orig [2, -1], [0, 2] -> both right; recon [0, 1], [0, 2] -> first wrong
    assert out["acc_orig"] == 1.0
    assert out["acc_recon"] == 0.5
    assert out["ce_recon"] == pytest.approx((math.log(1 + math.e) + math.log(1 + math.exp(-2))) / 2)
    # ablation h = (0.5, 1, 0.5) -> logits (1, 0.5) for both examples
    assert out["ce_ablate"] == pytest.approx((math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2)
    assert out["mse_norm"] == out["mse_raw"] == pytest.approx(3 / 6)  # no normalization: z = y
    assert "l0" not in out and "dead_fraction" not in out


def test_fidelity_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        metrics.fidelity(Y_ND, Y_HAT_ND[:2], torch.zeros(3), Y_ND, lambda y: y, torch.zeros(2))
    with pytest.raises(ValueError, match="both"):
        metrics.fidelity(Y_ND, Y_HAT_ND, torch.zeros(3), Y_ND, lambda y: y, torch.zeros(2), z_ND=Y_ND)
