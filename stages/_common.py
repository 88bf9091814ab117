"""What every stage shares: params loading and validation, seeding, device choice, atomic writes.

This is the only place that knows about params.yaml. The library (mnist_sae/) never reads it.

A stage's params are a frozen dataclass. `load_params(Cls, "section")` reads params.yaml with
the same YAML 1.2 loader DVC uses (ruamel), then checks every key against the dataclass:
unknown key, missing key, wrong type (a string where a number belongs included) and out-of-range
values each stop the stage with one line naming the key, the value and what is allowed, exit 2.
Range checks live in each field's metadata: `field(metadata=rule(lambda v: v > 0, "> 0"))`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

from mnist_sae.errors import DataError  # noqa: F401  (stages catch it through run())

PARAMS_FILE = "params.yaml"


class ParamError(ValueError):
    """A bad value in params.yaml; the message names the key, the value and what is allowed."""


def rule(check, allowed: str) -> dict:
    """Field metadata: `check(value) -> bool` and the human text of what is allowed."""
    return {"check": check, "allowed": allowed}


def choice(*options) -> dict:
    return rule(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


POSITIVE = rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = rule(lambda v: v >= 0, ">= 0")
NON_EMPTY_POSITIVE = rule(lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of numbers > 0")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _check_type(key: str, value, tp):
    """Return value converted to tp (int -> float only) or raise ParamError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, "only Optional[X] unions are supported"
        try:
            return _check_type(key, value, inner[0])
        except ParamError:
            raise ParamError(f"{key} = {value!r}: expected {_type_name(inner[0])} or null") from None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamError(f"{key} = {value!r}: expected a list of {_type_name(item_tp)}")
        return [_check_type(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (a string; write numbers unquoted with a decimal point, e.g. 1.0e-3)"
            raise ParamError(f"{key} = {value!r}: expected a number{hint}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamError(f"{key} = {value!r}: expected a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (a string)" if isinstance(value, str) else ""
            raise ParamError(f"{key} = {value!r}: expected an integer{hint}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamError(f"{key} = {value!r}: expected a string")
        return value
    raise AssertionError(f"unsupported params type {tp} for {key}")


def nearest(prefix: str, key, known) -> str:
    """" (did you mean <prefix>.<closest known key>?)" when one is close enough, else ""."""
    match = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + '.' if prefix else ''}{match[0]}?)" if match else ""


def _parse(cls, raw, prefix: str):
    if not isinstance(raw, dict):
        raise ParamError(f"{prefix} = {raw!r}: expected a mapping with keys {sorted(f.name for f in dataclasses.fields(cls))}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ParamError(f"{prefix}.{key}: unknown key{nearest(prefix, key, fields)}; "
                             f"allowed keys are {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            raise ParamError(f"{key}: missing")
        value = _check_type(key, raw[name], hints[name])
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ParamError(f"{key} = {raw[name]!r}: allowed {f.metadata['allowed']}")
        values[name] = value
    obj = cls(**values)
    post = getattr(obj, "validate", None)
    if post is not None:
        post(prefix)  # cross-field checks, raising ParamError
    return obj


def read_params_file(path: str = PARAMS_FILE) -> dict:
    from ruamel.yaml import YAML  # the loader DVC itself uses: YAML 1.2, so 1e-3 is a float

    try:
        with open(path) as f:
            raw = YAML(typ="safe", pure=True).load(f)
    except FileNotFoundError:
        raise ParamError(f"{path}: not found; run from the project root") from None
    except Exception as e:  # a YAML syntax error: name the file, keep it to one line
        raise ParamError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    return raw


def load_params(cls, section: str, raw: dict | None = None, *, partial: bool = False):
    """Parse params.yaml[section] (a dotted path, e.g. "sae.calibration") into cls.

    partial: read only cls's keys of a section another stage owns and fully validates (so that a
    reader's dvc.yaml lists exactly the keys it uses, e.g. evaluate's sae.target_l0)."""
    raw = read_params_file() if raw is None else raw
    node = raw
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamError(f"{section}: missing from {PARAMS_FILE}")
        node = node[part]
    if partial and isinstance(node, dict):
        node = {k: v for k, v in node.items() if k in {f.name for f in dataclasses.fields(cls)}}
    return _parse(cls, node, section)


def check_device(raw: dict) -> str:
    """Top-level `device: auto | cpu | cuda`, checked without torch (check_params); load_device
    resolves it."""
    if "device" not in raw:
        raise ParamError(f"device: missing from {PARAMS_FILE}; allowed auto, cpu, cuda")
    value = raw["device"]
    if value not in ("auto", "cpu", "cuda"):
        raise ParamError(f"device = {value!r}: allowed one of 'auto', 'cpu', 'cuda'")
    return value


def load_device(raw: dict | None = None) -> str:
    """Top-level `device: auto | cpu | cuda`, resolved to "cpu" or "cuda" (cuda where none is
    available: an error naming the key)."""
    value = check_device(read_params_file() if raw is None else raw)
    import torch

    if value == "cuda" and not torch.cuda.is_available():
        raise ParamError("device = 'cuda': no CUDA device is available here; use auto or cpu")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return value


STAGE_TIMES = Path(".dvc/tmp/stage_times.jsonl")  # DVC's own untracked scratch folder


def run(main) -> None:
    """Run a stage's main(); bad params or bad data -> one line on stderr, exit status 2.

    A stage that finishes appends its wall time to .dvc/tmp/stage_times.jsonl (where the project
    has a .dvc folder): `python scripts/stage_times.py` prints the table of the last run.

    Then the process ends with os._exit(0) once stdout and stderr are flushed, skipping the
    interpreter's teardown: with torch, numba and matplotlib loaded, that teardown (the final
    garbage collections over every module's objects, then freeing them) took 0.6-0.9 s of each
    stage's wall time on the AMD EPYC VM of the README, ~5 s of a `dvc exp run -S sae.lambda=...`
    (`python -c "import stages.evaluate"` 3.2-3.6 s, the same ending in os._exit 2.3-2.5 s).
    Nothing is lost by skipping it: every output is written and closed (atomic writes) before
    main() returns, and the forked pools are joined; an error still exits through sys.exit.
    """
    start, started = time.perf_counter(), time.time()
    try:
        main()
    except (ParamError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    record_stage_time(time.perf_counter() - start, started)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def record_stage_time(seconds: float, started: float) -> None:
    if not STAGE_TIMES.parent.parent.is_dir():
        return
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    stage = spec.name.removeprefix("stages.") if spec is not None else Path(sys.argv[0]).stem
    record = {"stage": stage, "worker": "--point" in sys.argv, "seconds": round(seconds, 3), "started": round(started, 3),
              "argv": sys.argv[1:], "cores": len(os.sched_getaffinity(0)), "cpu": cpu_name()}
    STAGE_TIMES.parent.mkdir(parents=True, exist_ok=True)
    with open(STAGE_TIMES, "a") as f:  # one short line per write: appends from parallel workers stay whole
        f.write(json.dumps(record) + "\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class ReproParams:
    # pin the numerical path so the bits match on any AVX2 x86-64 machine (stages/_numerics.py)
    portable: bool


def setup_torch(seed: int) -> None:
    """Seeds, deterministic kernels, and threads from the numerical path (stages/_numerics.py).

    Checks params `repro` too: every torch stage calls this, and the pin itself (done when the
    stages package loads, before torch) reads repro.portable without the strict check.
    """
    load_params(ReproParams, "repro")
    import torch

    from stages import _numerics

    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms(True) is this ATen flag plus torch._inductor.config's
    # `deterministic` (for torch.compile, which no stage uses); setting that one imports the whole
    # compiler stack, ~1.4 s at every stage's start (measured with python -X importtime)
    torch._C._set_deterministic_algorithms(True, warn_only=False)
    torch.set_num_threads(_numerics.n_threads())
    # Adam's moments decay into denormal floats on units that stop getting gradient; flushing
    # them was measured 29 -> 9 ms/step on the 8192 FFN on one machine, and no difference on
    # another (issue 11); kept: flush-to-zero behaves the same on every x86-64 CPU
    torch.set_flush_denormal(True)
    # cuBLAS needs this for deterministic matmuls on CUDA; harmless on CPU
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# --- atomic outputs -------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success rename it into place (file or dir).

    An interrupted stage leaves only a hidden `.tmp-*` name, never something that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path):
    """Checkpoints are plain state dicts of tensors and numbers: weights_only=True always."""
    import torch

    if not Path(path).exists():
        raise DataError(f"{path}: not found; run the upstream stage (dvc repro)")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_figure(path, fig) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        # fixed metadata so the PNG bytes depend only on the picture (no timestamp, no version)
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def save_figures(figures, workers: int) -> None:
    """save_figure(path, make()) for each (path, make) of `figures`, in `workers` forked processes
    (mnist_sae.forked; `workers` from cpu_workers(device)). Drawing is most of what a report stage
    does after a new sae.lambda (compare: 5.0 of 6.7 s for its three figures, 12-panel histograms
    and tight layouts); each figure is drawn and saved by one worker, so its PNG bytes do not
    depend on `workers`."""
    from mnist_sae.forked import map_forked

    map_forked(lambda job: save_figure(job[0], job[1]()), figures, workers)


def load_prepared(prep_dir, split: str):
    """(x_NI uint8 [N, 784], labels_N uint8 [N]) of one split of the prepare stage, read into memory.

    MNIST's splits are small (47 MB for train), and training indexes random rows, so the arrays
    are copied out of the memmap once instead of paging on every batch.
    """
    import numpy as np

    paths = [Path(prep_dir) / f"{k}_{split}.npy" for k in ("x", "y")]
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: not found; run `dvc repro prepare`")
    x_NI, labels_N = (np.load(p, mmap_mode="r") for p in paths)
    if x_NI.dtype != np.uint8 or x_NI.ndim != 2 or x_NI.shape[1] != 784 or labels_N.shape != (x_NI.shape[0],):
        raise DataError(f"{paths[0]}: expected uint8 [N, 784] with labels [N], got {x_NI.dtype} {x_NI.shape}, {labels_N.shape}")
    return np.array(x_NI), np.array(labels_N)
