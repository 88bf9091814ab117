"""FFN training steps per second at batch 8: ours vs the common way vs the memory-traffic floor.

    python bench/bench_ffn.py [--hidden 1024 8192] [--seconds 6] [--rounds 3] [--threads N] [--device cpu]

All numbers come from one run on one machine, so only the ratios mean anything:
- ours: `mnist_sae.ffn_train.train_ffn` itself (the pipeline's loop): the whole train split as one
  float tensor in memory, batches indexed from a seeded permutation, the sparse-input step on
  CPU (fused Adam on other devices).
- reference, written the common way: a torch `Dataset` whose __getitem__ converts one uint8
  image to float, a `DataLoader(batch_size=8, shuffle=True)` collating the batch, an nn.Linear
  MLP and `torch.optim.Adam` with its default implementation.
- floor: the bytes one training step must move through memory at the very least, divided by
  the copy bandwidth measured in this run (torch `dst.copy_(src)`, read + write counted) on
  buffers as large as the step's working set (p, g, exp_avg, exp_avg_sq: 16 n bytes), so that a
  model whose state fits in a large L3 cache is held to cache bandwidth, not DRAM's (this box
  reports 300 MB of L3: the 8192 model's 104 MB of Adam state fits). The DRAM copy bandwidth
  (512 MB buffers) is printed too. Byte model, n = parameter count, float32 (4 bytes):
      forward reads every weight once                       4 n
      backward writes every gradient once                   4 n
      Adam reads p, g, exp_avg, exp_avg_sq, writes p, m, v  28 n
      total                                                 36 n bytes per step
  (activations at batch 8 are ~B * H floats: negligible against n = 785 H + 10 H + 10). Ratio
  "ours / floor" = ours' step time over the floor's: 1.0 would be perfect for a step that
  materializes the gradient. Ours on CPU does not (mnist_sae/sparse_input.py: the pixel weights'
  gradient is folded into Adam's pass, 24 bytes per weight, and the forward reads only the rows
  of non-zero pixels), so it can go below 1.0.
- the images have MNIST's share of non-zero pixels (19%); the sparse kernels' time depends on it.

Each hidden width runs `--rounds` rounds of ours, reference and the bandwidth measurement in turn;
the table gives the median ratio and its range over rounds.

Process-wide settings are those of the pipeline's stages (stages._common.setup_torch): threads
from the CPU affinity (override with --threads), flush denormals; both contestants share them.
On a busy machine two threads spin-waiting for each other can make small steps 10-50x slower:
read the load average printed first. Tests never run this.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist_sae.ffn import FFN  # noqa: E402
from mnist_sae.ffn_train import train_ffn  # noqa: E402

BATCH = 8
BYTES_PER_PARAM_STEP = 36  # see the byte model in the docstring


MNIST_NONZERO = 0.19  # share of non-zero pixels in MNIST's train split (149 of 784 per image)


def fake_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, 784] with MNIST's share of non-zero pixels, and labels [n]. The sparsity
    matters: on CPU the pipeline's loop skips zero pixels (mnist_sae/sparse_input.py)."""
    rng = np.random.default_rng(seed)
    x_NI = rng.integers(1, 256, (n, 784), dtype=np.uint8) * (rng.random((n, 784)) < MNIST_NONZERO)
    return x_NI.astype(np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_ours(hidden: int, seconds: float, device: str) -> tuple[float, int]:
    """Steps per second of the library's train_ffn; a short calibration run sizes the timed one."""
    def run(steps: int) -> float:
        x_NI, y_N = fake_mnist(steps * BATCH)
        gen = torch.Generator().manual_seed(0)
        model = FFN(hidden, generator=gen).to(device)
        stamps = []

        def on_step(step, loss):  # timestamps from the 3rd step on: skip Adam's state allocation
            if step == 3 or step == steps:
                sync(device)
                stamps.append(time.perf_counter())

        train_ffn(model, torch.from_numpy(x_NI), torch.from_numpy(y_N), lr=1e-4, epochs=1, batch_size=BATCH,
                  generator=gen, progress=False, on_step=on_step)
        return (steps - 3) / (stamps[1] - stamps[0])

    rate = run(24)
    steps = int(min(20000, max(100, seconds * rate)))
    return run(steps), steps


class UInt8MNIST(Dataset):
    """The common way: one example per __getitem__, converted to float on access."""

    def __init__(self, x_NI: np.ndarray, y_N: np.ndarray):
        self.x_NI, self.y_N = x_NI, y_N

    def __len__(self) -> int:
        return len(self.y_N)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x_NI[i]).float() / 255.0, int(self.y_N[i])


