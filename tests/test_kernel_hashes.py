"""scripts/kernel_hashes.py: per-kernel fingerprints, and --compare naming the kernel that differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kernel_hashes.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)


def test_compare_names_the_kernel_that_differs(tmp_path):
    ref = tmp_path / "ref.txt"
    first = run("--only", "vit_einsum", "--out", str(ref))
    assert first.returncode == 0, first.stderr
    lines = [line for line in ref.read_text().splitlines() if not line.startswith("#")]
    assert [line.split()[0] for line in lines] == ["vit_einsum_qkv", "vit_einsum_scores", "vit_einsum_attend",
                                                   "vit_einsum_out"]

    same = run("--only", "vit_einsum", "--compare", str(ref))
    assert same.returncode == 0, same.stdout + same.stderr  # the same machine: the same bits
    assert "0 of 4 kernels differ" in same.stdout

    name, h = lines[1].split()
    ref.write_text(ref.read_text().replace(f"{name} {h}", f"{name} {'0' * 12}"))
    differ = run("--only", "vit_einsum", "--compare", str(ref))
    assert differ.returncode == 1
    flagged = [line.split()[0] for line in differ.stdout.splitlines() if line.endswith("DIFFERS")]
    assert flagged == ["vit_einsum_scores"]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = run("--only", "vit_gelu", "--compare", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "nope.txt" in missing.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("vit_gelu\n")
    malformed = run("--only", "vit_gelu", "--compare", str(bad))
    assert malformed.returncode == 2 and "name md5" in malformed.stderr
    nothing = run("--only", "no_such_kernel")
    assert nothing.returncode == 2 and "no_such_kernel" in nothing.stderr
