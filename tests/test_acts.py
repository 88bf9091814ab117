"""The activation-cache track: sources (npy, raw), validation, split by example, batches, the
transformer's splice, probes' per-class metrics, and the acts_* stages through the real dvc."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import clone_run, dvc, env, ran_stages, read_params, set_params
from mnist_sae import metrics
from mnist_sae.acts import (Activations, SourceSpec, check_finite, fingerprint, load_labels, load_meta, open_activations,
                            open_cache, parse_source, split_by_example, stream_batches, to_float32, write_index,
                            write_planted_source)
from mnist_sae.errors import DataError
from mnist_sae.planted import PlantedSpec, generate
from mnist_sae.sae import SAE, SAEConfig
from mnist_sae.space import InputSpace
from mnist_sae.vit import ViT, ViTConfig, spliced_logits, write_residuals


# --- sources ----------------------------------------------------------------------------------------


def test_parse_source_forms():
    assert parse_source("transformer") == SourceSpec("transformer")
    assert parse_source("npy:/a/b:c.npy") == SourceSpec("npy", path="/a/b:c.npy")
    assert parse_source("raw:/x/acts.mmap:float16:768") == SourceSpec("raw", "/x/acts.mmap", "float16", 768)
    assert parse_source("planted").kind == "planted"
    for bad in ("npy:", "raw:/x:float64:8", "raw:/x:float16:0", "raw:/x:float16", "s3://bucket", ""):
        with pytest.raises(ValueError, match="allowed transformer, npy:<path>, raw:"):
            parse_source(bad)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_npy_source_is_memory_mapped(tmp_path, dtype):
    x_ND = np.random.default_rng(0).normal(size=(50, 6)).astype(dtype)
    np.save(tmp_path / "a.npy", x_ND)
    acts = open_activations(parse_source(f"npy:{tmp_path / 'a.npy'}"))
    assert isinstance(acts.data_RD, np.memmap) and (acts.n_rows, acts.d) == (50, 6)
    idx = np.array([3, 1, 40])
    got = acts.rows(idx)
    assert got.dtype == np.float32 and np.array_equal(got, x_ND[idx].astype(np.float32))
    check_finite(acts, chunk=7)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_raw_source_like_the_gpt2_cache(tmp_path, dtype):
    """A headerless memmap written with np.memmap, as the seed notebook did."""
    x_ND = np.random.default_rng(1).normal(size=(40, 8)).astype(dtype)
    mm = np.memmap(tmp_path / "acts.mmap", dtype=dtype, mode="w+", shape=x_ND.shape)
    mm[:] = x_ND
    mm.flush()
    del mm
    acts = open_activations(parse_source(f"raw:{tmp_path / 'acts.mmap'}:{dtype}:8"))
    assert (acts.n_rows, acts.d) == (40, 8)
    assert np.array_equal(acts.rows(np.arange(40)), x_ND.astype(np.float32))


def test_raw_bfloat16_is_widened_exactly(tmp_path):
    x_ND = torch.randn(12, 4).to(torch.bfloat16)
    (tmp_path / "a.raw").write_bytes(x_ND.view(torch.int16).numpy().tobytes())
    acts = open_activations(parse_source(f"raw:{tmp_path / 'a.raw'}:bfloat16:4"))
    assert np.array_equal(acts.rows(np.arange(12)), x_ND.float().numpy())


def test_bad_inputs_raise_one_clear_error(tmp_path):
    np.save(tmp_path / "three_d.npy", np.zeros((2, 3, 4), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((5, 3), np.int32))
    (tmp_path / "odd.raw").write_bytes(b"\0" * 30)
    cases = [("npy:" + str(tmp_path / "missing.npy"), "not found"),
             ("npy:" + str(tmp_path / "three_d.npy"), "expected a non-empty (N, D) array"),
             ("npy:" + str(tmp_path / "ints.npy"), "expected a float dtype"),
             ("raw:" + str(tmp_path / "odd.raw") + ":float32:4",
              "30 bytes is not a positive multiple of D x itemsize = 4 x 4 = 16")]
    for source, message in cases:
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_activations(parse_source(source))
    x_ND = np.ones((100, 3), np.float32)
    x_ND[[17, 60], 1] = [np.nan, np.inf]
    with pytest.raises(DataError, match="2 rows contain NaN or inf \\(first: row 17\\)"):
        check_finite(Activations(x_ND, "x.npy"), chunk=16)
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(DataError, match="acts.labels has 7 rows, the activations 8"):
        load_labels(tmp_path / "labels.npy", 8)
    np.save(tmp_path / "flabels.npy", np.zeros(8, np.float32))
    with pytest.raises(DataError, match="must be a 1-d integer array"):
        load_labels(tmp_path / "flabels.npy", 8)
    np.savez(tmp_path / "meta.npz", layer=np.zeros(8, np.int64), token=np.zeros(9, np.int64))
    with pytest.raises(DataError, match="column 'token' must be \\(N,\\) integers with N = 8"):
        load_meta(tmp_path / "meta.npz", 8)


def test_to_float32_bf16_bits():
    assert to_float32(np.array([0x3F80, 0xC000], np.uint16), bf16=True).tolist() == [1.0, -2.0]


def test_planted_source_cache_carries_the_truth(tmp_path):
    """The planted source writes the generator's rows (bit for bit) and its truth; open_cache reads
    both back, and the true codes of any rows match the generator's."""
    spec = PlantedSpec(n_features=12, d=6, p_min=0.05, p_max=0.3)
    info = write_planted_source(tmp_path, spec, 300, seed=4)
    splits = split_by_example(np.arange(300), 0.1, 0.2, seed=0)
    write_index(tmp_path, None, {}, splits, info)
    cache = open_cache(tmp_path)
    pl = generate(spec, 300, seed=4)
    assert cache.info["kind"] == "planted" and cache.labels_R is None and cache.meta == {}
    assert np.array_equal(cache.acts.rows(np.arange(300)), pl.x_ND)
    assert np.array_equal(cache.truth.W_true_TD, pl.W_true_TD)
    rows = splits["test"]
    c_NT = cache.truth.codes(rows)
    assert c_NT.shape == (len(rows), 12)
    assert np.allclose(c_NT @ pl.W_true_TD, pl.x_ND[rows], atol=1e-5)  # no noise: x = c @ W_true


