"""Trust at scale, on the tiny synthetic pipeline and the real `dvc`:

- a stage SIGKILLed mid-run (train_ffn, then train_sae) leaves nothing that looks finished, and a
  plain `dvc repro` afterwards completes with the outputs of an uninterrupted run;
- `dvc repro -f` reproduces every output bit for bit (wall-clock files aside, by design);
- experiments queue (`dvc exp run --queue`) and run two at a time (`dvc queue start -j 2`);
- a DVC remote lets a fresh clone reuse finished stages (`dvc push --run-cache`, `dvc repro --pull`);
- every torch stage records the device it resolved `device: auto` to.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from ruamel.yaml import YAML

from conftest import ROOT, clone_run, commit_all, dvc, env, ran_stages, set_params, sh

# Outputs that carry wall-clock numbers by design: train_ffn's timing JSON (cache: false, kept out
# of the cached checkpoint folder for exactly this reason) and select_ffn's copies of the timings.
# Their md5s in dvc.lock differ between runs; they are compared with the timings removed.
WALL_CLOCK_JSON = re.compile(r"^metrics/ffn_points(/.*\.json)?$|^metrics/ffn_sweep\.json$")
WALL_CLOCK_KEYS = {"train_seconds", "steps_per_second"}
WALL_CLOCK_MD = {"metrics/ffn_sweep.md": "train s"}  # markdown table and its wall-clock column

DVC_YAML = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]


def lock_outs(project: Path, stage: str | None = None) -> dict[tuple[str, str], str]:
    """{(stage, out path): md5} from dvc.lock, for one stage or all."""
    stages = YAML(typ="safe", pure=True).load((project / "dvc.lock").read_text())["stages"]
    return {(name, o["path"]): o["md5"] for name, s in stages.items() if stage in (None, name)
            for o in s.get("outs", [])}


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def without_column(markdown: str, header: str) -> list[list[str]]:
    """Rows of a markdown file with the table column titled `header` dropped."""
    rows = [line.split("|") for line in markdown.splitlines()]
    col = next((r.index(c) for r in rows for c in r if c.strip() == header), None)
    assert col is not None, f"no column {header!r} in:\n{markdown}"
    return [r[:col] + r[col + 1:] if len(r) > col else r for r in rows]


def timings_removed(path: Path):
    """A wall-clock JSON file (or a folder of them) without its timing keys."""
    if path.is_dir():
        return {f.name: without_timings(json.loads(f.read_text())) for f in sorted(path.glob("*.json"))}
    return without_timings(json.loads(path.read_text()))


def assert_same_outputs(a: Path, b: Path, stage: str | None = None) -> None:
    """The outputs in dvc.lock of projects a and b are identical (wall-clock files: but for timings)."""
    outs_a, outs_b = lock_outs(a, stage), lock_outs(b, stage)
    assert sorted(outs_a) == sorted(outs_b)
    differ = []
    for key in sorted(outs_a):
        _, path = key
        if WALL_CLOCK_JSON.match(path):
            same = timings_removed(a / path) == timings_removed(b / path)
        elif path in WALL_CLOCK_MD:
            same = without_column((a / path).read_text(), WALL_CLOCK_MD[path]) == \
                without_column((b / path).read_text(), WALL_CLOCK_MD[path])
        else:
            same = outs_a[key] == outs_b[key]
        if not same:
            differ.append(f"{key}: {outs_a[key]} != {outs_b[key]}")
    assert not differ, "outputs differ between runs:\n" + "\n".join(differ)


def temp_names(project: Path) -> list[str]:
    """Leftovers of stages._common.atomic_path (`.tmp-*` next to an output)."""
    return sorted(str(p.relative_to(project)) for d in ("data", "metrics", "plots") if (project / d).exists()
                  for p in (project / d).rglob(".tmp-*"))


# --- interruption ---------------------------------------------------------------------------


class LiveRun:
    """`python -m dvc ARGS` in its own process group, its output collected as it comes."""

    def __init__(self, project: Path, *args: str):
        self.project = project
        self.proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=project, env=env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._buf = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self._buf += chunk

    @property
    def output(self) -> str:
        return self._buf.decode(errors="replace")

    def stage_processes(self, module: str) -> list[psutil.Process]:
        """The running `python -m stages.<module>` processes under this dvc."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for c in children:
            try:
                if f"stages.{module}" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE:
                    found.append(c)
            except psutil.NoSuchProcess:
                pass
        return found

    def wait_for(self, what: str, predicate, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"dvc exited ({self.proc.returncode}) before {what}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output[-4000:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        """SIGKILL the whole group: dvc, the shell it started and the stage (a crash, an OOM kill)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self._reader.join(timeout=60)


def without_check(lock) -> dict:
    """dvc.lock's stages (a path or the file's text) without the check_params entry."""
    text = lock.read_text() if isinstance(lock, Path) else lock
    stages = YAML(typ="safe", pure=True).load(text)["stages"]
    stages.pop("check_params", None)
    return stages


def interrupt_and_recover(pipeline_run: Path, tmp_path: Path, updates: dict, target: str, module: str,
                          running) -> tuple[Path, Path]:
    """Reference: `dvc repro target` uninterrupted. Interrupted: the same, SIGKILLed once
    running(project, live_run) says the stage is mid-run, then `dvc repro target` again."""
    ref = clone_run(pipeline_run, tmp_path / "reference")
    set_params(ref, updates)
    assert target in ran_stages(dvc(ref, "repro", target))

    project = clone_run(pipeline_run, tmp_path / "interrupted")
    set_params(project, updates)
    lock_before = (project / "dvc.lock").read_text()
    run = LiveRun(project, "repro", target)
    run.wait_for(f"{module} to be mid-run", lambda: run.stage_processes(module) and running(project, run))
    victims = run.stage_processes(module)
    assert victims, f"{module} finished before it could be killed; give it more work\n{run.output[-3000:]}"
    run.kill()
    psutil.wait_procs(victims, timeout=30)  # SIGKILLed; a large process takes a moment to exit
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in victims)
    # killed mid-run: DVC recorded nothing for the stage, and nothing of it looks finished
    # (check_params ran first and recorded the changed params.yaml: that entry is the only change)
    assert without_check(project / "dvc.lock") == without_check(lock_before)
    for (_, path) in lock_outs(project, target):
        if path == "data/ffn":  # persist: true; a point counts as finished by its key (stages/train_ffn.py)
            keys = {json.loads(f.read_text())["key"] for f in (project / path).glob("*/point.json")}
            assert keys <= {json.loads(f.read_text())["key"] for f in (pipeline_run / path).glob("*/point.json")}, \
                f"{path} holds a point trained with the new params after {target} was killed mid-run"
            continue
        if path == "metrics/ffn_points":  # persist: true too; a worker writes its timing only once trained
            continue
        assert not (project / path).exists(), f"{path} exists after {target} was killed mid-run"

    # what a user does next: the same command again. DVC's repo lock is an fcntl lock (gone with
    # the process); its rwlock file (.dvc/tmp/rwlock) still names the dead dvc's pid, which the next
    # run finds dead and removes itself ("... had been killed. Auto removed it from the lock file").
    proc = dvc(project, "repro", target)
    assert target in ran_stages(proc)
    assert "is busy" not in proc.stdout + proc.stderr
    return ref, project


