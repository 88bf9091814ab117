"""Lambda calibration: the batched grid equals its points trained one at a time, calibration hits
a target L0 on easy data, and the calibrate / train_sae stages run (and refuse bad params)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from mnist_sae.sae import SAE, SAEConfig
from mnist_sae.sae_train import TrainSettings, calibrate, hard_l0_G, lambda_grid, train_grid, train_sae
from stages._common import ParamError, read_params_file
from stages._sae_params import load_sae_params

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def easy_data(n: int, gen: torch.Generator, d: int = 8, n_atoms: int = 12) -> torch.Tensor:
    """Each example is one of n_atoms fixed unit directions times a magnitude in [2, 4], plus a
    little noise: a dictionary exists that explains every example with one latent."""
    atoms_AD = torch.randn(n_atoms, d, generator=torch.Generator().manual_seed(123))
    atoms_AD = atoms_AD / atoms_AD.norm(dim=1, keepdim=True)
    idx_N = torch.randint(0, n_atoms, (n,), generator=gen)
    return atoms_AD[idx_N] * (1 + torch.rand(n, 1, generator=gen)) * 2 + 0.05 * torch.randn(n, d, generator=gen)


def test_lambda_grid_is_geometric():
    grid = lambda_grid(1e-3, 1.0, 4)
    assert grid == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert lambda_grid(0.5, 2.0, 1) == [0.5]


@pytest.mark.parametrize("arch,ste", [("jumprelu", "sigmoid"), ("jumprelu", "rectangle"), ("relu", "sigmoid")])
def test_batched_grid_equals_one_at_a_time(arch, ste):
    gen = torch.Generator().manual_seed(0)
    z_train, z_val = easy_data(480, gen), easy_data(200, gen)
    cfg = SAEConfig(arch=arch, ste=ste, d_in=8, n_latents=16, bandwidth=0.5)
    settings = TrainSettings(lr=1e-2, epochs=2, batch_size=8)
    lambdas = [0.01, 0.1, 1.0]
    batched_G = train_grid(cfg, z_train, z_val, lambdas, settings, seed=3)
    single_G = torch.cat([train_grid(cfg, z_train, z_val, [lam], settings, seed=3) for lam in lambdas])
    assert torch.allclose(batched_G, single_G, atol=1e-9)
    assert len(set(batched_G.tolist())) == 3  # the lambdas really differ in effect
    # and the weights themselves, not just the L0s
    stacked = SAE(cfg, n_models=3, generator=torch.Generator().manual_seed(3))
    train_sae(stacked, z_train, lambdas, settings, torch.Generator().manual_seed(4))
    for g, lam in enumerate(lambdas):
        one = SAE(cfg, n_models=1, generator=torch.Generator().manual_seed(3))
        train_sae(one, z_train, [lam], settings, torch.Generator().manual_seed(4))
        for name, p in one.state_dict().items():
            assert torch.allclose(p[0], stacked.state_dict()[name][g], atol=1e-5), name


@pytest.mark.parametrize("target", [1.0, 2.0])
def test_calibration_reaches_target_on_easy_data(target):
    gen = torch.Generator().manual_seed(0)
    z_train, z_val = easy_data(1600, gen), easy_data(400, gen)
    cfg = SAEConfig(d_in=8, n_latents=16)
    settings = TrainSettings(lr=1e-2, epochs=1, batch_size=8)
    cal = calibrate(cfg, z_train, z_val, target, lambda_grid(1e-2, 10.0, 7), 4, settings, seed=0)
    assert cal.bracketed
    assert abs(cal.l0 - target) / target <= 0.1
    assert [src for _, _, src in cal.points].count("refine") == 4
    # the reported L0 is what an SAE trained at the chosen lambda really has (same seed)
    assert train_grid(cfg, z_train, z_val, [cal.lam], settings, seed=0).item() == pytest.approx(cal.l0)


def test_calibration_reports_target_outside_grid():
    gen = torch.Generator().manual_seed(0)
    z_train, z_val = easy_data(400, gen), easy_data(100, gen)
    cal = calibrate(SAEConfig(d_in=8, n_latents=16), z_train, z_val, 0.01, [1e-4, 1e-3], 3,
                    TrainSettings(lr=1e-2, epochs=1, batch_size=8), seed=0)
    assert not cal.bracketed and cal.lam == 1e-3 and len(cal.points) == 2  # no bisection outside the grid


# --- params --------------------------------------------------------------------------------------


def set_dotted(section: dict, changes: dict) -> None:
    """Set keys of a params section in place; "topk.k" reaches into the nested sae.topk."""
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = section
        for part in parents:
            node = node[part]
        node[last] = value


def sae_raw(**changes) -> dict:
    raw = read_params_file(ROOT / "params.yaml")
    set_dotted(raw["sae"], changes)
    return raw


def test_default_params_load():
    p = load_sae_params(read_params_file(ROOT / "params.yaml"))
    assert p.lam is None and p.calibration.num >= 2


@pytest.mark.parametrize("changes,message", [
    ({"target_l0": 40.0}, "sae.target_l0 = 40.0: must be <= n_latents = 32"),
    ({"lambda": "1e-3"}, "sae.lambda = '1e-3': expected"),
    ({"lambda": -1.0}, "sae.lambda = -1.0: allowed > 0"),
    ({"arch": "gated"}, "sae.arch = 'gated': allowed one of"),
    ({"lam": 0.1}, "sae.lam: unknown key"),
    ({"arch": "topk", "topk.k": 33}, "sae.topk.k = 33: must be <= n_latents"),
    ({"topk.aux_k": 33}, "sae.topk.aux_k = 33: must be <= n_latents"),
    ({"jumprelu.ste": "tanh"}, "sae.jumprelu.ste = 'tanh': allowed one of"),
    ({"tau": 0.2}, "sae.tau: unknown key (did you mean sae.jumprelu.tau?)"),
    ({"aux_k": 16}, "sae.aux_k: unknown key (did you mean sae.topk.aux_k?)"),
    ({"topk.tau": 0.2}, "sae.topk.tau: unknown key"),
])
def test_bad_params_name_the_key(changes, message):
    with pytest.raises(ParamError) as err:
        load_sae_params(sae_raw(**changes))
    assert message in str(err.value)


# --- the stages, run as dvc runs them ------------------------------------------------------------


def write_collected(d: Path, n: dict) -> None:
    """A tiny collect-stage folder at the logit site (D = 10), normalized."""
    rng = np.random.default_rng(0)
    pattern_OO = rng.normal(size=(10, 10)).astype(np.float32) * 3
    d.mkdir(parents=True)
    for split, size in n.items():
        labels_N = rng.integers(0, 10, size)
        logits_NO = (pattern_OO[labels_N] + rng.normal(size=(size, 10)) * 0.5).astype(np.float32)
        for name, arr in (("acts", logits_NO), ("logits", logits_NO), ("labels", labels_N.astype(np.uint8))):
            np.save(d / f"{split}_{name}.npy", arr)
        if split == "train":
            np.save(d / "mean_D.npy", logits_NO.mean(0))
            np.save(d / "std_D.npy", logits_NO.std(0))
    (d / "info.json").write_text(json.dumps({"site": "logits", "d": 10, "normalize": True, "n_hidden": 16}))


def stage_project(tmp_path: Path, **sae_changes) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    yaml = YAML()
    doc = yaml.load((ROOT / "params.yaml").read_text())
    set_dotted(doc["sae"], {"epochs": 1, "batch_size": 16, "log_every": 10, **sae_changes})
    doc["sae"]["calibration"].update({"num": 4, "refine": 1, "batch_size": 16})
    doc["device"] = "cpu"
    with open(tmp_path / "params.yaml", "w") as f:
        yaml.dump(doc, f)
    write_collected(tmp_path / "data" / "collected", {"train": 400, "val": 100, "test": 100})
    return tmp_path


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


CAL = ("stages.calibrate", "data/collected", "metrics/calibration.json", "plots/calibration.csv")
TRAIN = ("stages.train_sae", "data/collected", "metrics/calibration.json", "data/sae/sae.pt", "metrics/train_sae.json",
         "plots/train_sae")


def test_stages_calibrate_and_train_sae(tmp_path):
    project = stage_project(tmp_path, kl_coef=0.5)
    proc = run_stage(project, *CAL)
    assert proc.returncode == 0, proc.stderr
    cal = json.loads((project / "metrics/calibration.json").read_text())
    rows = (project / "plots/calibration.csv").read_text().splitlines()
    assert rows[0] == "lambda,log10_lambda,l0_val,source" and len(rows) == 1 + 4 + (1 if cal["bracketed"] else 0)
    proc = run_stage(project, *TRAIN)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((project / "metrics/train_sae.json").read_text())
    assert out["lambda"] == cal["lambda"] and out["lambda_source"] == "calibration"
    assert out["l0_val"] == pytest.approx(1.0)  # theta_shift on by default: val L0 meets the target
    ckpt = torch.load(project / "data/sae/sae.pt", weights_only=True)
    sae = SAE.from_checkpoint(ckpt["sae"])
    assert ckpt["lambda"] == cal["lambda"] and ckpt["site"] == "logits" and sae.cfg.n_latents == 32
    curves = sorted(p.name for p in (project / "plots/train_sae").iterdir())
    assert curves == ["kl.tsv", "l0.tsv", "mse.tsv", "sparsity.tsv", "total.tsv"]
    assert (project / "plots/train_sae/mse.tsv").read_text().splitlines()[:2][0] == "step\tmse"


def test_calibration_reads_no_topk_knob(tmp_path):
    """dvc.yaml lists no sae.topk key for calibrate: the jumprelu grid never runs AuxK, so other
    TopK knobs give the same bytes."""
    outs = []
    for name, topk in (("default", {}), ("changed", {"topk.k": 3, "topk.aux_k": 4, "topk.aux_coef": 0.5,
                                                     "topk.dead_steps": 2})):
        project = stage_project(tmp_path / name, **topk)
        proc = run_stage(project, *CAL)
        assert proc.returncode == 0, proc.stderr
        outs.append([(project / f).read_bytes() for f in ("metrics/calibration.json", "plots/calibration.csv")])
    assert outs[0] == outs[1]


def test_train_sae_uses_params_lambda_and_bad_params_write_nothing(tmp_path):
    project = stage_project(tmp_path, **{"lambda": 0.05, "jumprelu.theta_shift": False})
    proc = run_stage(project, *TRAIN)  # no calibration.json needed when sae.lambda is a number
    assert proc.returncode == 0, proc.stderr
    out = json.loads((project / "metrics/train_sae.json").read_text())
    assert out["lambda"] == 0.05 and out["lambda_source"] == "params"
    ckpt = torch.load(project / "data/sae/sae.pt", weights_only=True)
    assert ckpt["theta_shift"] == [0.0] * len(ckpt["seeds"])  # theta_shift false: no seed shifted

    bad = stage_project(tmp_path / "bad", target_l0=64.0)
    for stage in (CAL, TRAIN):
        proc = run_stage(bad, *stage)
        assert proc.returncode == 2 and proc.stderr.strip() == "error: sae.target_l0 = 64.0: must be <= n_latents = 32"
    assert not (bad / "metrics").exists() and not (bad / "plots").exists() and not (bad / "data/sae").exists()
