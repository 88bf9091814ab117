"""Shared fixtures: a copy of the project in a temporary git repo, tiny synthetic params, real dvc.

`tiny_project(tmp_path)` makes a fresh copy; `pipeline_run` (session scope) is one copy on which
`dvc repro` has already run, for tests that only read its outputs. Tests that change params or
outputs copy `pipeline_run` with `clone_run(...)` so they start from a finished pipeline whose
cache they share by copy (fast), never touching the shared one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["mnist_sae", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"]

# Tiny params for the synthetic pipeline. Keys are dotted paths into params.yaml; every key must
# already exist there (a typo fails loudly). Each stage's owner keeps its section's entries small.
TINY = {
    "data.source": "synthetic",
    "data.synthetic_train": 600,
    "data.synthetic_test": 200,
    "ffn.sweep.hidden": [16],
    "ffn.sweep.lr": [1.0e-2],
    "ffn.epochs": 1,
    "ffn.batch_size": 8,
    "collect.batch_size": 256,
}
# keys of later stages, applied only when that section exists in params.yaml
TINY_OPTIONAL = {
    "sae.epochs": 1,
    "sae.seeds": 2,
    "sae.batch_size": 16,
    "sae.calibration.num": 4,
    "sae.calibration.refine": 1,
    "sae.log_every": 5,
    "planted.n_features": 8,
    "planted.d": 4,
    "planted.n_rows": 400,
    "planted.seeds": [0, 1],
    "truth.l0": [2],
    "truth.n_latents": 8,
    "truth.epochs": 1,
    "truth.lambda_num": 3,
    "truth.refine": 0,
    "truth.kmeans_max_iter": 10,
    "acts.n_examples": 40,
    "acts.model.d_model": 16,
    "acts.model.n_heads": 2,
    "acts.model.d_mlp": 32,
    "acts.model.batch_size": 32,
    "acts.sae.n_latents": 32,
    "acts.sae.target_l0": 4.0,
    "acts.sae.epochs": 1,
    "acts.sae.batch_size": 64,
    "acts.sae.topk.aux_k": 8,
    "acts.sae.log_every": 5,
    "acts.sae.calibration.num": 3,
    "acts.sae.calibration.refine": 0,
    "acts.sae.calibration.batch_size": 64,
    "acts.eval.probe_n_train": 200,
    "acts.eval.top_latents": 8,
}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@example.org",
    "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@example.org",
    "DVC_NO_ANALYTICS": "1",
}


def env() -> dict:
    e = dict(os.environ, **GIT_ENV)
    e.pop("PYTHONPATH", None)
    return e


def sh(cwd: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in cwd; on failure show its output in the assertion message."""
    proc = subprocess.run(list(args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)


def set_params(project: Path, updates: dict) -> None:
    """Set dotted keys in project/params.yaml (the key must exist: typos fail)."""
    yaml = YAML()  # round-trip: keeps comments and layout
    path = project / "params.yaml"
    doc = yaml.load(path.read_text())
    for dotted, value in updates.items():
        node = doc
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        assert last in node, f"params.yaml has no key {dotted}"
        if isinstance(value, list):
            # flow style, as params.yaml writes lists: ruamel re-dumps a block list that carries an
            # end-of-line comment, once emptied later (test_params), as invalid YAML
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        node[last] = value
    with open(path, "w") as f:
        yaml.dump(doc, f)


def read_params(project: Path) -> dict:
    return YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    """Names of the stages a `dvc repro` / `dvc exp run` executed (not those it skipped)."""
    return sorted(line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '"))


def make_project(dest: Path, updates: dict | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    sh(dest, "git", "init", "-q", "-b", "main")
    dvc(dest, "init", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "config", "core.autostage", "true")
    # the page template with vega inlined (scripts/plots_page.py), as .dvc/config names it here
    shutil.copy2(ROOT / ".dvc" / "plots.html", dest / ".dvc" / "plots.html")
    dvc(dest, "config", "plots.html_template", "plots.html")
    if (ROOT / ".dvc" / "plots").is_dir():  # custom vega templates (dvc.yaml's top-level plots use them)
        shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    params = read_params(dest)
    tiny = dict(TINY)
    for key, value in TINY_OPTIONAL.items():
        node = params
        for part in key.split(".")[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and key.split(".")[-1] in node:
            tiny[key] = value
    set_params(dest, {**tiny, **(updates or {})})
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-q", "-m", "tiny project")
    return dest


def commit_all(project: Path, message: str) -> None:
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture
def one_thread():
    """Tiny matmuls at batch 8: one thread is ~10x faster than two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """One tiny synthetic project after a full `dvc repro`, committed; read-only for tests."""
    project = make_project(tmp_path_factory.mktemp("pipeline") / "project")
    dvc(project, "repro")
    commit_all(project, "tiny run")
    return project


def clone_run(src: Path, dest: Path) -> Path:
    """A private copy of a finished project (git history, workspace and DVC cache)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest
