"""Every metric in mnist_sae/metrics.py against a value computed by hand on a tiny example."""

import math

import numpy as np
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
    assert all(isinstance(v, (int, float)) for k, v in out.items() if k != "core")
    # core: zero ablation at the logit site = raw logits 0, a uniform softmax: CE = log 2 each
    core = out["core"]
    assert core["ce_loss_with_ablation"] == pytest.approx(math.log(2))
    assert core["ce_loss_without_sae"] == out["ce_orig"] and core["ce_loss_with_sae"] == out["ce_recon"]
    assert core["ce_loss_score"] == pytest.approx((math.log(2) - ce_recon) / (math.log(2) - ce_orig))
    assert core["kl_div_with_sae"] == out["kl"]
    assert core["explained_variance"] == out["explained_variance"] and core["mse"] == out["mse_raw"]
    assert all(isinstance(v, float) for v in core.values())


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
    # zero ablation at the hidden site: the head of a zero hidden layer (here logits 0, no bias)
    assert out["core"]["ce_loss_with_ablation"] == pytest.approx(math.log(2))
    assert "l0" not in out["core"] and "ce_loss_score" in out["core"]


def test_fidelity_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        metrics.fidelity(Y_ND, Y_HAT_ND[:2], torch.zeros(3), Y_ND, lambda y: y, torch.zeros(2))
    with pytest.raises(ValueError, match="both"):
        metrics.fidelity(Y_ND, Y_HAT_ND, torch.zeros(3), Y_ND, lambda y: y, torch.zeros(2), z_ND=Y_ND)


# --- SAEBench core metrics against numpy formulas written here, independently ----------------------

# 4 rows, 3 dims, with a large mean (+100 on every dim); 5 latents
X_NP = np.array([[101.0, 99.0, 100.5], [99.0, 101.0, 99.0], [100.0, 100.0, 102.0], [102.0, 98.5, 100.0]])
X_HAT_NP = np.array([[100.5, 99.5, 100.0], [99.5, 100.0, 99.5], [100.0, 100.5, 101.0], [101.0, 99.0, 100.5]])
A_NP = np.array([[0.0, 1.5, 0.0, 0.0, 0.0], [0.0, 0.5, -2.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0],
                 [0.0, 1.0, 0.0, 0.0, 0.0]])
LOGITS_CLEAN = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.5]])
LOGITS_SAE = np.array([[1.5, 0.0, -0.5], [0.0, 1.0, 0.5], [0.5, 0.0, 2.0], [2.0, 1.0, 0.0]])
LOGITS_ZERO = np.zeros((4, 3))
LABELS = np.array([0, 1, 2, 1])


def _np_ce(logits, labels):
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _np_kl(lp, lq):
    p = np.exp(lp) / np.exp(lp).sum(1, keepdims=True)
    q = np.exp(lq) / np.exp(lq).sum(1, keepdims=True)
    return float((p * np.log(p / q)).sum(1).mean())


def _core(**kw):
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return metrics.core_metrics(t(X_NP), t(X_HAT_NP), t(A_NP), **{k: t(v) for k, v in kw.items()})


def test_core_reconstruction_metrics_match_numpy():
    out = _core()
    sse = ((X_NP - X_HAT_NP) ** 2).sum()
    sst = ((X_NP - X_NP.mean(axis=0)) ** 2).sum()
    assert out["explained_variance"] == pytest.approx(1 - sse / sst)
    assert out["mse"] == pytest.approx(((X_NP - X_HAT_NP) ** 2).mean())
    cos = [x @ xh / (np.linalg.norm(x) * np.linalg.norm(xh)) for x, xh in zip(X_NP, X_HAT_NP)]
    assert out["cosine_similarity"] == pytest.approx(np.mean(cos))
    ratio = [np.linalg.norm(xh) / np.linalg.norm(x) for x, xh in zip(X_NP, X_HAT_NP)]
    assert out["l2_ratio"] == pytest.approx(np.mean(ratio))
    gamma = (X_HAT_NP ** 2).sum() / (X_HAT_NP * X_NP).sum()
    assert out["relative_reconstruction_bias"] == pytest.approx(gamma)
    assert "ce_loss_score" not in out and "kl_div_score" not in out  # no head given


def test_core_explained_variance_is_about_the_mean_not_zero():
    # the trap of SAELens issue #659: variance taken about zero is ~ sum ||x||^2, huge when the
    # mean is large, so EV "about zero" is near 1 for a reconstruction no better than the mean
    x_hat_mean = np.broadcast_to(X_NP.mean(axis=0), X_NP.shape).copy()
    ev = metrics.core_metrics(torch.from_numpy(X_NP), torch.from_numpy(x_hat_mean))["explained_variance"]
    ev_about_zero = 1 - ((X_NP - x_hat_mean) ** 2).sum() / (X_NP ** 2).sum()
    assert ev_about_zero > 0.999
    assert ev == pytest.approx(0.0, abs=1e-12)
    # the hand case: about zero it would read 0.99996; about the mean SSE 5 / SST 13.375: 0.626
    assert _core()["explained_variance"] == pytest.approx(1 - 5.0 / 13.375)