def test_sigkill_train_ffn_then_repro_completes(pipeline_run, tmp_path):
    # 8 epochs instead of the tiny 1, so the kill lands mid-training even on a fast machine
    target = "train_ffn"
    # the sweep prints "train_ffn: train <point>" as it starts a worker; killed once a worker trains
    ref, project = interrupt_and_recover(pipeline_run, tmp_path, {"ffn.epochs": 8}, target, "train_ffn",
                                         lambda p, run: "train_ffn: train h16" in run.output
                                         and len(run.stage_processes("train_ffn")) >= 2)
    assert_same_outputs(ref, project, target)


def test_sigkill_train_sae_then_repro_completes(pipeline_run, tmp_path):
    if "train_sae" not in DVC_YAML:
        pytest.skip("no train_sae stage in dvc.yaml yet")
    # more epochs: train_sae only (calibrate does not read sae.epochs); killed once its atomic
    # output folder for the training curves exists, i.e. while it trains
    ref, project = interrupt_and_recover(pipeline_run, tmp_path, {"sae.epochs": 20}, "train_sae", "train_sae",
                                         lambda p, run: bool(list((p / "plots").glob(".tmp-train_sae-*"))))
    assert_same_outputs(ref, project, "train_sae")


def test_sigkill_inside_atomic_write_leaves_output_and_hashes_alone(pipeline_run, tmp_path):
    """The worst moment: killed between writing the temporary folder and renaming it. The old
    output stays as it was, and the leftover `.tmp-*` (inside data/ffn, a dependency of
    select_ffn) must not change any hash DVC computes: .dvcignore lists `.tmp-*`."""
    project = clone_run(pipeline_run, tmp_path / "p")
    out = "data/ffn/h16-lr0.01"
    before = sorted((f.relative_to(project / out), f.read_bytes()) for f in (project / out).rglob("*") if f.is_file())
    code = ("import os, signal\n"
            "from stages._common import atomic_path\n"
            f"with atomic_path({out!r}) as tmp:\n"
            "    tmp.mkdir()\n"
            "    (tmp / 'model.pt').write_bytes(b'half a checkpoint')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=env(), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    after = sorted((f.relative_to(project / out), f.read_bytes()) for f in (project / out).rglob("*") if f.is_file())
    assert after == before
    assert len(temp_names(project)) == 1
    status = dvc(project, "status")
    assert "up to date" in status.stdout, f"a leftover .tmp-* changed a hash:\n{status.stdout}"


# --- determinism ----------------------------------------------------------------------------


def test_forced_repro_is_bit_identical(pipeline_run, tmp_path):
    """`dvc repro -f` on a copy of the finished tiny run: every output hash in dvc.lock equal to
    the first run's (pipeline_run's repro is the first of the two runs)."""
    project = clone_run(pipeline_run, tmp_path / "p")
    proc = dvc(project, "repro", "-f")
    assert set(ran_stages(proc)) == {s for s, _ in lock_outs(pipeline_run)}
    assert_same_outputs(pipeline_run, project)
    assert temp_names(project) == []


# --- scale-out through DVC: the experiment queue and a remote -------------------------------


def queue_status(project: Path) -> str:
    return dvc(project, "queue", "status").stdout


def test_queue_runs_three_lambdas_two_at_a_time(pipeline_run, tmp_path):
    if "train_sae" not in DVC_YAML:
        pytest.skip("no train_sae stage in dvc.yaml yet")
    project = clone_run(pipeline_run, tmp_path / "p")
    lambdas = [0.05, 0.1, 0.2]
    for lam in lambdas:
        # target train_sae: each queued experiment reruns just that stage (upstream from the cache)
        dvc(project, "exp", "run", "--queue", "-S", f"sae.lambda={lam}", "train_sae")
    assert queue_status(project).count("Queued") == 3
    try:
        assert "Started '2' new experiments task queue workers" in dvc(project, "queue", "start", "-j", "2").stdout
        deadline = time.monotonic() + 600
        while True:
            status = queue_status(project)
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, f"queue did not finish:\n{status}"
            time.sleep(2)
        assert status.count("Success") == 3, status
    finally:
        dvc(project, "queue", "stop", check=False)
    exps = dvc(project, "exp", "show", "--json").stdout
    found = {}
    for rev in json.loads(exps):
        for exp in rev.get("experiments") or []:
            for r in exp["revs"]:
                params = r["data"]["params"]["params.yaml"]["data"]
                # train_sae.json is a plain output (only headline.json is a dvc metric), committed
                # in the experiment's own commit
                metrics = json.loads(sh(project, "git", "show", f"{r['rev']}:metrics/train_sae.json").stdout)
                found[params["sae"]["lambda"]] = metrics["lambda"]
    assert found == {lam: lam for lam in lambdas}
    # the workspace is untouched until one is applied
    assert YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())["sae"]["lambda"] is None


