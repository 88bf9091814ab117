"""train_ffn: the whole FFN sweep (hidden x lr) in one stage, its points trained in parallel processes.

    python -m stages.train_ffn PREP_DIR OUT_DIR TIMING_DIR          # the sweep
    python -m stages.train_ffn --point H LR PREP_DIR POINT_DIR TIMING_JSON   # one point (a worker)

Why one stage and not a DVC matrix: `dvc repro` runs stages one after another, and a sweep point
at batch 8 keeps one core busy but gains almost nothing from a second thread (issue 11: two
points at once on one thread each took 58 s, the same two one after the other with 2 threads
133 s, bit-identical weights). So this stage runs the points in `ffn.sweep.workers` processes
(0 = one per core), one thread each, the widest points first.

"A new lr trains only the new point" is kept by a per-point key: OUT_DIR is a DVC output with
`persist: true` (DVC leaves it in place when the stage reruns), and each point folder's
point.json records the sha256 of everything its bits depend on: hidden, lr, the ffn params that
reach training, the device, the numerical path (stages/_numerics.py), the torch version, the
training code (this file, stages/_ffn_params.py, mnist_sae/ffn.py, mnist_sae/ffn_train.py,
mnist_sae/sparse_input.py, mnist_sae/pixels.py, mnist_sae/adam.py, stages/_numerics.py), the
Numba version and the
train split's bytes. A point whose key matches is kept as it is; every other point is trained;
folders of points no longer in the grid are removed, so OUT_DIR always holds exactly the grid.

Each point folder gets model.pt (config + state dict) and point.json (deterministic: no
timings); TIMING_DIR/<point>.json gets the wall-clock seconds (also `persist`, so kept points
keep their times), apart from the cached outputs so those stay bit-reproducible.
"""

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numba
import torch

from mnist_sae.ffn import FFN
from mnist_sae.ffn_train import train_ffn
from stages import _numerics
from stages._common import (DataError, atomic_path, load_device, load_params, load_prepared, read_params_file, run,
                            setup_torch, write_json)
from stages._ffn_params import FFNParams

ROOT = Path(__file__).resolve().parents[1]
CODE = ["stages/train_ffn.py", "stages/_ffn_params.py", "stages/_numerics.py", "mnist_sae/ffn.py", "mnist_sae/ffn_train.py",
        "mnist_sae/sparse_input.py", "mnist_sae/pixels.py", "mnist_sae/adam.py"]


def point_name(hidden: int, lr: float) -> str:
    return f"h{hidden}-lr{lr}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def input_digests(prep_dir: str) -> dict:
    """sha256 of the training code and of the train split: the same for every point, hashed once."""
    return {"code": {c: _sha256_file(ROOT / c) for c in CODE},
            "train": {f: _sha256_file(Path(prep_dir) / f) for f in ("x_train.npy", "y_train.npy")}}


