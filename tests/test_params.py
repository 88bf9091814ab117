"""Bad params stop every stage early: exit status 2, one line naming the key, the value and what
is allowed, no traceback, nothing written (ARCHITECTURE.md, "Rules every stage keeps").

Each case edits params.yaml of one fresh tiny project and runs the stage's own command from
dvc.yaml (`python -m stages.X ...`, exactly the paths DVC passes) in it. The project has no data
yet, so a stage that reads its inputs before validating its params fails with a *data* error
instead and the case fails. "Nothing written" is checked on the whole project tree (data/ is
git-ignored, so `git status` alone would not see it).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML

from conftest import ROOT, env, make_project

# The section each stage owns and must validate whole (an unknown key there stops it).
OWN_SECTION = {
    "check_params": "sae",  # it parses every section; any one stands for all
    "prepare": "data", "train_ffn": "ffn", "select_ffn": "ffn", "collect": "collect", "calibrate": "sae",
    "train_sae": "sae", "evaluate": "evaluate", "baselines": "baselines", "compare": "baselines",
    "features": "features", "planted": "planted", "truth": "truth",
    "acts_model": "acts", "acts_cache": "acts", "acts_sae": "acts", "acts_eval": "acts",
}
# Stages that read no params at all (headline only copies numbers out of the metrics files).
NO_PARAMS = {"headline"}
DVC_YAML = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
# a matrix stage's command is run for this grid point (any point: params are checked before it)
ITEM = {"${item.hidden}": "16", "${item.lr}": "0.01"}


def needs(stage: str):
    return pytest.mark.skipif(stage not in STAGES, reason=f"no {stage} stage in dvc.yaml yet")


# (stage, {dotted key: value}, fragments the one error line must contain: key, value, what is allowed)
CASES = [
    # wrong type
    ("train_ffn", {"ffn.epochs": "three"}, ["ffn.epochs", "'three'", "expected an integer"]),
    ("train_ffn", {"ffn.batch_size": 8.5}, ["ffn.batch_size", "8.5", "expected an integer"]),
    ("collect", {"collect.normalize": "yes"}, ["collect.normalize", "'yes'", "expected true or false"]),
    ("train_sae", {"sae.n_latents": 32.5}, ["sae.n_latents", "32.5", "expected an integer"]),
    ("train_sae", {"sae.lr": True}, ["sae.lr", "True", "expected a number"]),
    ("calibrate", {"sae.calibration": 5}, ["sae.calibration", "5", "expected a mapping"]),
    # negative / zero learning rates
    ("train_ffn", {"ffn.sweep.lr": [1.0e-2, -1.0e-2]}, ["ffn.sweep.lr", "-0.01", "> 0"]),
    ("select_ffn", {"ffn.sweep.lr": [-1.0e-2]}, ["ffn.sweep.lr", "-0.01", "> 0"]),
    ("train_sae", {"sae.lr": -1.0e-3}, ["sae.lr", "-0.001", "> 0"]),
    ("calibrate", {"sae.lr": 0.0}, ["sae.lr", "0.0", "> 0"]),
    # empty sweep lists
    ("train_ffn", {"ffn.sweep.hidden": []}, ["ffn.sweep.hidden", "[]", "non-empty"]),
    ("select_ffn", {"ffn.sweep.lr": []}, ["ffn.sweep.lr", "[]", "non-empty"]),
    # impossible combination
    ("train_sae", {"sae.target_l0": 64.0}, ["sae.target_l0", "64.0", "<= n_latents = 32"]),
    ("calibrate", {"sae.target_l0": 33.0}, ["sae.target_l0", "33.0", "<= n_latents = 32"]),
    # unknown choices
    ("train_sae", {"sae.arch": "gated"}, ["sae.arch", "'gated'", "'jumprelu'", "'topk'"]),
    ("calibrate", {"sae.jumprelu.ste": "tanh"}, ["sae.jumprelu.ste", "'tanh'", "'sigmoid'", "'rectangle'"]),
    ("train_sae", {"sae.topk.aux_k": 64}, ["sae.topk.aux_k", "64", "<= n_latents = 32"]),
    # an arch's knob at its old flat place names its new one; a typo inside the subsection, the nearest key
    ("calibrate", {"sae.tau": 0.2}, ["sae.tau", "unknown key", "did you mean sae.jumprelu.tau?"]),
    ("train_sae", {"sae.aux_k": 16}, ["sae.aux_k", "unknown key", "did you mean sae.topk.aux_k?"]),
    ("train_sae", {"sae.jumprelu.tua": 0.2}, ["sae.jumprelu.tua", "did you mean sae.jumprelu.tau?"]),
    ("check_params", {"acts.sae.dead_steps": 20}, ["acts.sae.dead_steps", "did you mean acts.sae.topk.dead_steps?"]),
    ("collect", {"collect.site": "input"}, ["collect.site", "'input'", "'logits'", "'hidden'"]),
    ("collect", {"collect.dtype": "int8"}, ["collect.dtype", "'int8'", "'float32'"]),
    ("prepare", {"data.source": "kaggle"}, ["data.source", "'kaggle'", "'synthetic'", "'idx:<dir>'"]),
    ("prepare", {"data.source": "idx:"}, ["data.source", "'idx:'", "'idx:<dir>'"]),
    ("train_ffn", {"ffn.type": "gelu"}, ["ffn.type", "'gelu'", "'relu'", "'geglu'"]),
    # lambda <= 0, wherever a lambda is a param
    ("train_sae", {"sae.lambda": 0.0}, ["sae.lambda", "0.0", "> 0"]),
    ("train_sae", {"sae.lambda": -0.5}, ["sae.lambda", "-0.5", "> 0"]),
    ("calibrate", {"sae.calibration.lambda_min": 0.0}, ["sae.calibration.lambda_min", "0.0", "> 0"]),
    ("calibrate", {"sae.calibration.lambda_min": 2.0}, ["sae.calibration.lambda_min", "2.0", "< lambda_max"]),
    ("baselines", {"baselines.lambda_min": -1.0}, ["baselines.lambda_min", "-1.0", "> 0"]),
    # val_fraction outside (0, 1)
    ("prepare", {"data.val_fraction": 0.0}, ["data.val_fraction", "0.0", "(0, 1)"]),
    ("prepare", {"data.val_fraction": 1.0}, ["data.val_fraction", "1.0", "(0, 1)"]),
    ("prepare", {"data.val_fraction": -0.2}, ["data.val_fraction", "-0.2", "(0, 1)"]),
    # a float that a YAML 1.1 reader (PyYAML) would hand over as a string: quoted here, so every
    # loader reads a string, and the validator must say so instead of comparing "1e-3" > 0
    ("train_sae", {"sae.lr": "1e-3"}, ["sae.lr", "'1e-3'", "expected a number", "1.0e-3"]),
    ("prepare", {"data.val_fraction": "2e-1"}, ["data.val_fraction", "'2e-1'", "expected a number"]),
    # other ranges, one per remaining section
    ("evaluate", {"evaluate.dense_threshold": 1.5}, ["evaluate.dense_threshold", "1.5", "[0, 1)"]),
    ("baselines", {"baselines.k": []}, ["baselines.k", "[]", "non-empty"]),
    ("baselines", {"baselines.eval_split": "train"}, ["baselines.eval_split", "'train'", "'val'", "'test'"]),
    ("compare", {"baselines.top_n": 0}, ["baselines.top_n", "0", "> 0"]),
    ("features", {"features.split": "holdout"}, ["features.split", "'holdout'", "'train'"]),
    ("planted", {"planted.n_features": 8.5}, ["planted.n_features", "8.5", "expected an integer"]),
    ("planted", {"planted.p_min": 0.5, "planted.p_max": 0.1}, ["planted.p_min", "0.5", "<= p_max"]),
    ("planted", {"planted.p_max": 1.5}, ["planted.p_max", "1.5", "(0, 1]"]),
    ("planted", {"planted.seeds": []}, ["planted.seeds", "[]", "non-empty"]),
    ("planted", {"planted.n_parents": 2}, ["planted.n_parents", "2", "both 0 or both > 0"]),
    ("planted", {"planted.corr_strength": 1.0}, ["planted.corr_strength", "1.0", "[0, 1)"]),
    ("truth", {"truth.l0": []}, ["truth.l0", "[]", "non-empty"]),
    ("truth", {"truth.l0": [4, 2]}, ["truth.l0", "[4, 2]", "strictly increasing"]),
    ("truth", {"truth.lr": "1e-2"}, ["truth.lr", "'1e-2'", "expected a number"]),
    ("truth", {"truth.lambda_min": 2.0}, ["truth.lambda_min", "2.0", "< lambda_max"]),
    ("truth", {"truth.archs": ["sae_gated"]}, ["truth.archs", "['sae_gated']", "sae_jumprelu_sigmoid", "sae_topk"]),
    ("truth", {"truth.baselines": ["pca", "pca"]}, ["truth.baselines", "['pca', 'pca']", "distinct", "kmeans"]),
    ("truth", {"truth.archs": [], "truth.baselines": []}, ["truth.archs", "both empty"]),
    ("acts_cache", {"acts.source": "hdf5:x.h5"}, ["acts.source", "'hdf5:x.h5'", "npy:<path>", "raw:<path>"]),
    ("acts_cache", {"acts.source": "raw:x.mmap:int8:768"}, ["acts.source", "float16|float32|bfloat16"]),
    ("acts_model", {"acts.model.n_heads": 3}, ["acts.model.n_heads", "3", "divide d_model"]),
    ("acts_sae", {"acts.sae.kl_coef": 1.0}, ["acts.sae.kl_coef", "1.0", "must be 0.0"]),
    ("acts_sae", {"acts.sae.seeds": 3}, ["acts.sae.seeds", "3", "must be 1"]),
    ("check_params", {"acts.sae.seeds": 2}, ["acts.sae.seeds", "2", "must be 1"]),
    ("acts_sae", {"acts.sae.lambda": 0.0}, ["acts.sae.lambda", "0.0", "> 0"]),
    ("acts_sae", {"acts.sae.target_l0": 600.0}, ["acts.sae.target_l0", "600.0", "<= n_latents"]),
    ("acts_eval", {"acts.eval.dense_threshold": 1.0}, ["acts.eval.dense_threshold", "1.0", "[0, 1)"]),
    ("acts_eval", {"acts.eval.chunk_rows": 0}, ["acts.eval.chunk_rows", "0", "> 0"]),
    ("acts_sae", {"acts.sae.optimizer": "sgd"}, ["acts.sae.optimizer", "'sgd'", "'adam', 'adamw'"]),
    ("acts_sae", {"acts.sae.weight_decay": 0.1}, ["acts.sae.weight_decay", "0.1", "only with optimizer adamw"]),
    ("acts_cache", {"acts.source": "planted", "acts.meta": "m.npz"}, ["acts.labels", "'m.npz'", "the planted source"]),
    ("acts_cache", {"acts.labels": "y.npy"}, ["acts.labels", "'y.npy'", "only for npy: or raw:"]),
    ("acts_cache", {"acts.source": "npy:/nonexistent/acts.npy"}, ["/nonexistent/acts.npy", "not found"]),
]


def case_id(case) -> str:
    stage, updates, _ = case
    return f"{stage}-" + "-".join(f"{k}={v}" for k, v in updates.items())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One fresh tiny project (no outputs); each case edits its params.yaml and restores it."""
    return make_project(tmp_path_factory.mktemp("params") / "project")


