"""The cost of the portable MKL branch: one FFN training step (784 -> H -> 10, batch 8, fused Adam)
under MKL_CBWR=COMPATIBLE,STRICT (the pin) vs AVX2,STRICT vs AUTO,STRICT, and the weight hash each gives.

    python bench/bench_numerics.py [--hidden 8192] [--steps 150] [--rounds 2]

Each measurement is a fresh process (MKL reads MKL_CBWR once, when it loads), the settings
interleaved round by round; the other pinned settings (ATen AVX2, MKL instruction ceiling AVX2,
one thread) are those of stages/_numerics.py. Prints ms/step per setting (median, min, max over
rounds), the ratio to COMPATIBLE, and the md5 of the trained weights: settings with one hash run the
same arithmetic on this CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

BRANCHES = ("COMPATIBLE,STRICT", "AVX2,STRICT", "AUTO,STRICT")

CHILD = r"""
import hashlib, sys, time
import torch
torch.set_num_threads(1)
H, steps = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
W1 = (torch.randn(784, H, generator=g) * 0.03).requires_grad_(); b1 = torch.zeros(H, requires_grad=True)
W2 = (torch.randn(H, 10, generator=g) * 0.03).requires_grad_(); b2 = torch.zeros(10, requires_grad=True)
opt = torch.optim.Adam([W1, b1, W2, b2], lr=1e-3, fused=True)
X = torch.rand(steps, 8, 784, generator=g); Y = torch.randint(0, 10, (steps, 8), generator=g)
t0 = time.perf_counter()
for i in range(steps):
    loss = torch.nn.functional.cross_entropy(torch.relu(X[i] @ W1 + b1) @ W2 + b2, Y[i])
    opt.zero_grad(); loss.backward(); opt.step()
ms = (time.perf_counter() - t0) / steps * 1000
print(ms, hashlib.md5(W1.detach().numpy().tobytes() + W2.detach().numpy().tobytes()).hexdigest()[:12])
"""


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1")
    times = {b: [] for b in BRANCHES}
    hashes = {b: set() for b in BRANCHES}
    for _ in range(args.rounds):
        for branch in BRANCHES:
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.hidden), str(args.steps)], check=True,
                                 capture_output=True, text=True, env=dict(base, MKL_CBWR=branch)).stdout.split()
            times[branch].append(float(out[0]))
            hashes[branch].add(out[1])
    ref = statistics.median(times[BRANCHES[0]])
    print(f"{cpu_name()}, hidden {args.hidden}, batch 8, {args.steps} steps x {args.rounds} rounds, interleaved")
    for branch in BRANCHES:
        t = times[branch]
        print(f"  MKL_CBWR={branch:18s} {statistics.median(t):7.2f} ms/step (min {min(t):.2f}, max {max(t):.2f})"
              f"  {statistics.median(t) / ref:.2f}x COMPATIBLE  weights {','.join(sorted(hashes[branch]))}")


if __name__ == "__main__":
    main()