def test_core_sparsity_metrics_match_numpy():
    out = _core()
    active = A_NP != 0
    assert out["l0"] == pytest.approx(active.sum(1).mean())  # (1 + 2 + 1 + 1) / 4
    assert out["l1"] == pytest.approx(np.abs(A_NP).sum(1).mean())  # (1.5 + 2.5 + 3 + 1) / 4
    freq = active.mean(0)  # [0, 1, 0.25, 0, 0]
    assert out["alive_fraction"] == pytest.approx((freq > 0).mean()) == pytest.approx(0.4)
    assert out["freq_over_1_percent"] == pytest.approx((freq > 0.01).mean())
    assert out["freq_over_10_percent"] == pytest.approx((freq > 0.10).mean())
    # a latent on 1 of 50 rows (2%) counts over 1%, not over 10%
    a = torch.zeros(50, 2, dtype=torch.float64)
    a[0, 0] = 1.0
    x = torch.randn(50, 3, dtype=torch.float64)
    few = metrics.core_metrics(x, x, a)
    assert (few["freq_over_1_percent"], few["freq_over_10_percent"], few["alive_fraction"]) == (0.5, 0.0, 0.5)
    assert set(metrics.core_metrics(x, x)) == set(metrics.CORE_KEYS)  # no codes: no sparsity keys


def test_core_ce_and_kl_scores_match_numpy():
    out = _core(labels_E=LABELS, logits_clean_EO=LOGITS_CLEAN, logits_sae_EO=LOGITS_SAE, logits_zero_EO=LOGITS_ZERO)
    ce_clean, ce_sae, ce_zero = (_np_ce(l, LABELS) for l in (LOGITS_CLEAN, LOGITS_SAE, LOGITS_ZERO))
    assert ce_zero == pytest.approx(np.log(3))  # zero logits: uniform softmax
    assert out["ce_loss_without_sae"] == pytest.approx(ce_clean)
    assert out["ce_loss_with_sae"] == pytest.approx(ce_sae)
    assert out["ce_loss_with_ablation"] == pytest.approx(ce_zero)
    assert out["ce_loss_score"] == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean))
    kl_sae, kl_zero = _np_kl(LOGITS_CLEAN, LOGITS_SAE), _np_kl(LOGITS_CLEAN, LOGITS_ZERO)
    assert out["kl_div_with_sae"] == pytest.approx(kl_sae)
    assert out["kl_div_with_ablation"] == pytest.approx(kl_zero)
    assert out["kl_div_score"] == pytest.approx((kl_zero - kl_sae) / kl_zero)
    assert set(out) == set(metrics.CORE_KEYS + metrics.CORE_SPARSITY_KEYS + metrics.CORE_DOWNSTREAM_KEYS)
    # a perfect splice scores 1 on both; splicing the ablation itself scores 0
    same = _core(labels_E=LABELS, logits_clean_EO=LOGITS_CLEAN, logits_sae_EO=LOGITS_CLEAN, logits_zero_EO=LOGITS_ZERO)
    assert same["ce_loss_score"] == 1.0 and same["kl_div_score"] == 1.0
    abl = _core(labels_E=LABELS, logits_clean_EO=LOGITS_CLEAN, logits_sae_EO=LOGITS_ZERO, logits_zero_EO=LOGITS_ZERO)
    assert abl["ce_loss_score"] == 0.0 and abl["kl_div_score"] == 0.0


def test_kl_div_score_and_l1_alive_by_hand():
    assert metrics.kl_div_score(0.1, 0.5) == pytest.approx(0.8)
    assert math.isnan(metrics.kl_div_score(0.1, 0.0))
    assert metrics.l1(A_NF) == pytest.approx((2 + 1.5 + 3) / 3)
    assert metrics.alive_fraction(metrics.latent_frequency(A_NF)) == 0.5


def test_core_metrics_rejects_partial_head_and_bad_shapes():
    x = torch.from_numpy(X_NP)
    with pytest.raises(ValueError, match="all three"):
        metrics.core_metrics(x, x, labels_E=torch.from_numpy(LABELS), logits_clean_EO=torch.from_numpy(LOGITS_CLEAN))
    with pytest.raises(ValueError, match="shape"):
        metrics.core_metrics(x, x[:2])
    with pytest.raises(ValueError, match="codes"):
        metrics.core_metrics(x, x, torch.zeros(3, 5))