def edit_params(project: Path, updates: dict, delete: tuple = ()) -> None:
    """Set dotted keys (new keys allowed: unknown keys are a case) and delete others."""
    yaml = YAML()
    path = project / "params.yaml"
    doc = yaml.load(path.read_text())
    for dotted, value in list(updates.items()) + [(d, None) for d in delete]:
        node = doc
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if dotted in delete:
            del node[last]
        else:
            node[last] = value
    with open(path, "w") as f:
        yaml.dump(doc, f)


def stage_command(stage: str) -> list[str]:
    cmd = STAGES[stage]["cmd"]
    for k, v in ITEM.items():
        cmd = cmd.replace(k, v)
    args = shlex.split(cmd)
    assert args[:2] == ["python", "-m"], f"{stage}: expected `python -m stages.X ...`, got {cmd!r}"
    return [sys.executable] + args[1:]


def snapshot(project: Path) -> dict[str, float]:
    """Every path under the project except .git and bytecode caches, with its mtime (files only: a
    folder's mtime moves when a bytecode cache such as Numba's appears in it; a file added to or
    removed from a folder shows as a path of its own)."""
    return {str(p.relative_to(project)): p.stat().st_mtime_ns if p.is_file() else 0 for p in sorted(project.rglob("*"))
            if ".git" not in p.relative_to(project).parts[:1] and "__pycache__" not in p.parts}


