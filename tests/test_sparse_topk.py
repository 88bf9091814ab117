"""TopK's sparse path (SAE.topk_select / aux_select / sparse_forward, TrainSettings.sparse_topk):
the same forward, loss and every parameter gradient as the dense path to float32 rounding, for one
model and a stack; the same training losses; refused for the other archs. The bfloat16 choice of
latents (select_bf16): exact float32 values and gradients given the choice. CPU, seconds."""

import pytest
import torch

from mnist_sae.sae import SAE, SAEConfig, sae_loss
from mnist_sae.sae_train import TrainSettings, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")
B, D, NF = 16, 12, 40


def make(n_models, seed=0, k=5, aux_k=6):
    cfg = SAEConfig(arch="topk", d_in=D, n_latents=NF, k=k, aux_k=aux_k)
    gens = [torch.Generator().manual_seed(seed + g) for g in range(n_models)]
    sae = SAE(cfg, n_models=n_models, generator=gens)
    with torch.no_grad():  # not the symmetric init: biases and an untied encoder exercise every term
        sae.W_enc_GDF.add_(0.3 * torch.randn(sae.W_enc_GDF.shape, generator=gens[0]))
        sae.b_enc_GF.copy_(0.2 * torch.randn(sae.b_enc_GF.shape, generator=gens[0]))
        sae.b_dec_GD.copy_(0.1 * torch.randn(sae.b_dec_GD.shape, generator=gens[0]))
    return sae


def dense_terms(sae, z_BD, dead_GF):
    u_GBF = sae.pre_acts(z_BD)
    a_GBF, penalty_GB = sae.activate(u_GBF)
    z_hat_GBD = sae.decode(a_GBF)
    aux_hat_GBD = sae.aux_decode(u_GBF, dead_GF)
    coef_G = torch.zeros(sae.n_models)
    return z_hat_GBD, aux_hat_GBD, sae_loss(z_BD, z_hat_GBD, a_GBF, penalty_GB, coef_G, aux_hat_GBD=aux_hat_GBD,
                                             aux_coef=1 / 32)


def sparse_terms(sae, z_BD, dead_GF):
    u_GBF, idx_GBK, fired_GF = sae.topk_select(z_BD)
    z_hat_GBD, a_GBK, aux_hat_GBD = sae.sparse_forward(z_BD, u_GBF, idx_GBK, sae.aux_select(u_GBF, dead_GF))
    coef_G = torch.zeros(sae.n_models)
    terms = sae_loss(z_BD, z_hat_GBD, a_GBK, z_hat_GBD.new_zeros(sae.n_models, z_BD.shape[-2]), coef_G,
                     aux_hat_GBD=aux_hat_GBD, aux_coef=1 / 32)
    return z_hat_GBD, aux_hat_GBD, terms, fired_GF


def close(x, y, rtol=1e-5):
    """|x - y| <= rtol * max|y| (float32 rounding of sums taken in another order)."""
    return (x - y).abs().max() <= rtol * y.abs().max().clamp_min(1e-12)


@pytest.mark.parametrize("n_models", [1, 3])
@pytest.mark.parametrize("n_dead", [0, 3, NF])  # none dead (aux all invalid), fewer than aux_k, all
@pytest.mark.parametrize("per_model_batch", [False, True])
def test_sparse_matches_dense_forward_and_gradients(n_models, n_dead, per_model_batch):
    g = torch.Generator().manual_seed(7)
    z = torch.randn((n_models, B, D) if per_model_batch else (B, D), generator=g).requires_grad_()
    dead_GF = torch.zeros(n_models, NF, dtype=torch.bool)
    for m in range(n_models):
        dead_GF[m, torch.randperm(NF, generator=g)[:n_dead]] = True
    dense, sparse = make(n_models), make(n_models)
    zd = z.detach().clone().requires_grad_()
    z_hat_d, aux_d, terms_d = dense_terms(dense, zd, dead_GF)
    z_hat_s, aux_s, terms_s, fired_GF = sparse_terms(sparse, z, dead_GF)
    assert close(z_hat_s, z_hat_d) and close(aux_s, aux_d) if n_dead else torch.equal(aux_s, aux_d)
    for name in ("mse", "aux", "total", "l0"):
        assert close(terms_s[name], terms_d[name]), name
    a_GBF = dense.encode(zd)
    assert torch.equal(fired_GF, (a_GBF != 0).any(1))
    (terms_d["loss"] + (z_hat_d * 0.3).sum()).backward()  # a second term: the gradient is not just the loss's
    (terms_s["loss"] + (z_hat_s * 0.3).sum()).backward()
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        assert p_d.grad.abs().max() > 0, name
        assert close(p_s.grad, p_d.grad), name
    assert close(z.grad, zd.grad)


