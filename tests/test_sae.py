"""The SAE family: shapes, the JumpReLU gate and its two backward rules, the loss terms, AuxK,
threshold shift, checkpoints. Tiny tensors, CPU, seconds."""

import math

import pytest
import torch
from torch.nn import functional as F

from mnist_sae import metrics
from mnist_sae.sae import SAE, SAEConfig, jumprelu, reconstruct, sae_loss
from mnist_sae.sae_train import TrainSettings, hard_l0_G, shift_thresholds_, train_sae
from mnist_sae.space import InputSpace

VARIANTS = [("jumprelu", "sigmoid"), ("jumprelu", "rectangle"), ("relu", "sigmoid"), ("topk", "sigmoid")]
G, B, D, NF = 3, 5, 6, 12


pytestmark = pytest.mark.usefixtures("one_thread")


def make(arch, ste, n_models=G, seed=0, **kw):
    cfg = SAEConfig(arch=arch, ste=ste, d_in=D, n_latents=NF, k=2, aux_k=4, **kw)
    return SAE(cfg, n_models=n_models, generator=torch.Generator().manual_seed(seed))


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,ste", VARIANTS)
def test_forward_backward_shapes(arch, ste):
    sae = make(arch, ste)
    z_BD = randn(B, D)
    u_GBF = sae.pre_acts(z_BD)
    a_GBF, penalty_GB = sae.activate(u_GBF)
    z_hat_GBD, a2_GBF = sae(z_BD)
    assert u_GBF.shape == a_GBF.shape == (G, B, NF) and penalty_GB.shape == (G, B)
    assert z_hat_GBD.shape == (G, B, D) and torch.equal(a_GBF, a2_GBF)
    assert torch.equal(z_hat_GBD, sae.decode(sae.encode(z_BD)))
    aux_hat = sae.aux_decode(u_GBF, torch.ones(G, NF, dtype=torch.bool)) if arch == "topk" else None
    terms = sae_loss(z_BD, sae.decode(a_GBF), a_GBF, penalty_GB, torch.full((G,), 0.1), kl_coef=0.5,
                     space=InputSpace(randn(D, seed=2), randn(D, seed=3).abs() + 0.5, True), aux_hat_GBD=aux_hat,
                     aux_coef=1 / 32)
    assert all(v.shape == (G,) for k, v in terms.items() if k != "loss") and terms["loss"].shape == ()
    terms["loss"].backward()
    for name, param in sae.named_parameters():
        assert param.grad is not None and param.grad.shape == param.shape, name
        assert torch.isfinite(param.grad).all(), name
    assert sae.W_enc_GDF.grad.abs().sum() > 0 and sae.W_dec_GFD.grad.abs().sum() > 0


def test_init_encoder_is_decoder_transpose_and_models_identical():
    sae = make("jumprelu", "sigmoid")
    assert torch.allclose(sae.W_dec_GFD.norm(dim=-1), torch.ones(G, NF))
    assert torch.equal(sae.W_enc_GDF, sae.W_dec_GFD.transpose(1, 2))
    assert all(torch.equal(p[0], p[g]) for p in sae.parameters() for g in range(G))
    assert torch.allclose(sae.theta_GF, torch.full((G, NF), 0.1))
    # the same seed gives the same first model whatever G is (batched == one at a time)
    assert torch.equal(make("jumprelu", "sigmoid", n_models=1).W_dec_GFD[0], sae.W_dec_GFD[0])


def test_jumprelu_hard_gate():
    sae = make("jumprelu", "sigmoid", n_models=1)
    with torch.no_grad():
        sae.log_theta_GF.copy_(torch.linspace(-3, 1, NF).expand(1, NF))
    z_BD = randn(40, D)
    u_BF = sae.pre_acts(z_BD)[0]
    a_BF = sae.encode(z_BD)[0]
    theta_F = sae.theta_GF[0]
    expected_BF = torch.where(u_BF > theta_F, u_BF, torch.zeros(()))
    assert torch.equal(a_BF, expected_BF)
    assert 0 < metrics.l0(a_BF) < NF  # some latents on, some off: the test can fail
    assert (a_BF[a_BF != 0] > theta_F.expand_as(a_BF)[a_BF != 0]).all()  # every active value jumped past theta


