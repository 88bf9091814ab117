"""metrics/headline.json: the few numbers `dvc metrics show` lists, copied from the detail files."""

import json
import subprocess
import sys


from conftest import ROOT, dvc
from mnist_sae.headline import headline, leaves, numeric_leaves

EVAL = {"sae": {"lambda": 0.5},
        **{s: {"l0": 1.0, "acc_drop_pp": 1.5, "acc_drop_pp_ci95": 0.3, "ce_increase": 0.06, "mse_norm": 0.2,
               "mse_norm_std": 0.01, "dead_fraction": 0.5, "kl": 0.1} for s in ("train", "val", "test")}}
BASELINES = {"ks": [1, 2], "k1": {"pca": {"l0": 1.0, "mse_norm": 0.7}, "kmeans": {"l0": 1.0, "mse_norm": 0.17},
                                  "sae_topk": {"l0": 1.0, "mse_norm": 0.14}, "sae_relu": {"l0": 1.6, "mse_norm": 0.01}},
             "k2": {"pca": {"l0": 2.0, "mse_norm": 0.5}, "sae_relu": {"l0": 2.1, "mse_norm": 0.3}}}
ACTS = {"splits": {"test": {"explained_variance": 0.9, "l0": 16.0, "dead_fraction": 0.0, "mse": 0.02}},
        "spliced": {"0": {"acc_drop_pp": 0.75}, "1": {"acc_drop_pp": 0.5}},
        "probes": {"0": {"codes": {"accuracy": 0.84}, "raw": {"accuracy": 0.88}}, "1": {"codes": {"accuracy": 0.95}}}}
TRUTH = {"headline": {"best_sae": {"method": "sae_relu", "k": 6, "mcc": 0.94, "mcc_std": 0.005}, "margin": 0.11,
                      "margin_std": 0.02, "n_seeds": 3}, "methods": {"pca": {}}}


def test_headline_picks_values_and_their_spreads():
    h = headline(EVAL, {"best": {"test_acc": 0.975, "val_ce": 0.08}}, BASELINES, {"test_acc": 0.97}, ACTS, TRUTH)
    assert h["ffn"] == {"test_acc": 0.975}
    assert h["sae"]["val"] == {"l0": 1.0, "acc_drop_pp": 1.5, "acc_drop_pp_ci95": 0.3, "ce_increase": 0.06,
                               "mse_norm": 0.2, "mse_norm_std": 0.01, "dead_fraction": 0.5}
    # sae_relu's L0 1.6 is off k = 1 (not matched): the best matched SAE row is topk
    assert h["baselines"]["k1"] == {"reference": {"method": "kmeans", "mse_norm": 0.17},
                                    "sae": {"method": "sae_topk", "mse_norm": 0.14}}
    assert h["baselines"]["k2"] == {"reference": {"method": "pca", "mse_norm": 0.5},
                                    "sae": {"method": "sae_relu", "mse_norm": 0.3}}
    assert h["acts"] == {"vit_test_acc": 0.97, "test": {"explained_variance": 0.9, "l0": 16.0, "dead_fraction": 0.0},
                         "layer0": {"spliced_acc_drop_pp": 0.75, "probe_acc_codes": 0.84, "probe_acc_raw": 0.88},
                         "layer1": {"spliced_acc_drop_pp": 0.5, "probe_acc_codes": 0.95}}
    assert h["truth"] == TRUTH["headline"]
    assert leaves(h)["sae.test.mse_norm_std"] == 0.01 and len(numeric_leaves(h)) <= 60
    assert "train" not in h["sae"]  # the held-out splits only


def test_headline_leaves_out_what_is_missing():
    assert headline() == {}
    h = headline(eval_={"val": {"l0": 1.0, "mse_norm": float("nan")}}, acts={"splits": {}}, truth={"methods": {}})
    assert h == {"sae": {"val": {"l0": 1.0}}}  # NaN is not a headline number; empty sections vanish


def test_headline_stage_with_some_sources(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    out = tmp_path / "headline.json"
    cmd = [sys.executable, "-m", "stages.headline", str(out), "--eval", str(tmp_path / "eval.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())) == {"sae"}
    proc = subprocess.run(cmd + ["--truth", str(tmp_path / "nope.json")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.json'}: not found; run the stage that writes it (dvc repro) or drop it from headline's cmd"]


def test_dvc_metrics_show_lists_only_the_headline(pipeline_run):
    shown = json.loads(dvc(pipeline_run, "metrics", "show", "--json").stdout)
    files = {path for rev in shown.values() for path in rev["data"]}
    assert files == {"metrics/headline.json"}, files
    head = json.loads((pipeline_run / "metrics/headline.json").read_text())
    assert len(numeric_leaves(head)) <= 60, sorted(numeric_leaves(head))
    assert {"ffn", "sae", "baselines", "acts", "truth"} <= set(head)
    ev = json.loads((pipeline_run / "metrics/eval.json").read_text())
    assert head["sae"]["test"]["mse_norm"] == ev["test"]["mse_norm"]
    # a detail file is still one argument away
    detail = json.loads(dvc(pipeline_run, "metrics", "show", "metrics/eval.json", "--json").stdout)
    assert {path for rev in detail.values() for path in rev["data"]} == {"metrics/eval.json"}

