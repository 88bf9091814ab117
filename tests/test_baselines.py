"""Baselines: each reference dictionary on a tiny case with a known answer, the appended
monosemanticity/geometry metrics against hand-computed values, and the stage on the tiny pipeline."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from mnist_sae import baselines as B
from mnist_sae import baselines_report as R
from mnist_sae import dictionaries as Dn
from mnist_sae import references as Ref
from mnist_sae import metrics
from mnist_sae.space import InputSpace
from tests.conftest import clone_run, dvc, set_params, sh


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- dictionaries with known answers ----------------------------------------------------------


def test_pca_reconstructs_rank_k_data_exactly():
    g = gen()
    N, D, K = 300, 10, 3
    z_ND = torch.randn(N, K, generator=g) @ torch.randn(K, D, generator=g) + torch.randn(D, generator=g)
    comps_KD, mean_D = Dn.fit_pca(z_ND, K)
    assert torch.allclose(comps_KD @ comps_KD.T, torch.eye(K), atol=1e-5)  # orthonormal axes
    z_hat_ND, a_NK = Dn.pca_dictionary(comps_KD, mean_D).reconstruct(z_ND)
    assert metrics.mse(z_ND, z_hat_ND) < 1e-9
    assert metrics.l0(a_NK) == K
    # one component fewer cannot reconstruct rank-3 data
    z_hat2_ND, _ = Dn.pca_dictionary(comps_KD[:K - 1], mean_D).reconstruct(z_ND)
    assert metrics.mse(z_ND, z_hat2_ND) > 1e-3


def test_kmeans_finds_well_separated_clusters():
    g = gen(1)
    centers_CD = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0], [-10.0, -10.0, -10.0]])
    labels_N = torch.arange(400) % 4
    z_ND = centers_CD[labels_N] + 0.1 * torch.randn(400, 3, generator=g)
    C_FD = Dn.fit_kmeans(z_ND, 4, seed=0, n_init=3)
    # each true center has a centroid within the noise
    dist_CF = torch.cdist(centers_CD, C_FD)
    assert dist_CF.min(dim=1).values.max() < 0.1
    assert sorted(dist_CF.argmin(dim=1).tolist()) == [0, 1, 2, 3]
    dic = Dn.kmeans_dictionary(C_FD, z_ND.mean(0))
    z_hat_ND, a_NF = dic.reconstruct(z_ND)
    assert metrics.l0(a_NF) == 1.0 and set(a_NF.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(z_hat_ND, C_FD[a_NF.argmax(1)], atol=1e-5)  # nearest centroid
    # a cluster is one class here, so every centroid's examples are pure
    assert metrics.live_mean(metrics.top_activation_purity(a_NF, labels_N, 50, n_classes=4)) == 1.0


def test_gain_shape_k1_is_best_direction_times_projection():
    g = gen(2)
    C_FD = torch.randn(8, 5, generator=g)
    z_ND = torch.randn(50, 5, generator=g)
    mean_D = torch.zeros(5)
    dic = Dn.topk_dictionary(C_FD, mean_D, k=1)
    z_hat_ND, a_NF = dic.reconstruct(z_ND)
    d_FD = C_FD / C_FD.norm(dim=1, keepdim=True)
    proj_NF = z_ND @ d_FD.T
    best_N = proj_NF.abs().argmax(1)
    expect_ND = proj_NF.gather(1, best_N[:, None]) * d_FD[best_N]
    assert torch.allclose(z_hat_ND, expect_ND, atol=1e-5)
    assert metrics.l0(a_NF) == 1.0


def test_topk_least_squares_recovers_sparse_combinations():
    # z = 3 e_1 - 2 e_4 in an orthonormal dictionary: the k = 2 encoder picks the two atoms and
    # recovers the coefficients exactly, zeros elsewhere
    W_FD = torch.eye(6)
    z_1D = torch.tensor([[0.0, 3.0, 0.0, 0.0, -2.0, 0.0]])
    a_1F = Dn.topk_least_squares(z_1D, W_FD, 2)
    assert torch.allclose(a_1F, torch.tensor([[0.0, 3.0, 0.0, 0.0, -2.0, 0.0]]), atol=1e-6)
    # non-orthogonal atoms: least squares, not projections
    W2_FD = Dn.unit_rows(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    z2_1D = torch.tensor([[2.0, 1.0]])
    a2 = Dn.topk_least_squares(z2_1D, W2_FD, 2)
    assert torch.allclose(a2 @ W2_FD, z2_1D, atol=1e-5)


def test_random_dictionary_with_k_equal_d_is_exact():
    g = gen(4)
    z_ND = torch.randn(40, 4, generator=g)
    dic = Dn.topk_dictionary(Dn.random_directions(16, 4, gen(5)), z_ND.mean(0), k=4)
    z_hat_ND, a_NF = dic.reconstruct(z_ND)
    assert metrics.mse(z_ND, z_hat_ND) < 1e-9 and metrics.l0(a_NF) == 4.0


def test_class_directions_point_at_class_means():
    z_ND = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, -3.0], [0.0, -5.0]])
    y_N = torch.tensor([0, 0, 1, 1])
    W_CD = Dn.class_directions(z_ND, y_N, torch.zeros(2), n_classes=2)
    assert torch.allclose(W_CD, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="every class"):
        Dn.class_directions(z_ND, y_N, torch.zeros(2), n_classes=3)


def test_nonnegative_atoms_splits_signed_codes():
    a_NF = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert torch.equal(Dn.nonnegative_atoms(a_NF, signed=True), torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]]))
    assert Dn.nonnegative_atoms(a_NF, signed=False) is a_NF


# --- monosemanticity and geometry metrics -----------------------------------------------------


def test_perfect_dictionary_has_purity_one():
    labels_N = torch.arange(100) % 10
    a_NF = torch.nn.functional.one_hot(labels_N, 10).float() * torch.rand(100, 1, generator=gen()).add(0.5)
    top_F = metrics.top_activation_purity(a_NF, labels_N, n_top=5)
    samp_F = metrics.sampled_activation_purity(a_NF, labels_N, 5, gen())
    assert torch.equal(top_F, torch.ones(10, dtype=torch.float64)) and torch.equal(samp_F, top_F)


def test_purity_by_hand():
    # latent 0 fires on 4 examples (labels 0, 0, 0, 1; the label-1 example strongest),
    # latent 1 never fires
    labels_N = torch.tensor([0, 0, 0, 1, 2])
    a_NF = torch.tensor([[1.0, 0], [2.0, 0], [3.0, 0], [4.0, 0], [0.0, 0]])
    top2 = metrics.top_activation_purity(a_NF, labels_N, n_top=2, n_classes=3)
    assert top2[0].item() == 0.5 and math.isnan(top2[1].item())  # {label 1, label 0}
    top10 = metrics.top_activation_purity(a_NF, labels_N, n_top=10, n_classes=3)
    assert top10[0].item() == 0.75  # only the 4 activating examples count
    assert metrics.live_mean(top10) == 0.75
    assert metrics.sampled_activation_purity(a_NF, labels_N, 10, gen(), n_classes=3)[0].item() == 0.75
    # sampling 1 example: purity 1 whichever it is; the sample is reproducible from the seed
    s1 = metrics.sampled_activation_purity(a_NF, labels_N, 1, gen(7), n_classes=3)
    assert s1[0].item() == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        metrics.top_activation_purity(-a_NF, labels_N, 2)


def test_ties_pick_lowest_index():
    labels_N = torch.tensor([3, 4, 4, 4])
    a_NF = torch.ones(4, 1)
    assert metrics.top_activation_purity(a_NF, labels_N, n_top=1)[0].item() == 1.0
    assert metrics.top_activation_purity(a_NF, labels_N, n_top=2)[0].item() == 0.5  # examples 0 and 1


def test_cosines_and_welch_bound():
    assert torch.equal(metrics.pairwise_cosine_similarities(torch.eye(3)), torch.zeros(3, dtype=torch.float64))
    cos = metrics.pairwise_cosine_similarities(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))
    assert torch.allclose(cos, torch.tensor([1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)], dtype=torch.float64))
    # the regular simplex (d + 1 unit vectors in R^d) meets the Welch bound 1/d with equality
    d = 4
    E = torch.eye(d + 1) - 1.0 / (d + 1)  # centred basis vectors span a d-dim subspace
    simplex = torch.linalg.svd(E).U[:, :d] * torch.linalg.svd(E).S[:d]  # coordinates in R^d
    cos_s = metrics.pairwise_cosine_similarities(simplex)
    assert torch.allclose(cos_s.abs(), torch.full_like(cos_s, 1 / d), atol=1e-6)
    assert metrics.welch_bound(d + 1, d) == pytest.approx(1 / d)
    assert metrics.welch_bound(3, 5) == 0.0


def test_relative_reconstruction_bias_and_magnitudes():
    x_ND = torch.randn(20, 3, generator=gen())
    assert metrics.relative_reconstruction_bias(x_ND, 0.5 * x_ND) == pytest.approx(0.5)
    assert metrics.relative_reconstruction_bias(x_ND, x_ND) == pytest.approx(1.0)
    mags = metrics.nonzero_magnitudes(torch.tensor([[0.0, -2.0], [1.0, 0.0]]))
    assert sorted(mags.tolist()) == [1.0, 2.0]
    s = metrics.magnitude_summary(torch.arange(1, 102, dtype=torch.float64))
    assert s["n"] == 101 and s["p50"] == 51.0 and s["p05"] == 6.0 and s["mean"] == 51.0
    assert metrics.magnitude_summary(torch.zeros(0))["n"] == 0


def test_probe_separable_and_missing_class():
    g = gen()
    y_N = torch.arange(200) % 3
    x_NF = torch.nn.functional.one_hot(y_N, 3).double() * 5 + 0.1 * torch.randn(200, 3, generator=g).double()
    probe = B.fit_probe(x_NF.numpy(), y_N.numpy(), C=1.0, max_iter=200, seed=0)
    logits = B.probe_logits(probe, x_NF.numpy(), n_classes=4)
    assert logits.shape == (200, 4) and torch.isinf(logits[:, 3]).all()
    assert metrics.accuracy(logits, y_N) == 1.0


# --- the whole comparison on a small synthetic site -------------------------------------------


def small_site(n=400, d=10, seed=0):
    g = gen(seed)

    def split(m):
        y_N = torch.arange(m) % 10
        logits_NO = torch.randn(m, d, generator=g) + 6 * torch.nn.functional.one_hot(y_N, d)
        return logits_NO, logits_NO, y_N

    train = split(n)
    return B.make_site(lambda s: train if s == "train" else split(n // 2),
                       InputSpace(train[0].mean(0), train[0].std(0), True), "test", lambda y: y)


def test_run_references_reference_methods_only():
    site = small_site()
    refs = Ref.ReferenceSettings(ks=(1, 2), n_latents=12, seed=0, top_n=10, kmeans_n_init=1, kmeans_max_iter=50)
    res = Ref.run_references(site, refs, probe=B.ProbeSettings(1.0, 100, 200, 0), family=None, log=lambda *_: None)
    rows = {(r["method"], r["k"]): r for r in res.rows}
    assert set(rows) == {("kmeans", 1)} | {(m, k) for m in B.REFERENCE_METHODS for k in (1, 2)}
    for (method, k), r in rows.items():
        assert r["l0"] == pytest.approx(k), method  # matched sparsity
        assert 0.1 <= r["purity_top"] <= 1.0 and 0.1 <= r["purity_sampled"] <= 1.0
        assert r["mse_norm"] >= 0 and 0 <= r["probe_acc"] <= 1
        # the core set rides along (metrics.core_metrics through fidelity), y space, zero ablation
        assert r["core"]["l0"] == r["l0"] and r["core"]["explained_variance"] == r["explained_variance"]
        assert r["core"]["ce_loss_score"] is not None and r["core"]["kl_div_score"] <= 1
    # more directions never hurt PCA; a class-structured site favours class directions over random
    assert rows[("pca", 2)]["mse_norm"] < rows[("pca", 1)]["mse_norm"]
    assert rows[("class", 1)]["mse_norm"] < rows[("random", 1)]["mse_norm"]
    assert rows[("pca", 2)]["cos_abs_max"] < 1e-5  # orthonormal axes
    out = R.results_json(res, {"site": "logits"})
    assert set(out) >= {"k1", "k2", "probe_raw_acc"} and "kmeans" in out["k1"]
    json.dumps(out, allow_nan=False)  # no NaN reaches JSON
    md = R.markdown_report(res, {"site": "logits"}, [])
    assert "| CE score " in md and f"{rows[('pca', 2)]['core']['kl_div_score']:.3f}" in md
    assert "## k = 1" in md and "## k = 2" in md and "lowest normalized MSE" in md
    csvs = R.frontier_csvs(res)
    assert set(csvs) == {f"frontier_{m}.csv" for m in B.METHOD_ORDER}
    assert csvs["frontier_sae_main.csv"].count("\n") == 1  # header only: not run


def test_results_files_round_trip(tmp_path):
    site = small_site()
    refs = Ref.ReferenceSettings(ks=(1,), n_latents=8, seed=0, top_n=10, kmeans_n_init=1, kmeans_max_iter=20)
    res = Ref.run_references(site, refs, probe=B.ProbeSettings(1.0, 100, 200, 0), family=None, log=lambda *_: None)
    B.save_results(res, tmp_path, {"ks": [1]})
    back, meta = B.load_results(tmp_path)
    assert meta == {"ks": [1]} and back.rows == res.rows and back.probe_raw_acc == res.probe_raw_acc
    assert list(back.dists) == list(res.dists)
    for name, d in res.dists.items():
        for key, v in d.items():
            assert back.dists[name][key].dtype == v.dtype and torch.equal(back.dists[name][key], v), (name, key)
    # the report from the reloaded results is the report from the original ones
    header = {"site": "logits"}
    assert R.markdown_report(back, header, []) == R.markdown_report(res, header, [])
    assert R.results_json(back, header) == R.results_json(res, header)


def test_run_references_with_sae_family():
    from mnist_sae.sae import SAEConfig

    torch.set_num_threads(1)
    site = small_site(n=600)
    family = Ref.FamilySettings(cfg=SAEConfig(n_latents=12), lr=1e-2, epochs=2, batch_size=32, lambdas=(1e-3, 1e-2, 1e-1, 1.0, 10.0), refine=1,
                              kl_coef=1.0, aux_coef=1 / 32, dead_steps=20, shift_thresholds=True)
    refs = Ref.ReferenceSettings(ks=(2,), n_latents=12, seed=0, top_n=10, kmeans_n_init=1, kmeans_max_iter=50)
    res = Ref.run_references(site, refs, probe=None, family=family, log=lambda *_: None)
    rows = {r["method"]: r for r in res.rows if r["k"] == 2}
    assert set(B.FAMILY) <= set(rows)
    assert rows["sae_topk"]["l0"] <= 2.0
    # thresholds shifted to val L0 = 2 exactly; test L0 lands near it
    assert rows["sae_jumprelu"]["l0"] == pytest.approx(2.0, abs=0.5)
    assert set(res.family) == {f"{m}@2" for m in B.FAMILY}
    # the family trained in two forked processes: the same rows and distributions, bit for bit
    forked = Ref.run_references(site, refs, probe=None, family=family, workers=2, log=lambda *_: None)
    assert forked.rows == res.rows and forked.family == res.family
    for name, d in res.dists.items():
        assert all(torch.equal(forked.dists[name][key], v) for key, v in d.items()), name


# --- the stage on the tiny synthetic pipeline -------------------------------------------------


def test_stage_outputs_on_tiny_pipeline(pipeline_run):
    out = json.loads((pipeline_run / "metrics" / "baselines.json").read_text())
    ks = out["ks"]
    for k in ks:
        block = out[f"k{k}"]
        assert {"pca", "random", "class", "kmeans_gain_shape"} | set(B.FAMILY) <= set(block)
        assert block["pca"]["l0"] == pytest.approx(k)
        for method, row in block.items():
            assert row["mse_norm"] >= 0 and row["l0"] <= row["n_latents"], method
    assert out["k1"]["kmeans"]["l0"] == 1.0 and "sae_main" in out
    md = (pipeline_run / "metrics" / "BASELINES.md").read_text()
    assert all(f"## k = {k}" in md for k in ks) and "The main SAE (L0" in md
    plots = pipeline_run / "plots" / "baselines"
    for name in ("frontier.png", "cosine_hist.png", "magnitude_hist.png", "frontier_pca.csv", "frontier_sae_main.csv"):
        assert (plots / name).exists(), name
    shown = json.loads(dvc(pipeline_run, "plots", "show", "--json").stdout)
    assert "errors" not in shown or not [e for e in shown["errors"] if "baselines" in json.dumps(e)]
    assert {"baselines_mse_vs_l0", "baselines_ce_recovered_vs_l0", "baselines_purity_vs_l0"} <= set(shown["data"])


BASELINES_CMD = ("stages.baselines", "data/collected", "data/ffn_selected.pt", "data/baselines")
COMPARE_CMD = ("stages.compare", "data/collected", "data/ffn_selected.pt", "data/sae/sae.pt", "data/baselines",
               "metrics/baselines.json", "metrics/BASELINES.md", "plots/baselines")


@pytest.mark.parametrize("cmd", [BASELINES_CMD, COMPARE_CMD], ids=["baselines", "compare"])
def test_stages_reject_bad_params_before_writing(pipeline_run, tmp_path, cmd):
    project = clone_run(pipeline_run, tmp_path / "p")
    set_params(project, {"baselines.k": [2, 1]})
    before = {name: (project / name).read_bytes() for name in ("metrics/baselines.json", "data/baselines/rows.json")}
    proc = sh(project, sys.executable, "-m", *cmd, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "baselines.k" in proc.stderr and "Traceback" not in proc.stderr
    assert {name: (project / name).read_bytes() for name in before} == before


def test_compare_refuses_references_made_with_other_params(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    set_params(project, {"baselines.top_n": 7})
    proc = sh(project, sys.executable, "-m", *COMPARE_CMD, check=False)
    assert proc.returncode != 0 and "top_n" in proc.stderr and "dvc repro baselines" in proc.stderr
    assert "Traceback" not in proc.stderr