def test_remote_lets_a_fresh_clone_skip_every_stage(pipeline_run, tmp_path):
    a = clone_run(pipeline_run, tmp_path / "a")
    remote = tmp_path / "remote"
    dvc(a, "remote", "add", "-d", "shared", str(remote))
    commit_all(a, "shared remote")
    # A also tries float16 storage in collect and pushes right after that run: `--run-cache`
    # uploads the run records (.dvc/cache/runs) but not the outputs they name, which A's lock
    # names only until it goes back to its commit (DVC 3.67 dvc/repo/push.py; treeverse/dvc#10472)
    set_params(a, {"collect.dtype": "float16"})
    assert ran_stages(dvc(a, "repro", "collect")) == ["check_params", "collect"]  # params.yaml changed
    dvc(a, "push", "--run-cache")
    sh(a, "git", "reset", "-q", "--hard")
    dvc(a, "checkout")
    dvc(a, "push", "--run-cache")

    b = tmp_path / "b"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert not (b / "data").exists()
    proc = dvc(b, "repro", "--pull")
    assert ran_stages(proc) == [], proc.stdout
    assert "up to date" in dvc(b, "status").stdout
    assert_same_outputs(a, b)
    for _, path in lock_outs(b):
        assert (b / path).exists(), path

    # B asks for what A tried: the run-cache answers, the outputs come from the remote. (Only
    # stages whose outputs are all cached get this far: DVC keeps no run record for a stage with a
    # `cache: false` entry under outs, and never pushes `cache: false` metrics and plots, so such a
    # stage reruns here; see README, Scaling out.)
    set_params(b, {"collect.dtype": "float16"})
    proc = dvc(b, "repro", "--pull", "collect")
    # check_params (all outputs cached) may come from the run-cache too, or rerun in seconds
    assert set(ran_stages(proc)) <= {"check_params"}, proc.stdout
    assert "Stage 'collect' is cached - skipping run, checking out outputs" in proc.stdout
    assert np.load(b / "data/collected/train_acts.npy", mmap_mode="r").dtype == np.float16


