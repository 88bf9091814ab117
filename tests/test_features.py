"""Feature analysis: statistics against brute force, logit effects against the decoder, input
patterns against one-example-at-a-time autograd, the hypothesis wording, figures, and the stage."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_sae import feature_plots, features
from mnist_sae.data import make_synthetic
from mnist_sae.ffn import FFN, pixels_to_float
from conftest import dvc
from mnist_sae.sae import SAE, SAEConfig
from mnist_sae.space import InputSpace
from stages._common import load_torch

REPORT_KEYS = {"latent", "firing_rate", "n_active", "mean_activation", "max_activation", "label_counts",
               "mode", "purity", "top_n", "logit_effect", "input_pattern", "hypothesis"}


@pytest.fixture(scope="module")
def tiny():
    """A small FFN, 300 synthetic examples and a random JumpReLU SAE on the normalized logits,
    thresholds set so that latents fire on some examples and not others (one is dead)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = make_synthetic(300, 10, seed=0)
    ffn = FFN(16, generator=gen).requires_grad_(False)
    y_NO = ffn(pixels_to_float(torch.from_numpy(data.x_train_NI)))
    mean_O, std_O = y_NO.mean(0), y_NO.std(0)
    z_NO = (y_NO - mean_O) / std_O
    sae = SAE(SAEConfig(d_in=10, n_latents=12, theta_init=0.5), generator=gen).requires_grad_(False)
    with torch.no_grad():
        sae.b_enc_GF[0, 11] = -100.0  # dead
    return dict(x_NI=data.x_train_NI, labels_N=data.y_train_N, ffn=ffn, sae=sae, y_NO=y_NO.numpy(), z_NO=z_NO,
                mean_O=mean_O, std_O=std_O, space=InputSpace(mean_O, std_O, True))


def test_latent_stats_match_brute_force(tiny):
    sae, z_NO, labels_N = tiny["sae"], tiny["z_NO"], torch.from_numpy(tiny["labels_N"]).long()
    # raw logits (an array) normalized chunk by chunk; chunk 64 < N forces the top-k merge
    stats = features.latent_stats(sae, tiny["y_NO"], labels_N, top_n=5, space=tiny["space"],
                                  chunk=64)
    a_NF = sae.encode(z_NO)[0]
    active_NF = a_NF != 0
    assert torch.equal(stats.n_active_F, active_NF.sum(0))
    assert not stats.live_F[11] and stats.live_F[:11].any()
    for f in range(12):
        n_f = int(active_NF[:, f].sum())
        if n_f:
            assert stats.mean_act_F[f].item() == pytest.approx(a_NF[active_NF[:, f], f].mean().item(), rel=1e-5)
        assert torch.equal(stats.label_counts_FC[f], torch.bincount(labels_N[active_NF[:, f]], minlength=10))
        order = torch.argsort(-a_NF[:, f], stable=True)[:min(5, n_f)]
        got = stats.top_idx_FK[f][stats.top_idx_FK[f] >= 0]
        assert torch.equal(got, order)
        assert torch.equal(stats.top_act_FK[f][:len(got)], a_NF[order, f])


def test_logit_effect_is_the_decoder_row_in_raw_logits(tiny):
    sae, std_O = tiny["sae"], tiny["std_O"]
    m_F = torch.linspace(0.5, 2.0, 12)
    effect_FO = features.logit_effects(sae.W_dec_GFD[0], m_F, InputSpace(torch.zeros(10), std_O, True))
    for f in range(12):
        assert torch.allclose(effect_FO[f], m_F[f] * sae.W_dec_GFD[0, f] * std_O)
        # the claim behind the definition: setting a_f = m_f changes the reconstruction by this
        # much on top of any code (here a random one), because the decoder is affine
        a_1F = torch.rand(1, 12)
        a2_1F = a_1F.clone()
        a2_1F[0, f] += m_F[f]
        diff_O = (sae.decode(a2_1F[None])[0, 0] - sae.decode(a_1F[None])[0, 0]) * std_O
        assert torch.allclose(effect_FO[f], diff_O, atol=1e-5)


def test_logit_effect_hidden_site_goes_through_the_head(tiny):
    ffn = tiny["ffn"]
    gen = torch.Generator().manual_seed(1)
    sae = SAE(SAEConfig(d_in=16, n_latents=6, aux_k=4), generator=gen)
    std_H, m_F = torch.rand(16) + 0.5, torch.rand(6) + 0.5
    effect_FO = features.logit_effects(sae.W_dec_GFD[0].detach(), m_F, InputSpace(torch.zeros(16), std_H, True), ffn)
    h_H = torch.rand(16)  # any base point: the head is affine
    for f in range(6):
        delta_H = m_F[f] * sae.W_dec_GFD[0, f].detach() * std_H
        assert torch.allclose(effect_FO[f], ffn.head(h_H + delta_H) - ffn.head(h_H), atol=1e-5)
        assert torch.allclose(effect_FO[f], delta_H @ ffn.W_out_HO, atol=1e-5)