def point_key(hidden: int, lr: float, p: FFNParams, device: str, digests: dict) -> str:
    """sha256 of everything a point's trained bits depend on (see the module docstring); digests
    from input_digests."""
    numerics = _numerics.describe()
    what = {"hidden": hidden, "lr": lr, "type": p.type, "batch_size": p.batch_size, "epochs": p.epochs,
            "seed": p.seed, "device": device, "portable": numerics["portable"], "torch": numerics["torch"],
            "numba": numba.__version__,
            "cpu": None if numerics["portable"] else numerics["cpu_capability"], **digests}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def train_point(hidden: int, lr: float, key: str, prep_dir: str, point_dir: str, timing_json: str) -> None:
    """One sweep point, in this process: model.pt and point.json into point_dir, seconds into timing_json."""
    raw = read_params_file()
    p = load_params(FFNParams, "ffn", raw)
    device = load_device(raw)
    setup_torch(p.seed)
    x_NI, y_N = load_prepared(prep_dir, "train")
    gen = torch.Generator().manual_seed(p.seed)
    model = FFN(hidden, p.type, generator=gen).to(device)
    name = point_name(hidden, lr)
    steps_total = p.epochs * (x_NI.shape[0] // p.batch_size)
    report_every = max(1, steps_total // 10)
    start = time.perf_counter()

    def on_step(step, _loss):
        if step % report_every == 0:
            rate = step / (time.perf_counter() - start)
            print(f"  {name}: {step}/{steps_total} steps ({rate:.0f} steps/s)", file=sys.stderr, flush=True)

    history = train_ffn(model, torch.from_numpy(x_NI), torch.from_numpy(y_N), lr=lr, epochs=p.epochs,
                        batch_size=p.batch_size, generator=gen, progress=False, on_step=on_step)
    seconds = time.perf_counter() - start
    point = {"hidden": hidden, "lr": lr, "type": p.type, "diverged": history.diverged, "key": key,
             "steps": history.steps, "train_loss_per_epoch": [x if math.isfinite(x) else None for x in history.loss_per_epoch]}
    with atomic_path(point_dir) as tmp:
        tmp.mkdir()
        torch.save({"config": model.config(), "state": {k: v.cpu() for k, v in model.state_dict().items()}},
                   tmp / "model.pt")
        write_json(tmp / "point.json", point)
    write_json(timing_json, {"train_seconds": seconds, "steps_per_second": history.steps / seconds, "device": device,
                             "threads": torch.get_num_threads()})


def _existing_key(point_dir: Path) -> str | None:
    try:
        return json.loads((point_dir / "point.json").read_text()).get("key") if (point_dir / "model.pt").exists() else None
    except (OSError, ValueError):
        return None


def sweep(prep_dir: str, out_dir: str, timing_dir: str) -> None:
    raw = read_params_file()
    p = load_params(FFNParams, "ffn", raw)
    device = load_device(raw)
    setup_torch(p.seed)
    load_prepared(prep_dir, "train")  # a missing or malformed split fails here, before any worker starts
    out, timings = Path(out_dir), Path(timing_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings.mkdir(parents=True, exist_ok=True)

    points = sorted({(h, lr) for h in p.sweep.hidden for lr in p.sweep.lr}, key=lambda hl: (-hl[0], hl[1]))
    names = {point_name(h, lr) for h, lr in points}
    for stale in [d for d in out.iterdir() if d.name not in names]:  # older grids, leftovers of a kill
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for stale in [f for f in timings.iterdir() if f.stem not in names]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    todo = []
    digests = input_digests(prep_dir)
    for h, lr in points:
        key, name = point_key(h, lr, p, device, digests), point_name(h, lr)
        if _existing_key(out / name) == key:
            print(f"train_ffn: keep {name} (key {key[:12]} unchanged)", flush=True)
        else:
            todo.append((h, lr, key))
    workers = p.sweep.workers or len(os.sched_getaffinity(0))
    workers = max(1, min(workers, len(todo) or 1))
    print(f"train_ffn: {len(todo)} of {len(points)} points to train, {workers} at a time", flush=True)
    env = dict(os.environ)
    if not _numerics.portable():  # share the cores between the workers
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))

    def launch(job):
        h, lr, key = job
        name = point_name(h, lr)
        print(f"train_ffn: train {name}", flush=True)
        cmd = [sys.executable, "-m", "stages.train_ffn", "--point", str(h), repr(lr), key, prep_dir,
               str(out / name), str(timings / f"{name}.json")]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=os.getcwd(), stdout=subprocess.PIPE, text=True)
        return name, proc.returncode, proc.stdout, time.perf_counter() - start

    failed = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, rc, stdout, seconds in pool.map(launch, todo):
            sys.stdout.write(stdout)
            print(f"train_ffn: {name} {'done' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s", flush=True)
            if rc != 0:
                failed.append(name)
    if failed:
        raise DataError(f"train_ffn: points {', '.join(failed)} failed (their errors are above); "
                        f"finished points are kept and reused by the next run")


def main():
    if "--point" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--point", nargs=2, metavar=("HIDDEN", "LR"), required=True)
        for name in ("key", "prep_dir", "point_dir", "timing_json"):
            parser.add_argument(name)
        args = parser.parse_args()
        train_point(int(args.point[0]), float(args.point[1]), args.key, args.prep_dir, args.point_dir, args.timing_json)
        return
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "out_dir", "timing_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    sweep(args.prep_dir, args.out_dir, args.timing_dir)


if __name__ == "__main__":
    run(main)