def run_bad(project: Path, stage: str, updates: dict, delete: tuple = ()) -> str:
    """Run `stage` with edited params; assert the failure contract; return the error line."""
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, updates, delete)
        before = snapshot(project)
        proc = subprocess.run(stage_command(stage), cwd=project, env=env(), capture_output=True, text=True,
                              timeout=300)
        after = snapshot(project)
    finally:
        (project / "params.yaml").write_text(original)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"{stage}: exit {proc.returncode}, expected 2\n{out[-3000:]}"
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{stage}: expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert proc.stdout.strip() == "", f"{stage}: printed on stdout:\n{proc.stdout}"
    changed = sorted(set(before) ^ set(after)) + sorted(k for k in before if k in after and before[k] != after[k])
    assert changed == [], f"{stage} wrote {changed} although its params were rejected"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_value_stops_stage_with_one_line(project, case):
    stage, updates, fragments = case
    if stage not in STAGES:
        pytest.skip(f"no {stage} stage in dvc.yaml yet")
    line = run_bad(project, stage, updates)
    missing = [f for f in fragments if f not in line]
    assert not missing, f"{stage}: error line lacks {missing}: {line!r}"


@pytest.mark.parametrize("stage", sorted(OWN_SECTION))
def test_unknown_key_stops_stage(project, stage):
    if stage not in STAGES:
        pytest.skip(f"no {stage} stage in dvc.yaml yet")
    section = OWN_SECTION[stage]
    line = run_bad(project, stage, {f"{section}.bogus_knob": 1})
    assert f"{section}.bogus_knob" in line and "unknown key" in line and "allowed keys" in line, line


