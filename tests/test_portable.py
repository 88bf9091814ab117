"""Other machines simulated on this one (issue 12): the tiny pipeline under other native settings.

ATen picks its vector kernels by CPU (ATEN_CPU_CAPABILITY forces the choice), MKL its code path by
CPU (MKL_ENABLE_INSTRUCTIONS caps it), and the thread count can change a reduction's order. Set
outside the pipeline, these stand in for an AVX2-only machine, an AVX-512 one, or one with more
cores. With repro.portable true every run must give the committed-style hashes; with false the
same settings must give other hashes, so this test can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML

from stages._numerics import PORTABLE_ENV
from tests.conftest import ROOT, clone_run, env, set_params

# every stage up to train_sae: MKL GEMMs, ATen's elementwise and reduction kernels, fused Adam,
# the SAE calibration grid
TARGET = "train_sae"
STAGES = ["train_ffn", "select_ffn", "collect", "calibrate", "train_sae"]
# outputs that carry wall-clock training times by design (README, Reliability)
WALL_CLOCK = {"metrics/ffn_points", "metrics/ffn_sweep.json", "metrics/ffn_sweep.md"}
HAS_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


def native_env(**settings: str) -> dict:
    """The test process's environment without any pin (importing stages pinned it), plus settings."""
    e = env()
    for key in PORTABLE_ENV:
        e.pop(key, None)
    e.update(settings)
    return e


def repro_under(project, settings: dict) -> dict[str, str]:
    """`dvc repro -f train_sae` (and all upstream) under settings; {out path: md5} of STAGES."""
    shutil.rmtree(project / "data/ffn")  # persist: true; its per-point key would keep the old points
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", TARGET], cwd=project, env=native_env(**settings),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return lock_hashes(project)


def lock_hashes(project) -> dict[str, str]:
    lock = YAML(typ="safe", pure=True).load((project / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for name in STAGES for o in lock[name].get("outs", []) if o["path"] not in WALL_CLOCK}


@pytest.mark.parametrize("settings", [
    {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512", "MKL_CBWR": "AUTO"},
], ids=["no-simd-2-threads", "avx512-mkl-avx512"])
def test_portable_hashes_match_under_other_native_settings(pipeline_run, tmp_path, settings):
    project = clone_run(pipeline_run, tmp_path / "p")
    assert repro_under(project, settings) == lock_hashes(pipeline_run)


def test_native_hashes_differ_between_kernel_choices(pipeline_run, tmp_path):
    """The control: without the pin, the kernel choice shows in the bits (so the test above can fail)."""
    project = clone_run(pipeline_run, tmp_path / "p")
    set_params(project, {"repro.portable": False})
    slow = repro_under(project, {"ATEN_CPU_CAPABILITY": "default"})
    fast = repro_under(project, {"ATEN_CPU_CAPABILITY": "avx512" if HAS_AVX512 else "avx2"})
    assert slow != fast


def test_setup_torch_sets_deterministic_kernels_without_importing_the_compiler():
    # setup_torch sets ATen's deterministic flag directly: torch.use_deterministic_algorithms would
    # also import torch._inductor (~1.4 s per stage) for a torch.compile setting no stage uses
    code = ("import sys, torch; from stages._common import setup_torch; assert not torch.are_deterministic_algorithms_enabled(); "
            "setup_torch(0); print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.split() == ["True", "False", "False"]


def test_a_stage_ends_without_teardown_and_loses_no_output(tmp_path):
    """stages._common.run ends a finished stage with os._exit(0) (README, The 10-minute study): what
    it printed (buffered, through a pipe) still arrives, its stage time is recorded, and the exit
    status is 0; a ParamError still exits 2 with its one line."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import sys\n"
        "from stages._common import ParamError, run\n"
        "def main():\n"
        "    print('lambda 0.12')\n"  # through a pipe stdout is block-buffered: only the flush before os._exit writes it
        "    sys.stderr.write('done\\n')\n"
        "    if sys.argv[1] == 'bad':\n"
        "        raise ParamError('sae.lambda: must be > 0')\n"
        "run(main)\n")
    (tmp_path / ".dvc").mkdir()
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, str(script), "ok"], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "lambda 0.12\n" and ok.stderr == "done\n"
    records = (tmp_path / ".dvc/tmp/stage_times.jsonl").read_text().splitlines()
    assert len(records) == 1 and '"stage": "stage"' in records[0]
    bad = subprocess.run([sys.executable, str(script), "bad"], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.endswith("error: sae.lambda: must be > 0\n")