def bench_reference(hidden: int, seconds: float, device: str) -> tuple[float, int]:
    """Steps per second of DataLoader + per-item conversion + nn.Linear MLP + default Adam."""
    x_NI, y_N = fake_mnist(60000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(UInt8MNIST(x_NI, y_N), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    steps, start, warmup = 0, None, 3
    for x_BI, y_B in loader:
        x_BI, y_B = x_BI.to(device), y_B.to(device)
        loss = F.cross_entropy(model(x_BI), y_B)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps == warmup:
            sync(device)
            start = time.perf_counter()
        elif steps > warmup and steps % 10 == 0:
            sync(device)
            if time.perf_counter() - start > seconds:
                break
    sync(device)
    return (steps - warmup) / (time.perf_counter() - start), steps - warmup


def copy_bandwidth(nbytes: int, device: str, repeats: int = 7) -> float:
    """Bytes per second of dst.copy_(src) with src and dst nbytes / 2 each (read + write), best
    of `repeats`."""
    n = max(1, nbytes // 8)
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    dst.copy_(src)  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best


def n_params(hidden: int) -> int:
    return 784 * hidden + hidden + hidden * 10 + 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPU affinity, as the stages use)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table gives median and range")
    args = parser.parse_args()

    # the pipeline's process settings (stages._common.setup_torch), for both contestants
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {args.device}, batch {BATCH}, load average {os.getloadavg()[0]:.1f} (a busy machine skews all rows)")
    dram = copy_bandwidth(2 * 512 * 2**20, args.device)
    print(f"DRAM copy bandwidth: {dram / 1e9:.2f} GB/s (512 MB -> 512 MB, read + write)")
    print(f"floor byte model: {BYTES_PER_PARAM_STEP} bytes per parameter per step (forward weight read 4 + "
          "gradient write 4 + Adam read p,g,m,v / write p,m,v 28), at the copy bandwidth of a 16 n-byte working set\n")

    rows = []
    for hidden in args.hidden:
        n = n_params(hidden)
        rounds = {"ours": [], "ref": [], "floor": []}
        for r in range(args.rounds):  # interleaved: ours, reference, bandwidth, in every round
            ours, ours_steps = bench_ours(hidden, args.seconds, args.device)
            ref, ref_steps = bench_reference(hidden, args.seconds, args.device)
            bw = copy_bandwidth(16 * n, args.device)
            for key, value in (("ours", ours), ("ref", ref), ("floor", bw / (BYTES_PER_PARAM_STEP * n))):
                rounds[key].append(value)
            print(f"  hidden {hidden} round {r + 1}: ours {ours:.1f} steps/s ({ours_steps} steps), reference "
                  f"{ref:.1f} steps/s ({ref_steps} steps), copy bandwidth at {16 * n / 1e6:.0f} MB {bw / 1e9:.1f} GB/s",
                  flush=True)
        speedups = [o / r for o, r in zip(rounds["ours"], rounds["ref"])]
        overs = [f / o for f, o in zip(rounds["floor"], rounds["ours"])]
        rows.append((hidden, n, *(float(np.median(rounds[k])) for k in ("ours", "ref", "floor")), speedups, overs))
    print()
    print(f"median over {args.rounds} interleaved rounds [min-max]")
    print("| hidden | params | ours steps/s | reference steps/s | floor steps/s | ours / reference | ours / floor (time) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")

    def spread(values):
        return f"{np.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"

    for hidden, n, ours, ref, floor, speedups, overs in rows:
        print(f"| {hidden} | {n:,} | {ours:.1f} | {ref:.1f} | {floor:.1f} | {spread(speedups)} | {spread(overs)} |")
    big = [r for r in rows if r[0] == 8192]
    if big:
        speedup, over = float(np.median(big[0][-2])), float(np.median(big[0][-1]))
        print(f"\ngoal on hidden 8192: >= 4x the reference ({speedup:.1f}x: {'met' if speedup >= 4 else 'NOT met'}), "
              f"within 2x of the floor ({over:.2f}x: {'met' if over <= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
