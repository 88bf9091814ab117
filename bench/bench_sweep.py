"""The FFN sweep's wall time: the old way (points one after another, native kernels, threads from the
CPU affinity, as the DVC matrix stage ran them) vs the train_ffn stage's way (points in parallel
processes, one thread each, portable kernels), on the same points, interleaved and repeated.

    python bench/bench_sweep.py [--hidden 8192 8192 1024 1024] [--steps 600] [--repeats 3]

Each point is a fresh `python` process that trains the library's train_ffn for --steps steps at
batch 8 on bench_ffn's fake MNIST (MNIST's share of non-zero pixels: the CPU step's
sparse-input kernels take time by the non-zero pixels), like a
stage would: interpreter start and torch import are counted. Schemes:
- sequential-native: one process at a time, repro.portable false (no pin), torch threads = cores;
- sequential-portable: one at a time, pinned (1 thread): the pin's own cost;
- parallel-portable: `workers` processes at a time (default one per core), pinned: train_ffn now.
Rounds run the schemes in rotating order so a machine that gets busier or quieter affects all of
them alike; the table gives the median wall seconds and the spread (min-max) over rounds, and the
ratios of medians. Only the ratios mean anything on these shared machines. Tests never run this.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages._numerics import PORTABLE_ENV  # noqa: E402

POINT = """
import sys, time
portable = sys.argv[4] == "1"
if portable:
    from stages import _numerics  # the pin, as `python -m stages.train_ffn` does on import
    _numerics.pin(True)
import torch
from mnist_sae.ffn import FFN
from mnist_sae.ffn_train import train_ffn
import os
torch.set_num_threads(1 if portable else max(1, len(os.sched_getaffinity(0))))
torch.set_flush_denormal(True)
hidden, lr, steps = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
from bench.bench_ffn import fake_mnist
x_NI, y_N = fake_mnist(steps * 8)
x, y = torch.from_numpy(x_NI), torch.from_numpy(y_N)
gen = torch.Generator().manual_seed(0)
train_ffn(FFN(hidden, generator=gen), x, y, lr=lr, epochs=1, batch_size=8, generator=gen, progress=False)
"""


def point_env(portable: bool) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    e["PYTHONPATH"] = str(ROOT)
    return e


def run_point(hidden: int, steps: int, portable: bool) -> None:
    # stages/__init__.py pins on import only when told by params.yaml; the snippet imports
    # stages._numerics directly and pins itself, so run it from a folder without params.yaml
    cmd = [sys.executable, "-c", POINT, str(hidden), "1e-4", str(steps), "1" if portable else "0"]
    subprocess.run(cmd, env=point_env(portable), cwd="/", check=True)


def run_scheme(name: str, hidden: list[int], steps: int, workers: int) -> float:
    start = time.perf_counter()
    if name == "sequential-native":
        for h in hidden:
            run_point(h, steps, portable=False)
    elif name == "sequential-portable":
        for h in hidden:
            run_point(h, steps, portable=True)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda h: run_point(h, steps, portable=True), sorted(hidden, reverse=True)))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[8192, 8192, 1024, 1024], help="one entry per point")
    parser.add_argument("--steps", type=int, default=600, help="training steps per point")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each runs every scheme once)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    schemes = ["sequential-native", "sequential-portable", "parallel-portable"]
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, points {args.hidden}, "
          f"{args.steps} steps each, {args.workers} workers, load average {os.getloadavg()[0]:.1f}", flush=True)
    walls = {s: [] for s in schemes}
    for r in range(args.repeats):
        order = schemes[r % 3:] + schemes[:r % 3]
        for s in order:
            walls[s].append(run_scheme(s, args.hidden, args.steps, args.workers))
            print(f"  round {r + 1}: {s} {walls[s][-1]:.1f} s", flush=True)
    med = {s: statistics.median(v) for s, v in walls.items()}
    print("\n| scheme | median wall s | spread (min-max) s | sequential-native / scheme |")
    print("|---|---:|---:|---:|")
    for s in schemes:
        print(f"| {s} | {med[s]:.1f} | {min(walls[s]):.1f}-{max(walls[s]):.1f} | {med['sequential-native'] / med[s]:.2f}x |")
    speedup = med["sequential-native"] / med["parallel-portable"]
    print(f"\ngoal: parallel >= 1.8x faster than sequential ({speedup:.2f}x: {'met' if speedup >= 1.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
