"""Every stage's dvc.yaml deps name every project file its command imports.

A module a stage imports but does not list would change the stage's outputs without DVC
noticing (a second `dvc repro` would say "up to date" on stale results). The check imports each
stage's module in a fresh interpreter and compares the project files Python loaded with the
stage's deps. A package __init__.py that holds only a docstring is exempt: it cannot change an
output, and listing it would rerun every stage when its text is edited.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

LOADED = ("import json, sys, importlib; importlib.import_module(sys.argv[1]); "
          "print(json.dumps(sorted(f for m in list(sys.modules.values()) if (f := getattr(m, '__file__', None)))))")


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def imported_project_files(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", LOADED, module], cwd=ROOT, capture_output=True, text=True, check=True)
    files = (Path(f).resolve() for f in json.loads(out.stdout.splitlines()[-1]) if Path(f).is_absolute())
    return sorted(str(f.relative_to(ROOT)) for f in files if f.is_relative_to(ROOT))


def stage_module(cmd: str) -> str:
    words = cmd.split()
    return words[words.index("-m") + 1]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_every_module_it_imports(stage):
    spec = STAGES[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    missing = [f for f in imported_project_files(stage_module(spec["cmd"]))
               if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
               and not (f.endswith("__init__.py") and _docstring_only(ROOT / f))]
    assert not missing, f"dvc.yaml stage {stage}: add to deps {missing}"


def test_the_check_sees_a_missing_dep():
    """The comparison itself can fail: collect imports mnist_sae/space.py through mnist_sae.collect."""
    assert "mnist_sae/space.py" in imported_project_files("stages.collect")
