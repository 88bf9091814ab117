"""The streaming SAE trainer on a memmap cache vs the seed-003 loop vs the dense floor.

    python bench/bench_acts.py [--rows 100000] [--d 768] [--latents 4096] [--batch 2048]
                               [--steps 5] [--rounds 3] [--threads 2]

One float16 (rows, d) memmap in a temporary folder (random values: the cost does not depend on
them), a ReLU SAE d -> latents with L1 and AdamW at the given batch, three ways per step:

- ours: mnist_sae.sae_train.train_sae with mnist_sae.acts_fit.CacheBatches (rows of a seeded
  permutation gathered from the memmap in file order, widened, standardized; fused AdamW; the
  decoder rows renormalized every step), the path of the acts_sae stage;
- seed: the seed-003 notebook's loop: idx = np.random.randint(0, N, B), mm[idx].astype(float32),
  a torch ReLU SAE (x @ W_enc + b_enc, relu, @ W_dec + b_dec), MSE + l1 * sum |a|, AdamW
  (torch's default foreach implementation), no decoder renormalization;
- floor: the step's five matmuls alone on resident tensors (encode, decode, and the backward's
  grad of the latents, of W_dec and of W_enc), no data, no optimizer, no elementwise work.

The three run interleaved (the order rotating) for --rounds rounds of --steps steps; printed:
median ms/step and min-max over rounds, ours vs seed and ours vs floor. Not a test: timings are
never asserted.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_sae.acts import Activations  # noqa: E402
from mnist_sae.acts_fit import CacheBatches  # noqa: E402
from mnist_sae.sae import SAE, SAEConfig  # noqa: E402
from mnist_sae.sae_train import TrainSettings, train_sae  # noqa: E402

L1 = 1e-3
LR = 1e-3


def cpu_name() -> str:
    """lscpu's "Model name" (stages._common is not imported: it would pin the numerics)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def ours(acts: Activations, a: argparse.Namespace, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(arch="relu", d_in=a.d, n_latents=a.latents), generator=gen)
    rows_N = np.sort(np.random.default_rng(seed).choice(acts.n_rows, a.steps * a.batch, replace=False))
    source = CacheBatches(acts, rows_N, torch.zeros(a.d), torch.ones(a.d))
    settings = TrainSettings(lr=LR, epochs=1, batch_size=a.batch, optimizer="adamw", weight_decay=1e-2,
                             log_every=10**9)
    t0 = time.perf_counter()
    train_sae(sae, None, [L1], settings, gen, batch_source=source)
    return (time.perf_counter() - t0) / a.steps


def seed_loop(mm: np.ndarray, a: argparse.Namespace, seed: int) -> float:
    torch.manual_seed(seed)
    W_enc_DF = torch.nn.Parameter(torch.randn(a.d, a.latents) / a.d ** 0.5)
    b_enc_F = torch.nn.Parameter(torch.zeros(a.latents))
    W_dec_FD = torch.nn.Parameter(torch.randn(a.latents, a.d) / a.latents ** 0.5)
    b_dec_D = torch.nn.Parameter(torch.zeros(a.d))
    opt = torch.optim.AdamW([W_enc_DF, b_enc_F, W_dec_FD, b_dec_D], lr=LR)
    np.random.seed(seed)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        idx = np.random.randint(0, mm.shape[0], a.batch)
        x_BD = torch.from_numpy(mm[idx].astype(np.float32))
        a_BF = torch.relu(x_BD @ W_enc_DF + b_enc_F)
        x_hat_BD = a_BF @ W_dec_FD + b_dec_D
        loss = (x_hat_BD - x_BD).pow(2).mean() + L1 * a_BF.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / a.steps


def floor(a: argparse.Namespace, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x_BD, W_enc_DF = torch.randn(a.batch, a.d, generator=g), torch.randn(a.d, a.latents, generator=g)
    W_dec_FD, g_BD = torch.randn(a.latents, a.d, generator=g), torch.randn(a.batch, a.d, generator=g)
    u_BF = torch.empty(a.batch, a.latents)
    x_hat_BD, g_BF = torch.empty(a.batch, a.d), torch.empty(a.batch, a.latents)
    gW_dec_FD, gW_enc_DF = torch.empty(a.latents, a.d), torch.empty(a.d, a.latents)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        torch.mm(x_BD, W_enc_DF, out=u_BF)  # encode
        torch.mm(u_BF, W_dec_FD, out=x_hat_BD)  # decode
        torch.mm(g_BD, W_dec_FD.T, out=g_BF)  # grad of the latents
        torch.mm(u_BF.T, g_BD, out=gW_dec_FD)  # grad of W_dec
        torch.mm(x_BD.T, g_BF, out=gW_enc_DF)  # grad of W_enc
    return (time.perf_counter() - t0) / a.steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="steps per contestant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    if a.steps * a.batch > a.rows:
        parser.error(f"--steps x --batch = {a.steps * a.batch} rows > --rows {a.rows}")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        mm = np.lib.format.open_memmap(Path(tmp) / "acts.npy", mode="w+", dtype=np.float16, shape=(a.rows, a.d))
        rng = np.random.default_rng(0)
        for i in range(0, a.rows, 65536):
            mm[i:i + 65536] = rng.standard_normal((min(65536, a.rows - i), a.d), dtype=np.float32)
        mm.flush()
        mm = np.load(Path(tmp) / "acts.npy", mmap_mode="r")
        acts = Activations(mm, str(Path(tmp) / "acts.npy"))
        runs = {"ours": lambda s: ours(acts, a, s), "seed": lambda s: seed_loop(mm, a, s), "floor": lambda s: floor(a, s)}
        for name, fn in runs.items():  # warm-up: allocator, first-call and page-cache costs
            fn(100)
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(a.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(runs[name](r))
    print(f"CPU: {cpu_name()}; {a.threads} thread(s); torch {torch.__version__}")
    print(f"float16 memmap {a.rows} x {a.d}; ReLU SAE {a.d} -> {a.latents}, L1, AdamW, batch {a.batch}; "
          f"{a.rounds} rounds x {a.steps} steps, interleaved")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:6s} {1e3 * med[name]:9.1f} ms/step  (min {1e3 * min(v):.1f}, max {1e3 * max(v):.1f})")
    print(f"ours / seed time: {med['ours'] / med['seed']:.2f}x  (seed / ours speed-up {med['seed'] / med['ours']:.2f}x)")
    print(f"ours / floor time: {med['ours'] / med['floor']:.2f}x")


if __name__ == "__main__":
    main()