@pytest.mark.parametrize("n_models", [1, 3])
def test_bf16_selection_then_exact_float32_values_and_gradients(n_models):
    """select_dtype bfloat16 only chooses idx; given that choice, the forward and every gradient
    are the float32 dense computation restricted to it (autograd through gather / scatter)."""
    z_BD = torch.randn(64, D, generator=torch.Generator().manual_seed(4))
    sparse, ref = make(n_models), make(n_models)
    u_GBF, idx_GBK, _ = sparse.topk_select(z_BD, torch.bfloat16)
    assert u_GBF.dtype == torch.bfloat16
    exact_idx = ref.pre_acts(z_BD).topk(5, dim=-1).indices
    same = (idx_GBK[..., :, None] == exact_idx[..., None, :]).any(-1).float().mean()
    assert same > 0.9  # near-ties at the k-th value may swap
    z_hat_GBD, a_GBK, _ = sparse.sparse_forward(z_BD, u_GBF, idx_GBK)
    u_ref_GBF = ref.pre_acts(z_BD)
    a_ref_GBF = torch.zeros_like(u_ref_GBF).scatter(-1, idx_GBK, torch.relu(u_ref_GBF.gather(-1, idx_GBK)))
    z_hat_ref_GBD = ref.decode(a_ref_GBF)
    assert close(z_hat_GBD, z_hat_ref_GBD) and close(a_GBK, a_ref_GBF.gather(-1, idx_GBK))
    (z_hat_GBD.square().sum() + a_GBK.sum()).backward()
    (z_hat_ref_GBD.square().sum() + a_ref_GBF.sum()).backward()
    for (name, p_ref), p_s in zip(ref.named_parameters(), sparse.parameters()):
        assert close(p_s.grad, p_ref.grad), name


@pytest.mark.parametrize("n_models", [1, 2])
def test_training_with_sparse_topk_gives_the_dense_losses(n_models):
    z_ND = torch.randn(256, D, generator=torch.Generator().manual_seed(5))
    losses = {}
    for sparse in (False, True):
        sae = make(n_models, k=4, aux_k=3)
        gens = [torch.Generator().manual_seed(11 + g) for g in range(n_models)]
        seen = []
        settings = TrainSettings(lr=3e-3, epochs=3, batch_size=16, dead_steps=2, log_every=4, sparse_topk=sparse)
        train_sae(sae, z_ND, [0.0] * n_models, settings, gens, on_step=lambda s, t: seen.append(t))
        losses[sparse] = torch.stack([torch.stack([t["mse"], t["aux"], t["l0"]]) for t in seen])
    assert losses[True].shape == losses[False].shape == (48 // 4, 3, n_models)
    assert (losses[False][:, 1] != losses[False][:, 0]).any()  # AuxK engaged (aux = mse while none is dead)
    assert torch.allclose(losses[True], losses[False], rtol=1e-4, atol=1e-6)


def test_training_with_bf16_selection_stays_close():
    """The bf16 choice of latents costs little: the same run's losses within a few percent."""
    z_ND = torch.randn(512, D, generator=torch.Generator().manual_seed(5))
    mse = {}
    for bf16 in (False, True):
        seen = []
        settings = TrainSettings(lr=3e-3, epochs=2, batch_size=32, log_every=8, sparse_topk=True, select_bf16=bf16)
        train_sae(make(1, k=4), z_ND, [0.0], settings, torch.Generator().manual_seed(11),
                  on_step=lambda s, t: seen.append(t["mse"]))
        mse[bf16] = torch.cat(seen)
    assert torch.allclose(mse[True], mse[False], rtol=0.05)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_sparse_topk_refuses_other_archs(arch):
    sae = SAE(SAEConfig(arch=arch, d_in=D, n_latents=NF), generator=torch.Generator().manual_seed(0))
    z_ND = torch.randn(32, D, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="sparse_topk needs arch topk"):
        train_sae(sae, z_ND, [0.1], TrainSettings(batch_size=8, sparse_topk=True), torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="sparse path is for arch topk"):
        sae.topk_select(z_ND)
    with pytest.raises(ValueError, match="select_bf16 needs sparse_topk"):
        train_sae(make(1), z_ND, [0.0], TrainSettings(batch_size=8, select_bf16=True), torch.Generator().manual_seed(2))


def test_default_stays_dense():
    assert TrainSettings().sparse_topk is False and TrainSettings().select_bf16 is False