def test_input_patterns_match_per_example_autograd(tiny):
    sae, ffn = tiny["sae"], tiny["ffn"]
    fn = features.site_fn(ffn, "logits", tiny["space"])
    labels_N = torch.from_numpy(tiny["labels_N"]).long()
    stats = features.latent_stats(sae, tiny["z_NO"], labels_N, top_n=3, space=InputSpace.identity(10))
    latents_L = torch.nonzero(stats.live_F).flatten()
    # chunk 4 splits one latent's examples over two backward passes
    pattern_LI = features.input_patterns(sae, fn, tiny["x_NI"], stats.top_idx_FK, latents_L, chunk=4)
    assert pattern_LI.shape == (len(latents_L), 784)
    for row, f in enumerate(latents_L.tolist()):
        grads = []
        for i in stats.top_idx_FK[f][stats.top_idx_FK[f] >= 0].tolist():
            x_1I = pixels_to_float(torch.from_numpy(tiny["x_NI"][i:i + 1])).requires_grad_(True)
            sae.pre_acts(fn(x_1I))[0, 0, f].backward()
            grads.append(x_1I.grad[0])
        assert torch.allclose(pattern_LI[row], torch.stack(grads).mean(0), atol=1e-6)
        assert pattern_LI[row].abs().max() > 0


def test_report_records(tiny):
    records, summary = features.analyse(tiny["sae"], tiny["ffn"], "logits", tiny["y_NO"], tiny["x_NI"], tiny["labels_N"],
                               top_n=4, space=tiny["space"])
    n_live = int((tiny["sae"].encode(tiny["z_NO"])[0] != 0).any(0).sum())
    assert len(records) == n_live and all(set(r) == REPORT_KEYS for r in records)
    rates = [r["firing_rate"] for r in records]
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    for r in records:
        assert np.array(r["input_pattern"]).shape == (28, 28)
        assert sum(r["label_counts"]) == r["n_active"] and r["label_counts"][r["mode"]] == max(r["label_counts"])
        assert all(tiny["labels_N"][ex["index"]] == ex["label"] for ex in r["top_n"])
        expect_O = r["mean_activation"] * tiny["sae"].W_dec_GFD[0, r["latent"]] * tiny["std_O"]
        assert np.allclose(r["logit_effect"], expect_O.numpy(), atol=1e-6)


def test_hypothesis_wording():
    effect = np.zeros(10)
    effect[6], effect[2] = 3.14, -0.2
    counts = np.zeros(10, dtype=int)
    counts[6], counts[5] = 94, 6
    assert features.hypothesis(counts, effect, 0.1) == "fires on 6s (94%); raises logit 6 by 3.1"
    counts[6], counts[5] = 60, 30
    counts[0] = 10
    assert features.hypothesis(counts, -effect, 0.1) == \
        "fires on 6s (60%) and 5s (30%); inhibitory: lowers logit 6 by 3.1"
    counts = np.array([30, 30, 20, 20, 0, 0, 0, 0, 0, 0])
    effect[2] = -2.0
    assert features.hypothesis(counts, effect, 0.5) == \
        "dense (50% of examples), polysemantic: 0s 30%, 1s 30%, 2s 20%; raises logit 6 by 3.1, lowers logit 2 by 2.0"
    assert features.hypothesis(np.eye(10, dtype=int)[3] * 2, np.zeros(10), 0.01) == \
        "rare (2 examples), fires on 3s (100%); no effect on the logits"


def test_figures(tiny):
    records, summary = features.analyse(tiny["sae"], tiny["ffn"], "logits", tiny["y_NO"], tiny["x_NI"], tiny["labels_N"],
                               top_n=16, space=tiny["space"])
    r = records[0]
    fig = feature_plots.latent_figure(r, tiny["x_NI"][[ex["index"] for ex in r["top_n"]]])
    assert len(fig.axes) == 3
    fig = feature_plots.overview_figure(records)
    assert fig.axes[0].images[0].get_array().shape == (len(records), 10)
    m = feature_plots.mosaic(tiny["x_NI"][:3], 2)
    assert m.shape == (57, 57) and np.isnan(m[28]).all() and np.isnan(m[29:, 29:]).all()