def _gate_inputs():
    u_GBF = torch.tensor([[[-0.3, 0.06, 0.12, 0.5], [0.08, 0.2, 0.1, 1.0]]], requires_grad=True)
    theta_G1F = torch.tensor([[[0.1, 0.1, 0.1, 0.4]]], requires_grad=True)
    return u_GBF, theta_G1F


def test_jumprelu_sigmoid_surrogate_gradient():
    tau = 0.1
    u, theta = _gate_inputs()
    a, gate = jumprelu(u, theta, "sigmoid", tau)
    assert torch.equal(gate, (u > theta).float()) and torch.equal(a, u * gate)
    x = (u - theta).detach()
    ds = torch.sigmoid(x / tau) * (1 - torch.sigmoid(x / tau)) / tau  # d/dx sigmoid(x / tau)
    gate.sum().backward()  # the L0 term: gradient of the gate only
    assert torch.allclose(u.grad, ds) and torch.allclose(theta.grad, -ds.sum(1, keepdim=True))
    u, theta = _gate_inputs()
    a, _ = jumprelu(u, theta, "sigmoid", tau)
    a.sum().backward()  # the latents: product rule with the surrogate gate
    hard = (u > theta).float().detach()
    assert torch.allclose(u.grad, hard + u.detach() * ds)
    assert torch.allclose(theta.grad, -(u.detach() * ds).sum(1, keepdim=True))


def test_jumprelu_rectangle_pseudo_derivative():
    eps = 0.1
    u, theta = _gate_inputs()
    a, gate = jumprelu(u, theta, "rectangle", eps)
    assert torch.equal(gate, (u > theta).float()) and torch.equal(a, u * gate)
    k = ((u - theta).abs() < eps / 2).float().detach()  # K((u - theta) / eps) = 1[|u - theta| < eps / 2]
    assert k.sum() == 4  # 0.06, 0.12, 0.08 and 0.1 lie in the window around theta = 0.1; 0.2 does not
    gate.sum().backward()
    assert torch.equal(u.grad, torch.zeros_like(u))  # Rajamanoharan et al.: no gradient to u via the step
    assert torch.allclose(theta.grad, -(k / eps).sum(1, keepdim=True))
    u, theta = _gate_inputs()
    a, _ = jumprelu(u, theta, "rectangle", eps)
    a.sum().backward()
    assert torch.equal(u.grad, (u > theta).float())
    assert torch.allclose(theta.grad, -(theta.detach() / eps * k).sum(1, keepdim=True))


def test_relu_and_topk_activations():
    z_BD = randn(30, D)
    relu = make("relu", "sigmoid", n_models=1)
    assert torch.equal(relu.encode(z_BD), F.relu(relu.pre_acts(z_BD)))
    topk = make("topk", "sigmoid", n_models=1)
    with torch.no_grad():
        topk.b_enc_GF.fill_(5.0)  # every pre-activation positive: exactly k = 2 non-zeros per example
    a_BF = topk.encode(z_BD)[0]
    assert torch.equal(metrics.l0_per_example(a_BF), torch.full((30,), 2))
    u_BF = topk.pre_acts(z_BD)[0]
    assert torch.equal(a_BF.max(1).values, u_BF.max(1).values)


def test_auxk_reaches_only_dead_latents():
    sae = make("topk", "sigmoid", n_models=1)
    z_BD = randn(B, D)
    u_GBF = sae.pre_acts(z_BD)
    dead_GF = torch.zeros(1, NF, dtype=torch.bool)
    dead_GF[0, :3] = True
    sae.aux_decode(u_GBF, dead_GF).square().sum().backward()
    grad_F = sae.W_dec_GFD.grad[0].abs().sum(1)
    assert (grad_F[3:] == 0).all() and (grad_F[:3] > 0).any()
    none_dead = sae.aux_decode(sae.pre_acts(z_BD), torch.zeros(1, NF, dtype=torch.bool))
    assert torch.equal(none_dead, torch.zeros(1, B, D))