def test_truth_metrics_map_atoms_back_to_the_cache_units():
    """An SAE whose atoms, mapped back through the standardization (std_D * w_f), are the true
    directions scores MCC 1; comparing the raw decoder rows would not."""
    spec = PlantedSpec(n_features=4, d=4, p_min=0.2, p_max=0.5)
    pl = generate(spec, 200, seed=1)
    std_D = torch.tensor([1.0, 3.0, 0.5, 2.0])
    sae = SAE(SAEConfig(arch="relu", d_in=4, n_latents=4, aux_k=1), generator=torch.Generator().manual_seed(0))
    w_FD = torch.from_numpy(pl.W_true_TD) / std_D
    with torch.no_grad():
        sae.W_dec_GFD[0] = w_FD / w_FD.norm(dim=1, keepdim=True)
    from mnist_sae.acts import Truth
    from mnist_sae.acts_eval import TruthFiring

    true = Truth(pl.W_true_TD, pl.row_M, pl.col_M, pl.val_M)
    rows = np.arange(200)
    a_NF = torch.from_numpy(true.codes(rows))  # latent f fires exactly when feature f does

    def scores(std_D, chunk):
        firing = TruthFiring(sae, InputSpace(torch.zeros(4), std_D, True), true)
        for i in range(0, 200, chunk):
            firing.add(rows[i:i + chunk], a_NF[i:i + chunk])
        return firing.scores()

    out = scores(std_D, 200)
    assert out["mcc"] == pytest.approx(1.0) and out["recovered"] == 1.0 and out["f1"] == 1.0
    assert scores(std_D, 7) == out  # firing counts: the same whatever the chunks
    assert scores(torch.ones(4), 200)["mcc"] < 0.99


# --- splits and batches ---------------------------------------------------------------------------