def test_summary_matches_records(tiny):
    records, summary = features.analyse(tiny["sae"], tiny["ffn"], "logits", tiny["y_NO"], tiny["x_NI"],
                                        tiny["labels_N"], top_n=2, space=tiny["space"])
    purity = np.array([r["purity"] for r in records])
    n_active = np.array([r["n_active"] for r in records])
    assert summary["n_latents"] == 12 and summary["n_live"] == len(records) == 11
    assert summary["mean_purity"] == pytest.approx(purity.mean())
    assert summary["pooled_purity"] == pytest.approx((purity * n_active).sum() / n_active.sum())
    assert summary["n_pure_80"] == int((purity >= 0.8).sum())


# --- the stage on the tiny synthetic pipeline (real dvc, conftest.pipeline_run) ---------------


def test_features_stage_outputs(pipeline_run):
    report = json.loads((pipeline_run / "metrics/feature_report.json").read_text())
    summary = json.loads((pipeline_run / "metrics/features.json").read_text())
    records = report["latents"]
    assert report["site"] == "logits" and report["n_live"] == len(records) == summary["n_live"] > 0
    assert all(set(r) == REPORT_KEYS for r in records)
    assert [r["n_active"] for r in records] == sorted((r["n_active"] for r in records), reverse=True)
    # one PNG per live latent, plus the overview
    pngs = sorted(p.name for p in (pipeline_run / "plots/features").iterdir())
    assert pngs == sorted([f"latent_{r['latent']:04d}.png" for r in records] + ["overview.png"])
    sae = SAE.from_checkpoint(load_torch(pipeline_run / "data/sae/sae.pt")["sae"])
    std_O = torch.from_numpy(np.load(pipeline_run / "data/collected/std_D.npy"))
    for r in records:
        assert np.array(r["input_pattern"]).shape == (28, 28)
        assert np.abs(np.array(r["input_pattern"])).max() > 0
        assert 0 < len(r["top_n"]) <= report["top_n"]
        # logit site: the effect is the decoder row, scaled by m_f, mapped back to raw logits
        expect_O = r["mean_activation"] * sae.W_dec_GFD[0, r["latent"]].detach() * std_O
        assert np.allclose(r["logit_effect"], expect_O.numpy(), rtol=1e-5, atol=1e-6)


def test_dvc_plots_show_includes_the_pngs(pipeline_run, tmp_path):
    # -o: dvc writes its copies of the images there, not into the shared project
    proc = dvc(pipeline_run, "plots", "show", "--json", "-o", str(tmp_path / "dvc_plots"))
    shown = json.loads(proc.stdout)["data"]
    names = {Path(k).as_posix() for k in shown}
    report = json.loads((pipeline_run / "metrics/feature_report.json").read_text())
    expected = {f"plots/features/latent_{r['latent']:04d}.png" for r in report["latents"]} | {"plots/features/overview.png"}
    assert expected <= names, sorted(expected - names)
    assert all(shown[k][0]["type"] == "image" and Path(shown[k][0]["url"]).is_file() for k in expected)


def test_hidden_site_report(tiny):
    """Hidden site: codes from normalized hidden activations, effects through the FFN head,
    input gradients through ffn.hidden only."""
    ffn, x_NI = tiny["ffn"], tiny["x_NI"]
    h_NH = ffn.hidden(pixels_to_float(torch.from_numpy(x_NI)))
    mean_H, std_H = h_NH.mean(0), h_NH.std(0).clamp(min=1e-6)
    sae = SAE(SAEConfig(d_in=16, n_latents=8, theta_init=1.0, aux_k=4), generator=torch.Generator().manual_seed(2))
    sae.requires_grad_(False)
    records, summary = features.analyse(sae, ffn, "hidden", h_NH, x_NI, tiny["labels_N"], top_n=3,
                                        space=InputSpace(mean_H, std_H, True))
    assert summary["n_live"] == len(records) > 0
    for r in records:
        f = r["latent"]
        assert np.allclose(r["logit_effect"], (r["mean_activation"] * sae.W_dec_GFD[0, f] * std_H @ ffn.W_out_HO).numpy(),
                           atol=1e-5)
        x_KI = pixels_to_float(torch.from_numpy(x_NI[[ex["index"] for ex in r["top_n"]]])).requires_grad_(True)
        sae.pre_acts((ffn.hidden(x_KI) - mean_H) / std_H)[0, :, f].sum().backward()
        expect_PP = x_KI.grad.mean(0).view(28, 28).numpy()
        assert np.allclose(r["input_pattern"], expect_PP, rtol=5e-3, atol=1e-6)  # 3 significant digits in the report


def test_label_purity_by_hand():
    from mnist_sae import metrics

    counts_FC = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    purity_F = metrics.label_purity(counts_FC)
    assert purity_F[0].item() == 0.75 and torch.isnan(purity_F[1]) and purity_F[2].item() == 0.5
    assert metrics.pooled_label_purity(counts_FC) == (3 + 4) / 12
    assert np.isnan(metrics.pooled_label_purity(torch.zeros(2, 3, dtype=torch.int64)))