@pytest.mark.parametrize("stage", sorted(OWN_SECTION))
def test_missing_key_stops_stage(project, stage):
    if stage not in STAGES:
        pytest.skip(f"no {stage} stage in dvc.yaml yet")
    section = OWN_SECTION[stage]
    params = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())
    key = sorted(params[section])[0]
    line = run_bad(project, stage, {}, delete=(f"{section}.{key}",))
    assert f"{section}.{key}" in line and "missing" in line, line


def device_stages() -> list[str]:
    return sorted(name for name, s in STAGES.items() if "device" in (s.get("params") or []))


@pytest.mark.parametrize("stage", device_stages())
def test_bad_device_stops_stage(project, stage):
    line = run_bad(project, stage, {"device": "gpu"})
    assert "device" in line and "'gpu'" in line and "'auto', 'cpu', 'cuda'" in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_stops_stage(project):
    line = run_bad(project, "train_ffn", {"device": "cuda"})
    assert "device = 'cuda'" in line and "no CUDA" in line and "auto or cpu" in line, line


def test_every_stage_is_in_the_battery():
    """A new stage in dvc.yaml must get its section into OWN_SECTION (and cases above)."""
    assert sorted(set(STAGES) - set(OWN_SECTION) - NO_PARAMS) == []
    assert [s for s in NO_PARAMS if s in STAGES and STAGES[s].get("params")] == []


def test_every_stage_reads_device_when_it_uses_torch():
    """Stages that run torch list `device` in dvc.yaml (prepare and planted are numpy only,
    headline copies JSON numbers; check_params depends on the whole params.yaml file)."""
    assert sorted(set(STAGES) - set(device_stages())) == ["check_params", "headline", "planted", "prepare"]


def test_float_in_exponent_form_is_a_number(project):
    """The control: unquoted 2e-1 is a float for DVC's YAML 1.2 loader and for ours, so prepare
    accepts it (PyYAML, YAML 1.1, would read the string "2e-1": the validator must not use it)."""
    original = (project / "params.yaml").read_text()
    assert "  val_fraction: 0.2" in original
    try:
        (project / "params.yaml").write_text(original.replace("  val_fraction: 0.2", "  val_fraction: 2e-1", 1))
        proc = subprocess.run(stage_command("prepare"), cwd=project, env=env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (project / "metrics/data.json").read_text().replace(" ", "").replace("\n", "") == \
            '{"test":200,"train":480,"val":120}'
    finally:
        (project / "params.yaml").write_text(original)
        for out in ("data/prepared", "metrics/data.json"):
            p = project / out
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def test_check_params_validates_every_section_without_importing_torch():
    """check_params reruns on every `dvc exp run -S ...`: it imports only torch-free modules
    (mnist_sae/settings.py, stages/_params.py; importing torch was ~2-3 s of its ~3 s). The
    committed params.yaml passes, and a bad value still stops it."""
    code = ("import sys\n"
            "from stages.check_params import check\n"
            "from stages._common import ParamError, read_params_file\n"
            "raw = read_params_file()\n"
            "check(raw)\n"
            "bad = {**raw, 'features': {**raw['features'], 'split': 'tets'}}\n"
            "try:\n"
            "    check(bad)\n"
            "except ParamError as e:\n"
            "    print(e)\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    error, torch_loaded = proc.stdout.strip().splitlines()
    assert "features.split" in error and "tets" in error, error
    assert torch_loaded == "False"