def test_split_by_example_keeps_examples_whole():
    example_R = np.repeat(np.arange(50), 6)  # 50 examples x 6 rows (layers x tokens)
    splits = split_by_example(example_R, 0.1, 0.2, seed=3)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(300))
    seen = [set(example_R[v]) for v in splits.values()]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert [len(s) for s in seen] == [35, 5, 10]
    again = split_by_example(example_R, 0.1, 0.2, seed=3)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], split_by_example(example_R, 0.1, 0.2, seed=4)["test"])
    with pytest.raises(ValueError, match="do not split"):
        split_by_example(np.arange(5), 0.1, 0.1, seed=0)


def test_stream_batches_draw_from_the_given_rows_only():
    x_ND = np.arange(200, dtype=np.float16).reshape(100, 2)
    rows = np.arange(0, 100, 3)
    batches = list(stream_batches(Activations(x_ND, "x"), rows, 16, 5, np.random.default_rng(0)))
    assert len(batches) == 5 and all(b.shape == (16, 2) and b.dtype == np.float32 for b in batches)
    assert set((np.concatenate(batches)[:, 0] // 2).astype(int)) <= set(rows.tolist())


def test_row_subsample_is_seeded_and_exact():
    from mnist_sae.acts_eval import row_subsample

    assert row_subsample(50, 50, seed=0) is None
    keep = row_subsample(1000, 37, seed=2)
    assert keep.dtype == bool and keep.sum() == 37 and np.array_equal(keep, row_subsample(1000, 37, seed=2))


def _small_cache(tmp_path, n_examples=90, n_layers=2, n_tokens=3, d=6):
    """An npy cache of n_examples x layers x tokens rows with labels and meta, split by example."""
    rng = np.random.default_rng(0)
    n = n_examples * n_layers * n_tokens
    x_ND = (rng.normal(size=(n, d)) * [1, 2, 3, 0.5, 1, 4] + [5, 0, -1, 2, 0, 3]).astype(np.float16)
    np.save(tmp_path / "x.npy", x_ND)
    example_R = np.repeat(np.arange(n_examples), n_layers * n_tokens)
    meta = {"example": example_R, "layer": np.tile(np.repeat(np.arange(n_layers), n_tokens), n_examples),
            "token": np.tile(np.arange(n_tokens), n_examples * n_layers)}
    labels_R = (example_R % 3).astype(np.int64)
    splits = split_by_example(example_R, 0.2, 0.3, seed=0)
    write_index(tmp_path, labels_R, meta, splits, {"kind": "npy", "path": str(tmp_path / "x.npy"), "d": d,
                                                   "n_rows": n, "fingerprint": fingerprint(tmp_path / "x.npy")})
    return open_cache(tmp_path)


def test_streamed_scores_equal_the_whole_split_metrics(tmp_path):
    """acts_eval reads a split in chunks (never whole): with one chunk its numbers are those of
    metrics.reconstruction and metrics.core_metrics on the whole split in memory, bit for bit;
    with chunks of 7 rows they agree to float64 rounding, per layer too, and the usage counts
    and probe scores are the same."""
    from mnist_sae.acts import row_stats
    from mnist_sae.acts_eval import EvalSettings, Probes, UsageCounts, feature_usage, score_split
    from mnist_sae.sae import reconstruct

    cache = _small_cache(tmp_path)
    sae = SAE(SAEConfig(arch="topk", d_in=6, n_latents=12, k=3, aux_k=4), generator=torch.Generator().manual_seed(0))
    mean_D, std_D = (torch.from_numpy(v) for v in row_stats(cache.acts, cache.splits["train"]))
    rows = cache.splits["test"]
    x_ND = torch.from_numpy(cache.load_rows(rows))
    space = InputSpace(mean_D, std_D, True)
    z_ND = space.to_z(x_ND)
    z_hat_ND, a_NF = reconstruct(sae, z_ND)
    x_hat_ND = space.to_y(z_hat_ND)

    def whole(keep_N=slice(None)):
        args = x_ND[keep_N], x_hat_ND[keep_N], z_ND[keep_N], z_hat_ND[keep_N], a_NF[keep_N]
        return metrics.reconstruction(*args, mean_D, 0.2) | {"core": metrics.core_metrics(args[0], args[1], args[4])}

    layer_N = torch.from_numpy(cache.meta["layer"][rows])
    ref = whole() | {"per_layer": {str(l): whole(layer_N == l) for l in (0, 1)}}
    one = score_split(cache, rows, sae, space, [0, 1], 0.2, chunk=len(rows))
    assert one == ref
    usage = UsageCounts({"layer": cache.meta["layer"][rows], "token": cache.meta["token"][rows]})
    settings = EvalSettings(dense_threshold=0.2, probe_token=None, probe_n_train=200, probe_C=1.0, probe_max_iter=200,
                            seed=0, chunk_rows=7)
    scored = {s: cache.splits[s] for s in ("train", "test")}
    probes = {}
    for chunk in (len(rows), 7):
        probes[chunk] = Probes(cache, scored, [0, 1], settings)
        score_split(cache, scored["train"], sae, space, [], 0.2, chunk, visitors=[probes[chunk].gather])
        probes[chunk].fit()
        score_split(cache, rows, sae, space, [], 0.2, chunk, visitors=[probes[chunk].predict])
    assert probes[7].scores() == probes[len(rows)].scores()
    chunked = score_split(cache, rows, sae, space, [0, 1], 0.2, chunk=7, visitors=[usage])
    for got, want in [(chunked, ref)] + [(chunked["per_layer"][l], ref["per_layer"][l]) for l in ("0", "1")]:
        assert got.keys() == want.keys() and got["core"].keys() == want["core"].keys()
        for k in want:
            if k != "per_layer":
                assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    usage_ref = feature_usage(a_NF, {"layer": cache.meta["layer"][rows], "token": cache.meta["token"][rows]})
    assert all(np.array_equal(usage.usage[k], v) for k, v in usage_ref.items())


def test_core_downstream_is_core_metrics_head_part():
    from mnist_sae.acts_eval import core_downstream

    g = torch.Generator().manual_seed(0)
    head = {"labels_E": torch.tensor([0, 1, 2, 1]), "logits_clean_EO": torch.randn(4, 3, generator=g),
            "logits_sae_EO": torch.randn(4, 3, generator=g), "logits_zero_EO": torch.randn(4, 3, generator=g)}
    full = metrics.core_metrics(torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g), **head)
    assert core_downstream(**head) == {k: full[k] for k in metrics.CORE_DOWNSTREAM_KEYS}


def test_row_stats_match_the_in_memory_statistics():
    from mnist_sae.acts import row_stats
    from mnist_sae.collect import normalization_stats

    x_ND = (np.random.default_rng(0).normal(size=(1000, 5)) * [1, 2, 3, 1e-5, 5] + 7).astype(np.float16)
    rows = np.sort(np.random.default_rng(1).choice(1000, 600, replace=False))
    mean_D, std_D = row_stats(Activations(x_ND, "x"), rows, chunk=97)
    ref_mean_D, ref_std_D = normalization_stats(x_ND[rows].astype(np.float32))
    assert np.allclose(mean_D, ref_mean_D, rtol=1e-6) and np.allclose(std_D, ref_std_D, rtol=1e-5)
    assert std_D[3] == 1.0  # a (nearly) constant dimension is not blown up


def test_streaming_from_the_memmap_trains_like_the_in_memory_path(tmp_path):
    """train_sae with a CacheBatches source (rows gathered from an fp16 memmap per step) gives the
    in-memory path's model bit for bit when b_dec starts at the same mean: same permutation, same
    rows, same elementwise standardization."""
    from mnist_sae.acts_fit import CacheBatches
    from mnist_sae.sae_train import TrainSettings, train_sae

    x_ND = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float16)
    np.save(tmp_path / "x.npy", x_ND)
    acts = open_activations(parse_source(f"npy:{tmp_path / 'x.npy'}"))
    rows = np.arange(0, 400, 2)
    source = CacheBatches(acts, rows, InputSpace(torch.zeros(8) + 0.1, torch.ones(8) * 1.5, True))
    z_ND = source.space.to_z(torch.from_numpy(x_ND[rows].astype(np.float32)))
    source.z_mean_D = z_ND.mean(0)
    settings = TrainSettings(epochs=2, batch_size=16, lr_decay=0.2)
    models = []
    for z, src in ((z_ND, None), (None, source)):
        gen = torch.Generator().manual_seed(3)
        sae = SAE(SAEConfig(arch="topk", d_in=8, n_latents=16, k=3, aux_k=4), generator=gen)
        train_sae(sae, z, [0.0], settings, gen, batch_source=src)
        models.append(sae.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


# --- the transformer ------------------------------------------------------------------------------


def test_splice_without_replacement_is_exact():
    model = ViT(ViTConfig(d_model=16, n_layers=3, n_heads=2, d_mlp=32), generator=torch.Generator().manual_seed(0)).eval()
    x_BI = torch.randint(0, 256, (5, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_BO, r_LBSD = model.residuals(x_BI)
        assert r_LBSD.shape == (3, 5, 17, 16)
        for l in range(3):
            assert torch.equal(model.run_from(l, r_LBSD[l]), logits_BO)
            clean, spliced = spliced_logits(model, x_BI, l, lambda r: r, chunk=5)
            assert torch.equal(clean, logits_BO) and torch.equal(spliced, logits_BO)
            # in chunks of 2 rows the GEMMs have other shapes: under MKL's COMPATIBLE branch (the
            # portable pin) their last bits may differ from the whole batch's, nothing more
            clean, spliced = spliced_logits(model, x_BI, l, lambda r: r, chunk=2)
            assert torch.equal(clean, spliced) and torch.allclose(spliced, logits_BO, atol=1e-5)
        # replacing the residual does change the output
        assert not torch.allclose(model.run_from(0, torch.zeros_like(r_LBSD[0])), logits_BO)


def test_residual_cache_rows_and_meta(tmp_path):
    model = ViT(ViTConfig(d_model=8, n_layers=2, n_heads=2, d_mlp=16), generator=torch.Generator().manual_seed(0)).eval()
    x_NI = torch.randint(0, 256, (3, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    meta = write_residuals(model, x_NI, tmp_path / "acts.npy", chunk=2)
    acts_RD = np.load(tmp_path / "acts.npy", mmap_mode="r")
    assert acts_RD.dtype == np.float16 and acts_RD.shape == (3 * 2 * 17, 8)
    with torch.no_grad():
        _, r_LBSD = model.residuals(x_NI)
    row = (2 * 2 + 1) * 17 + 4  # example 2, layer 1, token 4
    assert (meta["example"][row], meta["layer"][row], meta["token"][row]) == (2, 1, 4)
    assert np.array_equal(acts_RD[row], r_LBSD[1, 2, 4].to(torch.float16).numpy())


# --- metrics ----------------------------------------------------------------------------------------


def test_probe_per_class_metrics_equal_classification_report():
    from sklearn.metrics import classification_report

    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    y_pred = np.array([0, 1, 1, 1, 0, 2, 1, 3, 3, 0])
    got = metrics.per_class_prf(y_true, y_pred, n_classes=5)
    rep = classification_report(y_true, y_pred, labels=list(range(5)), output_dict=True, zero_division=0)
    for c in range(5):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert got[ours][c] == pytest.approx(rep[str(c)][theirs])
    assert got["macro_f1"] == pytest.approx(rep["macro avg"]["f1-score"])
    assert got["accuracy"] == pytest.approx(0.6)


def test_cosine_l2_ratio_hand_computed():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    x_hat = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert metrics.cosine_similarity(x, x_hat) == pytest.approx(0.5)
    assert metrics.l2_ratio(x, x_hat) == pytest.approx(1.5)


# --- the seed-003 recipe: AdamW in the one training loop ----------------------------------------------


def test_adamw_option_decays_weights_and_adam_refuses_weight_decay():
    from mnist_sae.sae_train import TrainSettings, train_sae

    z_ND = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(arch="relu", d_in=8, n_latents=16, aux_k=4)

    def trained(**kw):
        gen = torch.Generator().manual_seed(1)
        sae = SAE(cfg, generator=gen)
        train_sae(sae, z_ND, [1e-3], TrainSettings(epochs=3, batch_size=16, **kw), gen)
        return sae

    plain, decayed = trained(optimizer="adamw", weight_decay=0.0), trained(optimizer="adamw", weight_decay=0.5)
    assert decayed.W_enc_GDF.norm() < plain.W_enc_GDF.norm()  # decoupled decay pulls the weights to 0
    with pytest.raises(ValueError, match="expected adam \\(weight_decay 0\\) or adamw"):
        trained(optimizer="adam", weight_decay=0.1)


def test_seed_recipe_preset_through_dvc(pipeline_run, tmp_path):
    """The README's preset (ReLU + L1 at a given lambda, AdamW) reruns acts_sae and acts_eval only."""
    project = clone_run(pipeline_run, tmp_path / "p")
    proc = dvc(project, "exp", "run", "-S", "acts.sae.arch=relu", "-S", "acts.sae.lambda=1.0e-2",
               "-S", "acts.sae.optimizer=adamw", "-S", "acts.sae.weight_decay=1.0e-2", "-S", "acts.eval.max_rows=100")
    assert ran_stages(proc) == ["acts_eval", "acts_sae", "check_params", "headline"]
    out = json.loads((project / "metrics/acts_sae.json").read_text())
    assert (out["lambda"], out["lambda_source"], out["optimizer"], out["weight_decay"]) == (1.0e-2, "params", "adamw", 1.0e-2)
    ev = json.loads((project / "metrics/acts.json").read_text())
    assert ev["sae"]["arch"] == "relu"
    # acts.eval.max_rows: every split larger than 100 rows is scored on 100 of them
    assert ev["rows_scored"] == {k: min(100, v) for k, v in ev["cache"]["split_rows"].items()}
    assert "Scored on seeded subsamples" in (project / "metrics/ACTS.md").read_text()


# --- the stages through dvc ---------------------------------------------------------------------------

ACTS_OUTPUTS = ["metrics/acts_model.json", "metrics/acts_cache.json", "metrics/acts_sae.json", "metrics/acts.json",
                "metrics/ACTS.md", "plots/acts/per_layer.csv", "plots/acts/usage.png", "plots/acts/usage_layer.csv",
                "plots/acts/usage_token.csv", "plots/acts/usage_label.csv"]


def test_repro_runs_the_acts_track(pipeline_run):
    for path in ACTS_OUTPUTS:
        assert (pipeline_run / path).exists(), path
    out = json.loads((pipeline_run / "metrics/acts.json").read_text())
    assert out["cache"]["kind"] == "transformer" and set(out["spliced"]) == {"0", "1"}
    for split in ("train", "val", "test"):
        m = out["splits"][split]
        assert {"mse", "mse_norm", "explained_variance", "cosine_similarity", "l2_ratio", "relative_reconstruction_bias",
                "l0", "dead_fraction", "dense_fraction"} <= set(m) and set(m["per_layer"]) == {"0", "1"}
        # SAEBench core metrics: head-free per split; per layer, and with CE / KL scores on test
        assert m["core"]["explained_variance"] == m["explained_variance"] and m["core"]["l0"] == m["l0"]
        assert "ce_loss_score" not in m["core"]
        for layer, r in m["per_layer"].items():
            assert r["core"]["alive_fraction"] == pytest.approx(1 - r["dead_fraction"])
            assert ("kl_div_score" in r["core"]) == (split == "test"), (split, layer)
    for layer, s in out["spliced"].items():
        core = out["splits"]["test"]["per_layer"][layer]["core"]
        assert core["ce_loss_without_sae"] == s["ce_clean"] and core["ce_loss_with_sae"] == s["ce_spliced"]
        assert core["kl_div_with_sae"] == s["kl"] and core["kl_div_with_ablation"] > 0 and core["kl_div_score"] <= 1
    assert set(out["probes"]["1"]) == {"codes", "raw"}
    model = json.loads((pipeline_run / "metrics/acts_model.json").read_text())
    assert model["trained"] and 0 <= model["test_acc"] <= 1
    md = (pipeline_run / "metrics/ACTS.md").read_text()
    assert md.startswith("# Activation cache SAE: transformer") and "## Core metrics (SAEBench)" in md
    assert "| KL score " in md and "| test / 1 " in md


def test_usage_heat_maps_in_dvc_plots(pipeline_run, tmp_path):
    """The usage CSVs: each top latent's shares over layers / tokens / labels sum to 1 and match
    its counts; `dvc plots show` renders them with the custom heatmap template."""
    top = read_params(pipeline_run)["acts"]["eval"]["top_latents"]
    n_values = {"layer": read_params(pipeline_run)["acts"]["model"]["n_layers"], "token": 17}
    for name in ("layer", "token", "label"):
        with open(pipeline_run / f"plots/acts/usage_{name}.csv") as f:
            rows = list(csv.DictReader(f))
        latents = list(dict.fromkeys(r["latent"] for r in rows))
        assert 0 < len(latents) <= top
        for lat in latents:
            mine = [r for r in rows if r["latent"] == lat]
            counts = np.array([int(r["count"]) for r in mine])
            assert [r[name] for r in mine] == [str(v) for v in range(len(mine))]
            if name in n_values:
                assert len(mine) == n_values[name]
            assert sum(float(r["share"]) for r in mine) == pytest.approx(1.0, abs=1e-5)
            assert np.allclose([float(r["share"]) for r in mine], counts / counts.sum(), atol=1e-6)
    project = clone_run(pipeline_run, tmp_path / "p")
    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]
    for name in ("layer", "token", "label"):
        (plot,) = shown[f"acts_usage_by_{name}"]
        spec = plot["content"]
        assert plot["type"] == "vega" and spec["mark"]["type"] == "rect"
        assert spec["encoding"]["x"]["field"] == name and spec["encoding"]["y"]["field"] == "latent"
        assert len(spec["data"]["values"]) == sum(1 for _ in open(project / f"plots/acts/usage_{name}.csv")) - 1


def test_acts_param_reruns_only_the_acts_track(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    proc = dvc(project, "exp", "run", "-S", "acts.sae.target_l0=3.0")  # topk: k 4 -> 3
    assert ran_stages(proc) == ["acts_eval", "acts_sae", "check_params", "headline"]
    assert json.loads((project / "metrics/acts_sae.json").read_text())["l0_val"] == 3.0


def test_user_npy_cache_through_dvc(pipeline_run, tmp_path):
    """A user's npy cache with labels and meta: acts_model trains nothing, acts_cache references
    the file, the rest runs on it; a bad file stops acts_cache with one line and exit 2."""
    project = clone_run(pipeline_run, tmp_path / "p")
    rng = np.random.default_rng(0)
    n_ex, n_layer = 60, 2
    y_E = rng.integers(0, 3, n_ex)
    x_RD = (rng.normal(size=(n_ex * n_layer, 12)) + np.repeat(y_E, n_layer)[:, None]).astype(np.float16)
    user = tmp_path / "user"
    user.mkdir()
    np.save(user / "acts.npy", x_RD)
    np.save(user / "labels.npy", np.repeat(y_E, n_layer))
    np.savez(user / "meta.npz", example=np.repeat(np.arange(n_ex), n_layer), layer=np.tile(np.arange(n_layer), n_ex))
    set_params(project, {"acts.source": f"npy:{user / 'acts.npy'}", "acts.labels": str(user / "labels.npy"),
                         "acts.meta": str(user / "meta.npz"), "acts.eval.probe_token": None, "acts.sae.n_latents": 16,
                         "acts.sae.target_l0": 3.0, "acts.sae.topk.aux_k": 4, "acts.sae.arch": "jumprelu",
                         "acts.per_layer": False})
    proc = dvc(project, "repro", "acts_eval")
    assert "prepare" not in ran_stages(proc) and "acts_sae" in ran_stages(proc)
    assert json.loads((project / "metrics/acts_model.json").read_text())["trained"] is False
    assert not (project / "data/acts/cache/acts.npy").exists()  # referenced, not copied
    out = json.loads((project / "metrics/acts.json").read_text())
    assert out["cache"] == {"kind": "npy", "d": 12, "n_rows": 120, "split_rows": out["cache"]["split_rows"]}
    assert out["spliced"] == {} and set(out["probes"]) == {"0", "1"}
    assert "kl_div_score" not in out["splits"]["test"]["per_layer"]["0"]["core"]  # no head: the head-free subset

    # per-layer SAEs on layers too small for the batch: one line naming the keys, nothing written
    set_params(project, {"acts.per_layer": True})
    before = (project / "metrics/acts_sae.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "stages.acts_sae", "data/acts/cache", "data/acts/sae.pt",
                           "metrics/acts_sae.json", "plots/acts_sae"], cwd=project, env=env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: acts.sae.batch_size = 64 (calibration 64): layer 0 has only 42 train "
                                                "rows; use a smaller batch or acts.per_layer: false"]
    assert (project / "metrics/acts_sae.json").read_text() == before
    set_params(project, {"acts.per_layer": False})

    bad = x_RD.astype(np.float32)
    bad[5, 2] = np.nan
    np.save(user / "bad.npy", bad)
    set_params(project, {"acts.source": f"npy:{user / 'bad.npy'}"})
    before = (project / "metrics/acts_cache.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "stages.acts_cache", "data/prepared", "data/acts/model.pt",
                           "data/acts/cache", "metrics/acts_cache.json"], cwd=project, env=env(), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {user / 'bad.npy'}: 1 rows contain NaN or inf (first: row 5); "
                                                "only finite values are allowed"]
    assert (project / "metrics/acts_cache.json").read_text() == before


def test_planted_source_through_dvc(pipeline_run, tmp_path):
    """acts.source planted: acts_cache writes the generator's first seed (the same bytes as the
    planted stage's seed folder), acts_sae trains on it like any cache, acts_eval adds the
    ground-truth metrics; labels with the planted source stop acts_cache with one line, exit 2."""
    project = clone_run(pipeline_run, tmp_path / "p")
    set_params(project, {"acts.source": "planted", "acts.sae.epochs": 2, "acts.sae.batch_size": 32,
                         "acts.sae.target_l0": 2.0})
    proc = dvc(project, "repro", "acts_eval")
    assert {"acts_model", "acts_cache", "acts_sae", "acts_eval"} <= set(ran_stages(proc))
    seed = read_params(project)["planted"]["seeds"][0]
    assert (project / "data/acts/cache/acts.npy").read_bytes() == (project / f"data/planted/seed{seed}/x.npy").read_bytes()
    out = json.loads((project / "metrics/acts.json").read_text())
    assert out["cache"]["kind"] == "planted" and out["probes"] == {} and out["spliced"] == {}
    t = out["truth"]
    assert {"mcc", "mmcs", "recovered", "uniqueness", "precision", "recall", "f1"} <= set(t)
    assert 0 < t["mcc"] <= 1 and 0 <= t["recovered"] <= 1 and 0 <= t["f1"] <= 1 and t["mmcs"] >= t["mcc"] - 1e-9
    assert t["n_features"] == read_params(project)["planted"]["n_features"]
    assert "## Ground truth (planted source, test split)" in (project / "metrics/ACTS.md").read_text()
    print(f"planted source, tiny run: MCC {t['mcc']:.4f}, recovered {t['recovered']:.3f}, F1 {t['f1']:.3f}")

    np.save(tmp_path / "labels.npy", np.zeros(10, np.int64))
    set_params(project, {"acts.labels": str(tmp_path / "labels.npy")})
    before = sorted(p.name for p in (project / "data/acts/cache").iterdir())
    proc = subprocess.run([sys.executable, "-m", "stages.acts_cache", "data/prepared", "data/acts/model.pt",
                           "data/acts/cache", "metrics/acts_cache.json"], cwd=project, env=env(), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: acts.labels = '{tmp_path / 'labels.npy'}', meta = None: only for "
                                                "npy: or raw: sources; the planted source writes its own (set null)"]
    assert sorted(p.name for p in (project / "data/acts/cache").iterdir()) == before