def test_sae_loss_terms_by_hand():
    z_BD = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_hat_GBD = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]])
    a_GBF = torch.tensor([[[0.0, 3.0], [0.0, 0.0]], [[1.0, 2.0], [0.5, 0.0]]])
    penalty_GB = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    coef_G = torch.tensor([0.5, 0.25])
    t = sae_loss(z_BD, z_hat_GBD, a_GBF, penalty_GB, coef_G)
    assert torch.allclose(t["mse"], torch.tensor([(1 + 4) / 4, 0.0]))
    assert torch.allclose(t["sparsity"], torch.tensor([0.5, 1.5]))
    assert torch.allclose(t["l0"], torch.tensor([0.5, 1.5]))
    assert torch.allclose(t["total"], torch.tensor([1.25 + 0.25, 0.375]))
    assert torch.isclose(t["loss"], t["total"].sum())
    mean_D, std_D = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 3.0])
    t = sae_loss(z_BD, z_hat_GBD, a_GBF, penalty_GB, coef_G, kl_coef=2.0, space=InputSpace(mean_D, std_D, True))
    y, y_hat = z_BD * std_D + mean_D, z_hat_GBD[0] * std_D + mean_D
    assert math.isclose(t["kl"][0].item(), metrics.kl_divergence(y, y_hat), rel_tol=1e-5)
    assert t["kl"][1].abs() < 1e-6  # a perfect reconstruction loses nothing
    assert torch.allclose(t["total"], torch.tensor([1.5 + 2 * t["kl"][0].item(), 0.375]))


def test_training_keeps_decoder_unit_norm_and_learns():
    z_ND = randn(400, D)
    sae = make("relu", "sigmoid", n_models=2)
    before = sae_loss(z_ND, *sae(z_ND), torch.zeros(2, 400), torch.zeros(2))["mse"]
    seen = []
    train_sae(sae, z_ND, [1e-3, 1e-1], TrainSettings(lr=1e-2, epochs=2, batch_size=8, log_every=10),
                     torch.Generator().manual_seed(0), on_step=lambda step, terms: seen.append((step, terms)))
    assert torch.allclose(sae.W_dec_GFD.norm(dim=-1), torch.ones(2, NF), atol=1e-6)
    after = sae_loss(z_ND, *sae(z_ND), torch.zeros(2, 400), torch.zeros(2))["mse"]
    assert (after < before).all()
    assert [s for s, _ in seen] == list(range(10, 101, 10))
    assert seen[0][1]["mse"].shape == (2,)
    l0_G = hard_l0_G(sae, z_ND)
    assert l0_G[1] < l0_G[0]  # more L1 pressure, fewer active latents


def test_shift_thresholds_meets_target():
    z_ND = randn(500, D)
    sae = make("jumprelu", "sigmoid", n_models=1)
    for target in (1.0, 2.5):
        shift_thresholds_(sae, z_ND, target)
        assert hard_l0_G(sae, z_ND).item() == pytest.approx(target, abs=1e-9)


