"""scripts/compare_run.py: the workspace's headline against a commit's, verdicts from the spreads."""

import json
import subprocess
import sys

from conftest import ROOT


def compare_run(cwd, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_run.py"), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_compare_run_verdicts(tmp_path):
    """Two hand-made headline files: the committed one in git, the other in the workspace."""
    committed = {"sae": {"val": {"l0": 1.0, "mse_norm": 0.20, "mse_norm_ci95": 0.01, "acc_drop_pp": 1.5,
                                 "acc_drop_pp_ci95": 0.1, "dead_fraction": 0.5}},
                 "truth": {"margin": 0.11, "margin_std": 0.02, "best_sae": {"method": "sae_relu"}},
                 "ffn": {"test_acc": 0.975}, "acts": {"vit_test_acc": 0.97}}
    now = {"sae": {"val": {"l0": 1.0, "mse_norm": 0.215, "mse_norm_ci95": 0.01, "acc_drop_pp": 1.8,
                           "acc_drop_pp_ci95": 0.1, "dead_fraction": 0.6}},
           "truth": {"margin": 0.14, "margin_std": 0.01, "best_sae": {"method": "sae_topk"}},
           "ffn": {"test_acc": 0.976}, "baselines": {"k1": {"sae": {"mse_norm": 0.1}}}}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/headline.json").write_text(json.dumps(committed))
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"], cwd=tmp_path, check=True)
    (tmp_path / "metrics/headline.json").write_text(json.dumps(now))
    (tmp_path / "spread.json").write_text(json.dumps({"ffn.test_acc": 0.002}))

    proc = compare_run(tmp_path, "HEAD", "--spreads", "spread.json")
    assert proc.returncode == 0, proc.stderr
    verdict = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in proc.stdout.splitlines()
               if line.startswith("| ") and "---" not in line}
    assert verdict == {
        "sae.val.l0": "same bits",
        "sae.val.mse_norm": "within spread",        # |0.015| <= 0.01 + 0.01
        "sae.val.acc_drop_pp": "OUTSIDE spread",    # |0.3| > 0.1 + 0.1
        "sae.val.dead_fraction": "no spread known",
        "truth.margin": "within spread",            # |0.03| <= 2 x max(0.02, 0.01)
        "truth.best_sae.method": "changed",
        "ffn.test_acc": "within spread",            # the measured-spread file: |0.001| <= 0.002
        "acts.vit_test_acc": "only committed",
        "baselines.k1.sae.mse_norm": "only now",
        "key": "verdict",
    }
    # without the spreads file the FFN accuracy has no known spread
    assert "no spread known" in [l for l in compare_run(tmp_path).stdout.splitlines() if "ffn.test_acc" in l][0]

    for args, fragment in ((["nosuchrev"],  "nosuchrev:metrics/headline.json: not in git"),
                           (["--spreads", "missing.json"], "missing.json: not found")):
        proc = compare_run(tmp_path, *args)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert fragment in proc.stderr, proc.stderr
    (tmp_path / "metrics/headline.json").write_text("{")
    proc = compare_run(tmp_path)
    assert proc.returncode == 2 and "metrics/headline.json: not valid JSON" in proc.stderr