# --- device ---------------------------------------------------------------------------------


def test_torch_stages_record_the_device(pipeline_run):
    """`device: auto` resolves to cuda where present, else cpu, and each torch stage's metrics
    JSON says which (collect and baselines have no metrics file: their outputs are data only)."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    params = YAML(typ="safe", pure=True).load((pipeline_run / "params.yaml").read_text())
    assert params["device"] == "auto"
    missing = []
    for name, stage in DVC_YAML.items():
        if "device" not in (stage.get("params") or []):
            continue
        # its metrics JSONs: plain cache: false outputs under metrics/ since only headline.json is
        # declared under `metrics:` (feature_report.json is a per-latent report, not a summary)
        paths = [next(iter(e)) if isinstance(e, dict) else e for e in (stage.get("outs") or []) + (stage.get("metrics") or [])]
        paths = [p for p in paths if p.startswith("metrics/") and not p.endswith((".md", "feature_report.json"))]
        for path in paths:
            pattern = re.sub(r"\$\{[^}]+\}", "*", path)
            files = sorted(pipeline_run.glob(pattern))
            assert files, f"{name}: no metrics file {pattern}"
            files = [g for f in files for g in (sorted(f.glob("*.json")) if f.is_dir() else [f])]
            for f in files:
                if json.loads(f.read_text()).get("device") != expected:
                    missing.append(f"{name}: {f.relative_to(pipeline_run)}")
    assert not missing, f"no \"device\": {expected!r} in:\n" + "\n".join(missing)