def test_shift_thresholds_per_model():
    z_ND = randn(500, D)
    sae = make("jumprelu", "sigmoid", n_models=3)
    with torch.no_grad():
        sae.b_enc_GF += torch.tensor([[0.0], [0.5], [-0.5]])  # three different models
    deltas = shift_thresholds_(sae, z_ND, 1.5)
    assert len(deltas) == 3 and len(set(deltas)) == 3
    assert torch.allclose(hard_l0_G(sae, z_ND), torch.full((3,), 1.5, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("arch,ste", VARIANTS)
def test_seeds_trained_at_once_match_single_runs(arch, ste):
    """G seeds in one stacked model (one generator per model) train like G single runs."""
    z_ND = randn(160, D)
    settings = TrainSettings(lr=1e-2, epochs=2, batch_size=8, lr_decay=0.2, log_every=10**9)
    cfg = SAEConfig(arch=arch, ste=ste, d_in=D, n_latents=NF, k=2, aux_k=4)
    seeds = (3, 4, 5)
    stacked = SAE(cfg, n_models=3, generator=[torch.Generator().manual_seed(s) for s in seeds])
    train_sae(stacked, z_ND, [0.05] * 3, settings, [torch.Generator().manual_seed(s) for s in seeds])
    for g, s in enumerate(seeds):
        single = SAE(cfg, n_models=1, generator=torch.Generator().manual_seed(s))
        train_sae(single, z_ND, [0.05], settings, torch.Generator().manual_seed(s))
        for name, v in single.state_dict().items():
            assert torch.allclose(stacked.state_dict()[name][g], v[0], atol=1e-5), (name, g)
    assert not torch.allclose(stacked.W_dec_GFD[0], stacked.W_dec_GFD[1])  # the seeds differ


def test_checkpoint_select_and_reconstruct():
    sae = make("jumprelu", "rectangle")
    with torch.no_grad():
        for g in range(G):
            sae.b_enc_GF[g] += g  # make the models differ
    one = sae.select(1)
    z_ND = randn(50, D)
    z_hat_ND, a_NF = reconstruct(one, z_ND, chunk=7)
    z_hat_GBD, a_GBF = sae(z_ND)
    assert torch.allclose(z_hat_ND, z_hat_GBD[1], atol=1e-6) and torch.allclose(a_NF, a_GBF[1], atol=1e-6)
    back = SAE.from_checkpoint(one.to_checkpoint())
    assert back.cfg == one.cfg and all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), one.state_dict().values()))
    with pytest.raises(ValueError, match="single SAE"):
        reconstruct(sae, z_ND)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="arch"):
        SAEConfig(arch="gated")
    with pytest.raises(ValueError, match="k, aux_k"):
        SAEConfig(arch="topk", n_latents=4, k=5)
    with pytest.raises(ValueError, match=r"expected z \[B, 6\]"):
        make("relu", "sigmoid").encode(torch.zeros(3, 5))


@pytest.mark.parametrize("normalize", [True, False])
def test_kl_term_compares_the_logits_for_both_normalize_flags(normalize):
    """The KL term sees softmax(y) with y = space.to_y(z): the de-standardized logits when
    collect.normalize is true, z itself when it is false (z are then the logits: issue 15's bug
    applied the train statistics regardless)."""
    mean_D, std_D = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 4.0, 0.25])
    space = InputSpace(mean_D, std_D, normalize)
    g = torch.Generator().manual_seed(0)
    z_BD, z_hat_1BD = torch.randn(5, 3, generator=g), torch.randn(1, 5, 3, generator=g)
    terms = sae_loss(z_BD, z_hat_1BD, torch.ones(1, 5, 2), torch.zeros(1, 5), torch.zeros(1), kl_coef=1.0, space=space)
    y_BD, y_hat_BD = (z_BD * std_D + mean_D, z_hat_1BD[0] * std_D + mean_D) if normalize else (z_BD, z_hat_1BD[0])
    logp, logq = F.log_softmax(y_BD, -1), F.log_softmax(y_hat_BD, -1)
    assert terms["kl"].item() == pytest.approx((logp.exp() * (logp - logq)).sum(-1).mean().item(), rel=1e-6)
    # the other flag's map gives another value: the test can fail
    other = sae_loss(z_BD, z_hat_1BD, torch.ones(1, 5, 2), torch.zeros(1, 5), torch.zeros(1), kl_coef=1.0,
                     space=InputSpace(mean_D, std_D, not normalize))
    assert abs(other["kl"].item() - terms["kl"].item()) > 1e-3


@pytest.mark.parametrize("normalize", [True, False])
def test_input_space_round_trip_and_directions(normalize):
    mean_D, std_D = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 4.0, 0.25])
    space = InputSpace(mean_D, std_D, normalize)
    y_ND = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    z_ND = space.to_z(y_ND)
    assert torch.allclose(z_ND, (y_ND - mean_D) / std_D if normalize else y_ND)
    assert torch.allclose(space.to_y(z_ND), y_ND, atol=1e-6)
    # a difference of z rows maps to the difference of their y rows (the mean cancels)
    assert torch.allclose(space.to_y_delta(z_ND[0] - z_ND[1]), y_ND[0] - y_ND[1], atol=1e-6)
    with pytest.raises(ValueError, match="3 dimensions"):
        space.to_z(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="two vectors"):
        InputSpace(mean_D, std_D[:2], normalize)
