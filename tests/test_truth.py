"""Ground-truth metrics against hand-computed values, and a TopK SAE that must find the truth."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mnist_sae import truth, truth_bench
from mnist_sae.planted import true_directions
from mnist_sae.sae import SAE, SAEConfig, reconstruct
from mnist_sae.sae_train import TrainSettings, train_sae

# 3 true features = the standard basis of R^3; 3 latents by hand
W_TRUE = np.eye(3)
W_DEC = np.array([[1.0, 0.0, 0.0],   # = feature 0
                  [1.0, 1.0, 0.0],   # between 0 and 1: cos 1/sqrt2 with both
                  [0.0, 0.0, -2.0]])  # -feature 2, not unit: |cos| 1


def test_hand_made_3x3():
    C = truth.abs_cosines(W_DEC, W_TRUE)
    s = 1 / math.sqrt(2)
    assert np.allclose(C, [[1, 0, 0], [s, s, 0], [0, 0, 1]])
    assert truth.mmcs(C) == pytest.approx((1 + s + 1) / 3)
    f_P, t_P = truth.hungarian_match(C)
    assert f_P.tolist() == [0, 1, 2] and t_P.tolist() == [0, 1, 2]
    assert truth.mcc(C, f_P, t_P) == pytest.approx((1 + s + 1) / 3)
    assert truth.recovered_fraction(C, f_P, t_P) == pytest.approx(2 / 3)
    # best matches: latent 0 -> 0, latent 1 -> 0 (tie, argmax takes the first), latent 2 -> 2
    assert truth.uniqueness(C) == pytest.approx(2 / 3)
    assert truth.uniqueness(C, live_F=np.array([False, True, True])) == pytest.approx(2 / 3)


def test_firing_precision_recall_f1_by_hand():
    c_NT = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)  # true firing
    a_NF = np.array([[2, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=float)  # latents
    f_P, t_P = np.arange(3), np.arange(3)
    prf = truth.firing_prf(a_NF, c_NT, f_P, t_P)
    # latent 0 vs feature 0: TP 1, FP 0, FN 1; latent 1 vs 1: TP 1, FP 1, FN 0; latent 2 never fires
    assert np.allclose(prf["precision_P"], [1, 0.5, 0])
    assert np.allclose(prf["recall_P"], [0.5, 1, 0])
    assert np.allclose(prf["f1_P"], [2 / 3, 2 / 3, 0])
    s = truth.truth_scores(np.eye(3), np.eye(3), a_NF, c_NT)
    assert s["f1"] == pytest.approx(4 / 9) and s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["uniqueness"] == pytest.approx(2 / 3)  # latent 2 is dead: only live latents count


def test_truth_up_to_permutation_and_sign_scores_one():
    rng = np.random.default_rng(0)
    W_TD = true_directions(20, 8, rng)
    perm = rng.permutation(20)
    W_dec = W_TD[perm] * rng.choice([-1.0, 1.0], size=(20, 1)) * rng.uniform(0.5, 2.0, size=(20, 1))
    s = truth.truth_scores(W_dec, W_TD)
    assert s == pytest.approx({"mcc": 1.0, "mmcs": 1.0, "recovered": 1.0, "uniqueness": 1.0})
    f_P, t_P = truth.hungarian_match(truth.abs_cosines(W_dec, W_TD))
    assert np.array_equal(perm[f_P], t_P)


def test_random_directions_mmcs_near_the_gaussian_bound():
    """Random unit latents vs random unit features: the max of F |cos| ~ |N(0, 1/D)| is about
    sqrt(2 log F / D); loose bounds around it."""
    rng = np.random.default_rng(0)
    T, F, D = 64, 64, 256
    s = truth.truth_scores(rng.standard_normal((F, D)), true_directions(T, D, rng))
    bound = math.sqrt(2 * math.log(F) / D)
    assert 0.5 * bound < s["mmcs"] < 1.5 * bound
    assert s["recovered"] == 0.0


def test_topk_k1_sae_recovers_orthogonal_one_hot_features(one_thread):
    """T = 8 orthonormal features in D = 16, exactly one active per row: a TopK (k = 1) SAE
    trained by the library with 2T latents (spares, so no latent is stuck between two features)
    must find them one-to-one (MCC >= 0.99)."""
    rng = np.random.default_rng(0)
    T, D, N = 8, 16, 4000
    W_TD = true_directions(T, D, rng)
    which_N = rng.integers(0, T, N)
    c_NT = np.zeros((N, T), np.float32)
    c_NT[np.arange(N), which_N] = np.abs(rng.normal(1.0, 0.3, N))
    z_ND = torch.from_numpy(c_NT @ W_TD)
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(arch="topk", d_in=D, n_latents=2 * T, k=1, aux_k=8), generator=gen)
    train_sae(sae, z_ND, [0.0], TrainSettings(lr=1e-2, epochs=4, batch_size=32, dead_steps=20, lr_decay=0.2), gen)
    _, a_NF = reconstruct(sae, z_ND)
    s = truth.truth_scores(sae.W_dec_GFD[0].detach().numpy(), W_TD, a_NF.numpy(), c_NT)
    assert s["mcc"] >= 0.99, s
    assert s["f1"] >= 0.99, s


def test_aggregate_and_report_carry_the_core_metrics():
    """Rows with a "core" dict: mean and std over seeds per core metric, and a core table per k."""
    def row(seed, mse):
        return {"method": "sae_topk", "k": 2, **{m: 0.5 for m in truth_bench.METRICS},
                "core": {"explained_variance": 0.9 - seed / 10, "mse": mse, "l1": 2.0}}
    agg = truth_bench.aggregate({0: [row(0, 0.1)], 1: [row(1, 0.3)]})
    core = agg["sae_topk"]["k2"]["core"]
    assert core["mse"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.1), "values": [0.1, 0.3]}
    assert core["explained_variance"]["mean"] == pytest.approx(0.85)
    md = truth_bench.markdown_report(agg, {}, [])
    assert "Core metrics at L0 = 2" in md and "| sae_topk " in md and "0.8500" in md
    assert "| CE score" not in md  # head-free: the columns no row has are left out


def test_bench_fits_only_the_chosen_methods_and_each_as_in_the_full_bench(one_thread):
    """archs / baselines pick methods; a chosen method's row is the full bench's row for it (no
    shared random state between methods), and an unknown name is an error."""
    from mnist_sae.planted import PlantedSpec, generate

    pl = generate(PlantedSpec(n_features=8, d=4, p_min=0.1, p_max=0.4), 600, seed=0)
    c_NT = np.zeros((600, 8), np.float32)
    c_NT[pl.row_M, pl.col_M] = pl.val_M
    x_ND = np.asarray(pl.x_ND)
    full = truth_bench.BenchSettings(n_latents=8, lr=1e-2, epochs=1, batch_size=32, lambdas=(1e-3, 1e-1, 1.0),
                                     refine=0, tau=0.1, bandwidth=0.05, theta_init=0.1, aux_k=4, aux_coef=1 / 32,
                                     dead_steps=50, lr_decay=0.2, shift_thresholds=True, kmeans_n_init=1,
                                     kmeans_max_iter=10, recovered_cosine=0.9)
    args = (x_ND[:400], x_ND[400:500], x_ND[500:], c_NT[500:], pl.W_true_TD, [1, 2])

    def run(s):
        return truth_bench.score_seed(*args, s, seed=0, log=lambda _: None)

    rows = run(full)
    assert [r["method"] for r in rows] == list(truth_bench.BASELINES + truth_bench.SAE_VARIANTS) * 2
    some = run(dataclasses.replace(full, archs=["sae_topk", "sae_relu"], baselines=["random"]))
    assert [(r["method"], r["k"]) for r in some] == [(m, k) for k in (1, 2) for m in ("random", "sae_relu", "sae_topk")]
    assert some == [r for r in rows if r["method"] in ("random", "sae_relu", "sae_topk")]
    with pytest.raises(ValueError, match="unknown methods"):
        run(dataclasses.replace(full, archs=["sae_gated"]))


def _classic():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("truth_classic", ROOT / "scripts" / "truth_classic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_classic_toy_settings_are_valid_params():
    """Every -S of the classic toy's command names a key params.yaml has, and the edited file
    passes check_params (so a 15-minute run cannot die on a typo)."""
    from ruamel.yaml import YAML

    from conftest import ROOT
    from stages.check_params import check

    raw = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    for key, value in _classic().SETTINGS:
        section, name = key.split(".")
        assert name in raw[section], key
        raw[section][name] = value
    check(raw)


def test_classic_toy_record_from_truth_json():
    """The record's numbers are the experiment's means over seeds, and the sentence compares the
    ReLU SAE's best MMCS with the literature's."""
    tc = _classic()

    def row(seed, method, mmcs):
        return {"method": method, "k": 5, **{m: 0.5 for m in truth_bench.METRICS}, "mmcs": mmcs}
    agg = truth_bench.aggregate({0: [row(0, "sae_relu", 0.90), row(0, "random", 0.2)],
                                 1: [row(1, "sae_relu", 0.94), row(1, "random", 0.2)]})
    truth_json = {"methods": agg, "seeds": [0, 1], "l0": [5]}
    params = {"planted": {"n_features": 512, "d": 256, "n_rows": 1000, "p_min": 0.0014, "p_max": 0.73,
                          "zipf_exponent": 1.0, "mag_mean": 0.5, "mag_std": 0.29, "corr_rank": 0},
              "truth": {"archs": ["sae_relu"], "baselines": ["random"], "n_latents": 512}}
    run = {"command": "dvc exp run ...", "experiment": "x", "rev": "0" * 40, "wall_s": 60.0, "cpu": "CPU", "cores": 2}
    rec, md = tc.build_record(truth_json, params, run)
    assert rec["results"]["sae_relu"]["k5"]["mmcs"] == pytest.approx(0.92)
    assert "| sae_relu | 5 " in md and "0.920" in md and "1.0 min wall" in md
    assert f"MMCS 0.920 against the ~{tc.LITERATURE_MMCS}" in md and "(-0.040)" in md
