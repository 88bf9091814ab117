"""The evaluate stage: its library glue on hand-made SAEs, its plot data, and the real stage on the
tiny synthetic pipeline (every key written; `dvc metrics diff` after a lambda change)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from mnist_sae import metrics, plots
from mnist_sae.evaluate import SPLITS, best_results_markdown, evaluate_split
from mnist_sae.sae import SAE, SAEConfig
from mnist_sae.space import InputSpace
from tests.conftest import ROOT, clone_run, commit_all, dvc, env, set_params

FIDELITY_KEYS = {
    "acc_drop_pp", "acc_orig", "acc_recon", "agreement", "ce_ablate", "ce_increase", "ce_orig", "ce_recon",
    "ce_recovered", "dead_fraction", "dense_fraction", "explained_variance", "kl", "l0", "l0_max", "mse_ex_best_index",
    "mse_ex_mean", "mse_ex_median", "mse_ex_p95", "mse_ex_worst_index", "mse_norm", "mse_raw",
}
SUMMARY_KEYS = {"calibration_error", "dead_fraction_train", "l0_val", "lambda", "n_latents", "seeds", "target_l0"}
EVAL_OUTS = ["metrics/eval.json", "metrics/BEST_RESULTS.md", "plots/evaluate/val_mse_hist.json",
             "plots/evaluate/val_l0_hist.json", "plots/evaluate/test_confusion.csv", "plots/evaluate/evaluation.png"]


def signed_basis_sae(d: int) -> SAE:
    """A ReLU SAE with 2d latents whose decoder rows are +e_i and -e_i and encoder their transpose:
    a = relu(+z_i), relu(-z_i) per dim, so z_hat = z exactly and L0 = number of non-zero coords."""
    sae = SAE(SAEConfig(arch="relu", d_in=d, n_latents=2 * d, aux_k=1))
    eye_DD = torch.eye(d)
    W_dec_FD = torch.cat([eye_DD, -eye_DD])
    with torch.no_grad():
        sae.W_dec_GFD.copy_(W_dec_FD[None])
        sae.W_enc_GDF.copy_(W_dec_FD.T[None])
        sae.b_enc_GF.zero_()
        sae.b_dec_GD.zero_()
    return sae


def test_evaluate_split_exact_reconstruction_through_normalization():
    # logit site, normalized: the SAE sees z = (y - mu) / sigma and reconstructs it exactly, so
    # y_hat = y after un-normalizing; every fidelity number must say "perfect"
    y_NO = torch.tensor([[3.0, 1.0, -1.0], [1.0, 1.0, 5.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    labels_N = torch.tensor([0, 2, 0, 2])
    mu_O, sigma_O = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 4.0])
    out, arrays = evaluate_split(signed_basis_sae(3), y_NO, y_NO, labels_N, InputSpace(mu_O, sigma_O, True), lambda y: y)
    assert out["mse_norm"] == pytest.approx(0.0, abs=1e-12) and out["mse_raw"] == pytest.approx(0.0, abs=1e-12)
    assert out["explained_variance"] == pytest.approx(1.0)
    assert out["acc_orig"] == out["acc_recon"] == 0.75  # example 2: argmax 1, label 0
    assert out["ce_recovered"] == pytest.approx(1.0)
    assert out["agreement"] == 1.0
    # non-zero coordinates of z: (1, 0, -1/4), (-1, 0, 5/4), (0, 3/2, 0), (-2, -1/2, 1/4)
    assert arrays["l0_N"].tolist() == [2, 2, 1, 3]
    assert out["l0"] == 2.0 and out["l0_max"] == 3
    assert out["dead_fraction"] == 0.0  # all six signed directions are used at least once
    assert arrays["pred_orig_N"].tolist() == arrays["pred_recon_N"].tolist() == [0, 2, 1, 2]
    core = out["core"]  # y space; zero ablation at the logit site = uniform softmax over 3 classes
    assert core["ce_loss_with_ablation"] == pytest.approx(math.log(3))
    assert core["ce_loss_score"] == pytest.approx(1.0) and core["kl_div_score"] == pytest.approx(1.0)
    assert core["alive_fraction"] == 1.0 and core["l0"] == 2.0


def test_evaluate_split_hidden_site_uses_head_and_raw_space():
    # hidden site, not normalized, an SAE that keeps only positive coordinates: z_hat = relu(z)
    sae = signed_basis_sae(2)
    with torch.no_grad():
        sae.W_dec_GFD[0, 2:] = 0.0  # the -e_i latents decode to nothing
    h_NH = torch.tensor([[1.0, -1.0], [-2.0, 3.0]])
    W_HO = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    head = lambda h_BH: h_BH @ W_HO  # noqa: E731
    out, arrays = evaluate_split(sae, h_NH, head(h_NH), torch.tensor([0, 1]), InputSpace.identity(2), head)
    assert out["mse_raw"] == out["mse_norm"] == pytest.approx((1 + 4) / 4)
    assert arrays["mse_N"].tolist() == [0.5, 2.0]
    assert out["acc_recon"] == 1.0  # relu keeps the winning logit of both examples
    assert out["l0"] == 2.0  # the -e_i latents still fire (their decoder rows are zero)
    # zero ablation at the hidden site: head(0) = logits 0 here; raw space (no normalization)
    assert out["core"]["ce_loss_with_ablation"] == pytest.approx(math.log(2))
    assert out["core"]["mse"] == out["mse_raw"] and out["core"]["l1"] == pytest.approx((1 + 1 + 2 + 3) / 2)


def test_plot_rows_by_hand():
    rows = plots.log_histogram(torch.tensor([1e-3, 1e-2, 1e-2, 1e-1], dtype=torch.float64), bins=2, field="log10_mse")
    # log10 values -3, -2, -2, -1 over [-3, -1] in 2 bins: [-3, -2) and [-2, -1]
    assert rows == [{"log10_mse": -2.5, "count": 1, "fraction": 0.25}, {"log10_mse": -1.5, "count": 3, "fraction": 0.75}]
    assert sum(r["count"] for r in plots.log_histogram(torch.tensor([0.0, 0.0]), 3, "x")) == 2  # zeros and one value
    assert plots.count_histogram(torch.tensor([2, 0, 2]), "l0") == [
        {"l0": 0, "count": 1, "fraction": round(1 / 3, 6)}, {"l0": 1, "count": 0, "fraction": 0.0},
        {"l0": 2, "count": 2, "fraction": round(2 / 3, 6)}]
    assert plots.prediction_pairs_csv(torch.tensor([1, 2]), torch.tensor([1, 0]), "ffn", "recon") == "ffn,recon\n1,1\n2,0\n"
    cm = plots.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), n_classes=3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_best_results_markdown_has_settings_and_both_tables():
    row = {k: 0.5 for k in FIDELITY_KEYS} | {"core": {"explained_variance": 0.25, "kl_div_score": float("nan")}}
    md = best_results_markdown({"lambda": 0.123456789, "latents": 32}, {s: row for s in SPLITS})
    assert "| lambda " in md and "0.123457" in md
    assert "## Reconstruction error by split" in md and "## Cross-entropy and accuracy by split" in md
    assert "## Core metrics by split (SAEBench)" in md and "| 0.2500 " in md and "n/a" in md
    assert md.count("| train ") == 3 and md.count("| test ") == 3


# --- the real stage on the tiny synthetic pipeline ----------------------------------------------


def read_eval(project) -> dict:
    return json.loads((project / "metrics" / "eval.json").read_text())


def test_evaluate_writes_every_key(pipeline_run):
    for out in EVAL_OUTS:
        assert (pipeline_run / out).is_file(), out
    ev = read_eval(pipeline_run)
    # numbers only, but for the device the run used (issue 7: every torch stage records it)
    assert set(ev) == {"sae", "device", *SPLITS} and ev["device"] in ("cpu", "cuda")
    assert set(ev["sae"]) == SUMMARY_KEYS
    for split in SPLITS:
        # means over seeds, their 95% half-widths where seeds differ, and each seed's own dict
        assert FIDELITY_KEYS | {"core", "per_seed"} <= set(ev[split]), split
        assert set(ev[split]) <= FIDELITY_KEYS | {"core", "per_seed"} | {f"{k}_ci95" for k in FIDELITY_KEYS}, split
        per_seed = ev[split].pop("per_seed")
        assert len(per_seed) == ev["sae"]["seeds"] >= 2  # the tiny params train 2 seeds
        assert all(set(row) == FIDELITY_KEYS | {"core"} for row in per_seed)
        assert ev[split]["mse_norm"] == pytest.approx(sum(r["mse_norm"] for r in per_seed) / len(per_seed))
        core = {k: v for k, v in ev[split]["core"].items() if not k.endswith("_ci95")}
        assert set(core) == set(metrics.CORE_KEYS + metrics.CORE_SPARSITY_KEYS + metrics.CORE_DOWNSTREAM_KEYS), split
        assert core["explained_variance"] == ev[split]["explained_variance"] and core["l0"] == ev[split]["l0"]
        assert core["alive_fraction"] == pytest.approx(1 - ev[split]["dead_fraction"])
        for key, value in ((k, v) for k, v in ev[split].items() if k != "core"):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (split, key)
            assert math.isfinite(value) or key == "ce_recovered", (split, key, value)
        assert 0 <= ev[split]["acc_recon"] <= 1 and ev[split]["mse_norm"] >= 0 and ev[split]["l0"] >= 0
    assert ev["sae"]["l0_val"] == ev["val"]["l0"]
    assert ev["sae"]["calibration_error"] == pytest.approx(abs(ev["val"]["l0"] - ev["sae"]["target_l0"]) / ev["sae"]["target_l0"])
    md = (pipeline_run / "metrics" / "BEST_RESULTS.md").read_text()
    assert f"{ev['test']['ce_recon']:.4f}" in md and f"{ev['val']['mse_norm']:.4f}" in md
    assert "## Core metrics by split" in md and f"{ev['test']['core']['kl_div_score']:.4f}" in md
    n_val = sum(r["count"] for r in json.loads((pipeline_run / "plots/evaluate/val_l0_hist.json").read_text()))
    assert n_val == sum(r["count"] for r in json.loads((pipeline_run / "plots/evaluate/val_mse_hist.json").read_text()))
    confusion = (pipeline_run / "plots/evaluate/test_confusion.csv").read_text().splitlines()
    assert confusion[0] == "ffn,reconstructed" and len(confusion) > 1


def test_metrics_diff_after_lambda_change(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "project")
    before = read_eval(project)
    new_lambda = before["sae"]["lambda"] * 4
    set_params(project, {"sae.lambda": new_lambda})
    dvc(project, "repro")
    # eval.json is a plain output (only metrics/headline.json is under `metrics:`): named with --targets
    proc = dvc(project, "metrics", "diff", "--targets", "metrics/eval.json", "--json")
    diff = json.loads(proc.stdout)["metrics/eval.json"]
    assert diff["sae.lambda"]["old"] == pytest.approx(before["sae"]["lambda"])
    assert diff["sae.lambda"]["new"] == pytest.approx(new_lambda)
    # a 4x sparsity coefficient changes the reconstruction (L0 may not move: theta_shift pins it)
    assert {"val.mse_norm", "test.ce_recon"} <= set(diff), sorted(diff)
    text = dvc(project, "metrics", "diff", "--targets", "metrics/eval.json").stdout
    assert "sae.lambda" in text and "val.mse_norm" in text
    commit_all(project, "lambda x4")
    assert json.loads(dvc(project, "metrics", "diff", "HEAD~1", "--targets", "metrics/eval.json", "--json").stdout) \
        == json.loads(proc.stdout)
    # the default diff is the headline's: the SAE's val MSE moved with lambda
    assert "sae.val.mse_norm" in json.loads(dvc(project, "metrics", "diff", "HEAD~1", "--json").stdout)["metrics/headline.json"]


def test_bad_evaluate_params_exit_2_and_write_nothing(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "project")
    for out in EVAL_OUTS:
        (project / out).unlink()
    set_params(project, {"evaluate.hist_bins": 0})
    cmd = [sys.executable, "-m", "stages.evaluate", "data/collected", "data/ffn_selected.pt", "data/sae/sae.pt",
           *EVAL_OUTS[:2], *EVAL_OUTS[2:]]
    proc = subprocess.run(cmd, cwd=project, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: evaluate.hist_bins = 0: allowed > 0"]
    assert not any((project / out).exists() for out in EVAL_OUTS)


def test_results_table_regenerates_readme_section(pipeline_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n## Results\n\n<!-- results:start -->\nstale\n<!-- results:end -->\n\n## After\n")
    script = [sys.executable, str(ROOT / "scripts" / "results_table.py"), "--root", str(pipeline_run), "--readme", str(readme)]
    assert subprocess.run([*script, "--check"], capture_output=True, text=True).returncode == 1
    subprocess.run(script, check=True, capture_output=True, text=True)
    text = readme.read_text()
    ev = read_eval(pipeline_run)
    assert text.startswith("# Title\n\n## Results\n\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\n\n## After\n")
    assert "stale" not in text
    assert f"{ev['val']['mse_norm']:.4f}" in text and f"{100 * ev['test']['acc_recon']:.2f}" in text
    assert "0.1743" in text and "97.21 -> 91.59" in text  # the original notebooks' numbers beside them
    proc = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
