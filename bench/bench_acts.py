"""The streaming SAE trainer on a memmap cache vs the seed-003 loop vs the dense floor, and TopK's
sparse path against the seed loop at equal quality.

    python bench/bench_acts.py [--rows 100000] [--d 768] [--latents 4096] [--batch 2048]
                               [--steps 5] [--rounds 3] [--threads 2] [--k 64] [--ks 32,64,128]
                               [--l1s 1e-3,3e-3,1e-2]
                               [--quality-steps 100] [--features 4096] [--held 8192]

One float16 (rows, d) memmap in a temporary folder (random values: the cost does not depend on
them), an SAE d -> latents at the given batch with AdamW, six ways per step:

- ours: mnist_sae.sae_train.train_sae with mnist_sae.acts_fit.CacheBatches (rows of a seeded
  permutation gathered from the memmap in file order, widened, standardized; fused AdamW; the
  decoder rows renormalized every step), the path of the acts_sae stage, ReLU + L1;
- seed: the seed-003 notebook's loop: idx = np.random.randint(0, N, B), mm[idx].astype(float32),
  a torch ReLU SAE (x @ W_enc + b_enc, relu, @ W_dec + b_dec), MSE + l1 * sum |a|, AdamW
  (torch's default foreach implementation), no decoder renormalization;
- floor: the step's five matmuls alone on resident tensors (encode, decode, and the backward's
  grad of the latents, of W_dec and of W_enc), no data, no optimizer, no elementwise work;
- topk: ours with a TopK SAE (k active latents, AuxK), dense (the default path);
- sparse: the same with TrainSettings.sparse_topk: the decoder and both weight gradients touch
  only the k active latents of each row (mnist_sae.sae: SAE.sparse_forward);
- bf16: sparse with TrainSettings.select_bf16: the encoder matmul that chooses the k latents in
  bfloat16 (AMX / AVX-512 BF16 where the CPU has them), the chosen pre-activations in float32.

They run interleaved (the order rotating) for --rounds rounds of --steps steps; printed: median
ms/step and min-max over rounds, and the per-round ratios (seed time / other time, in the same
round) as median and min-max.

Quality first (skip with --quality-steps 0): a planted cache (mnist_sae.planted.generate, d wide,
--features true directions, Zipf firing, true L0 about 21), scaled to a mean per-dimension
variance of 1 and stored as float16 like the seed's; the seed loop at each L1 coefficient of
--l1s and sparse TopK at each k of --ks (float32, and with the bf16 choice) each see
--quality-steps x --batch training rows (the seed draws them with replacement, ours takes each
once) and are scored on --held other rows: L0 (mean non-zero latents per row) and normalized MSE
(sum of squared errors / sum of squared deviations from the held-out mean: the fraction of
variance unexplained). "Equal quality": ours' L0 <= the seed's and normalized MSE <= 1.02 x the
seed's; printed per seed point: the smallest k that has it. The speed arms use --k.
Not a test: timings are never asserted.
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
from mnist_sae.planted import PlantedSpec, generate  # noqa: E402
from mnist_sae.sae import SAE, SAEConfig  # noqa: E402
from mnist_sae.sae_train import TrainSettings, train_sae  # noqa: E402
from mnist_sae.space import InputSpace  # noqa: E402

L1 = 1e-3
LR = 1e-3


def cpu_name() -> str:
    """lscpu's "Model name" (stages._common is not imported: it would pin the numerics)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def ours(acts: Activations, a: argparse.Namespace, seed: int, arch: str = "relu", sparse: bool = False,
         rows_N: np.ndarray | None = None, mean_D: torch.Tensor | None = None, k: int | None = None,
         bf16: bool = False) -> tuple[float, SAE]:
    """(seconds per step, the SAE): train_sae on rows_N of the cache (default: a.steps x a.batch
    random rows), one epoch, AdamW; TopK with k (default a.k) active latents."""
    gen = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(arch=arch, d_in=a.d, n_latents=a.latents, k=(k or a.k) if arch == "topk" else 1)
    sae = SAE(cfg, generator=gen)
    if rows_N is None:
        rows_N = np.sort(np.random.default_rng(seed).choice(acts.n_rows, a.steps * a.batch, replace=False))
    mean_D = torch.zeros(a.d) if mean_D is None else mean_D
    source = CacheBatches(acts, rows_N, InputSpace(mean_D, torch.ones(a.d), True))  # z = x - mean_D
    settings = TrainSettings(lr=LR, epochs=1, batch_size=a.batch, optimizer="adamw", weight_decay=1e-2,
                             log_every=10**9, sparse_topk=sparse, select_bf16=bf16)
    t0 = time.perf_counter()
    train_sae(sae, None, [L1 if arch == "relu" else 0.0], settings, gen, batch_source=source)
    return (time.perf_counter() - t0) / (len(rows_N) // a.batch), sae


def seed_loop(mm: np.ndarray, a: argparse.Namespace, seed: int, steps: int | None = None, l1: float = L1):
    """(seconds per step, (W_enc_DF, b_enc_F, W_dec_FD, b_dec_D)): the seed-003 loop for `steps`
    steps (default a.steps) on rows drawn from all of mm, L1 coefficient l1."""
    steps = a.steps if steps is None else steps
    torch.manual_seed(seed)
    W_enc_DF = torch.nn.Parameter(torch.randn(a.d, a.latents) / a.d ** 0.5)
    b_enc_F = torch.nn.Parameter(torch.zeros(a.latents))
    W_dec_FD = torch.nn.Parameter(torch.randn(a.latents, a.d) / a.latents ** 0.5)
    b_dec_D = torch.nn.Parameter(torch.zeros(a.d))
    opt = torch.optim.AdamW([W_enc_DF, b_enc_F, W_dec_FD, b_dec_D], lr=LR)
    np.random.seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = np.random.randint(0, mm.shape[0], a.batch)
        x_BD = torch.from_numpy(mm[idx].astype(np.float32))
        a_BF = torch.relu(x_BD @ W_enc_DF + b_enc_F)
        x_hat_BD = a_BF @ W_dec_FD + b_dec_D
        loss = (x_hat_BD - x_BD).pow(2).mean() + l1 * a_BF.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps, (W_enc_DF, b_enc_F, W_dec_FD, b_dec_D)


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


@torch.no_grad()
def score(x_ND: torch.Tensor, encode_decode) -> tuple[float, float]:
    """(L0, normalized MSE) on held-out rows: mean non-zeros per row, and sum (x_hat - x)^2 over
    sum (x - mean x)^2 (the fraction of variance unexplained)."""
    nz, err = 0.0, 0.0
    for i in range(0, x_ND.shape[0], 2048):
        x_BD = x_ND[i:i + 2048]
        x_hat_BD, a_BF = encode_decode(x_BD)
        nz += float((a_BF != 0).sum())
        err += float((x_hat_BD.double() - x_BD.double()).square().sum())
    return nz / x_ND.shape[0], err / float((x_ND.double() - x_ND.double().mean(0)).square().sum())


def quality(tmp: Path, a: argparse.Namespace) -> dict:
    """{("seed", l1) or ("ours", k, bf16): (held-out L0, normalized MSE, s/step)}: the seed loop at
    each L1 coefficient and sparse TopK at each k, on a planted cache (module docstring)."""
    spec = PlantedSpec(n_features=a.features, d=a.d, p_min=5e-3, p_max=0.1)
    n_train = a.quality_steps * a.batch
    x_ND = generate(spec, n_train + a.held, seed=0, x_path=tmp / "planted32.npy").x_ND
    # scaled to a mean per-dimension variance of 1 (raw, it is ~0.04: the seed's L1 1e-3 then
    # outweighs the MSE and the seed loop learns to output the mean)
    scale = float(1 / np.sqrt(np.asarray(x_ND[:65536], dtype=np.float64).var(0).mean()))
    mm = np.lib.format.open_memmap(tmp / "planted.npy", mode="w+", dtype=np.float16, shape=(n_train, a.d))
    for i in range(0, n_train, 65536):
        mm[i:i + 65536] = scale * x_ND[i:min(i + 65536, n_train)]
    mm.flush()
    mm = np.load(tmp / "planted.npy", mmap_mode="r")
    held_ND = torch.from_numpy((scale * x_ND[n_train:]).astype(np.float16).astype(np.float32))  # as stored
    del x_ND
    (tmp / "planted32.npy").unlink()
    out = {}
    for l1 in a.l1s:
        t_seed, (W_enc_DF, b_enc_F, W_dec_FD, b_dec_D) = seed_loop(mm, a, 0, steps=a.quality_steps, l1=l1)

        def seed_fwd(x_BD):
            a_BF = torch.relu(x_BD @ W_enc_DF + b_enc_F)
            return a_BF @ W_dec_FD + b_dec_D, a_BF

        out[("seed", l1)] = (*score(held_ND, seed_fwd), t_seed)
    acts = Activations(mm, str(tmp / "planted.npy"))
    mean_D = torch.from_numpy(np.asarray(mm[: min(n_train, 65536)], dtype=np.float32).mean(0))
    for k in a.ks:
        for bf16 in (False, True):
            t_ours, sae = ours(acts, a, 0, arch="topk", sparse=True, rows_N=np.arange(n_train), mean_D=mean_D, k=k,
                               bf16=bf16)

            def ours_fwd(x_BD):
                z_hat_GBD, a_GBF = sae(x_BD - mean_D)
                return z_hat_GBD[0] + mean_D, a_GBF[0]

            out[("ours", k, bf16)] = (*score(held_ND, ours_fwd), t_ours)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="steps per contestant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=64, help="TopK's k in the speed arms")
    parser.add_argument("--l1s", default="1e-3,3e-3,1e-2", help="the seed's L1 coefficients in the quality run")
    parser.add_argument("--ks", default="32,64,128", help="the k values the quality run tries")
    parser.add_argument("--quality-steps", type=int, default=100, help="training steps of the quality run (0: skip it)")
    parser.add_argument("--features", type=int, default=4096, help="planted true features of the quality cache")
    parser.add_argument("--held", type=int, default=8192, help="held-out rows of the quality cache")
    a = parser.parse_args()
    if a.steps * a.batch > a.rows:
        parser.error(f"--steps x --batch = {a.steps * a.batch} rows > --rows {a.rows}")
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_name()}; {a.threads} thread(s); torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if a.quality_steps:
            a.ks_arg, a.ks = a.ks, [int(k) for k in a.ks.split(",")]
            a.l1s = [float(v) for v in a.l1s.split(",")]
            q = quality(Path(tmp), a)
            print(f"quality: planted cache, {a.d} wide, {a.features} true features (Zipf p 0.005-0.1), float16; "
                  f"{a.quality_steps} steps x {a.batch} rows each, scored on {a.held} held-out rows")
            for name, (l0, mse, t) in q.items():
                label = f"seed ReLU + L1 {name[1]:g}" if name[0] == "seed" else f"ours sparse TopK k={name[1]}" + (
                    " bf16 choice" if name[2] else "")
                print(f"  {label:38s} L0 {l0:7.2f}  normalized MSE {mse:.4f}  ({1e3 * t:.0f} ms/step)")
            print("  equal quality (ours' L0 <= the seed's, normalized MSE <= 1.02 x the seed's):")
            for l1 in a.l1s:
                l0_s, mse_s, _ = q[("seed", l1)]
                equal = [k for k in a.ks if q[("ours", k, False)][0] <= l0_s and q[("ours", k, False)][1] <= 1.02 * mse_s]
                best = min(equal) if equal else None
                ratio = f" (MSE {q[('ours', best, False)][1] / mse_s:.3f}x the seed's)" if equal else ""
                print(f"    seed L1 {l1:g} (L0 {l0_s:.1f}): smallest k with it: {best or 'none of ' + a.ks_arg}{ratio}")
        mm = np.lib.format.open_memmap(Path(tmp) / "acts.npy", mode="w+", dtype=np.float16, shape=(a.rows, a.d))
        rng = np.random.default_rng(0)
        for i in range(0, a.rows, 65536):
            mm[i:i + 65536] = rng.standard_normal((min(65536, a.rows - i), a.d), dtype=np.float32)
        mm.flush()
        mm = np.load(Path(tmp) / "acts.npy", mmap_mode="r")
        acts = Activations(mm, str(Path(tmp) / "acts.npy"))
        runs = {"ours": lambda s: ours(acts, a, s)[0], "seed": lambda s: seed_loop(mm, a, s)[0],
                "floor": lambda s: floor(a, s),
                "topk": lambda s: ours(acts, a, s, arch="topk")[0],
                "sparse": lambda s: ours(acts, a, s, arch="topk", sparse=True)[0],
                "bf16": lambda s: ours(acts, a, s, arch="topk", sparse=True, bf16=True)[0]}
        for name, fn in runs.items():  # warm-up: allocator, first-call and page-cache costs
            fn(100)
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(runs[name](r))
    print(f"speed: float16 memmap {a.rows} x {a.d}; SAE {a.d} -> {a.latents}, AdamW, batch {a.batch}; "
          f"{a.rounds} rounds x {a.steps} steps, interleaved")
    labels = {"ours": "ours ReLU+L1", "seed": "seed loop", "floor": "dense floor", "topk": f"ours TopK k={a.k} dense",
              "sparse": f"ours TopK k={a.k} sparse", "bf16": f"ours TopK k={a.k} sp.+bf16"}
    print(f"{'':24s} {'ms/step':>9s} {'(min-max)':>15s}   seed/this per round: median (min-max)")
    for name, v in times.items():
        ratios = [s / t for s, t in zip(times["seed"], v)]
        print(f"{labels[name]:24s} {1e3 * statistics.median(v):9.1f} ({1e3 * min(v):.0f}-{1e3 * max(v):.0f})   "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    ratios = [t / f for t, f in zip(times["topk"], times["sparse"])]
    print(f"TopK dense / sparse per round: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
