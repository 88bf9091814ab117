"""Batched lambda calibration vs the same grid trained one point after another.

    python bench/bench_calibrate.py [--collected data/collected] [--steps 1000] [--threads 1]

Trains the default grid of params.yaml (sae.calibration: num points, batch_size) for `--steps`
steps each, once as one stacked model (G = num) and once as num separate models (G = 1), on the
collected train split when it exists, else on Gaussian z of the logit site's width (D = 10); the
per-step cost does not depend on the values. Prints both wall times and their ratio (goal >= 5x).
Not a test: timings are never asserted.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_sae.sae import SAE  # noqa: E402
from mnist_sae.collect import load_space, load_z  # noqa: E402
from mnist_sae.sae_train import lambda_grid, train_sae  # noqa: E402
from mnist_sae.space import InputSpace  # noqa: E402
from stages._common import read_params_file  # noqa: E402
from stages._sae_params import load_sae_params  # noqa: E402


def timed_run(cfg, z_ND, lambdas, settings, seed, space) -> float:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, n_models=len(lambdas), generator=gen)
    t0 = time.perf_counter()
    train_sae(sae, z_ND, lambdas, settings, gen, space=space)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--collected", default="data/collected")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per grid point")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    p = load_sae_params(read_params_file())
    c = p.calibration
    n = args.steps * c.batch_size
    if (Path(args.collected) / "info.json").exists():
        info, space = load_space(args.collected)
        z_ND = load_z(args.collected, "train", space)
        source = f"{args.collected} ({info['site']})"
    else:
        z_ND, source = torch.randn(n, 10, generator=torch.Generator().manual_seed(0)), "Gaussian z, D = 10"
        space = InputSpace.identity(10)
    z_ND = z_ND[:n]
    grid = lambda_grid(c.lambda_min, c.lambda_max, c.num)
    cfg = p.config(z_ND.shape[1])
    settings = p.settings(epochs=1, batch_size=c.batch_size)
    timed_run(cfg, z_ND[:50 * c.batch_size], grid, settings, p.seed, space)  # warm-up (allocator, first-call costs)

    batched = timed_run(cfg, z_ND, grid, settings, p.seed, space)
    serial = sum(timed_run(cfg, z_ND, [lam], settings, p.seed, space) for lam in grid)
    steps = z_ND.shape[0] // c.batch_size
    print(f"data: {source}; arch {cfg.arch} ({cfg.ste}), {cfg.n_latents} latents; grid of {len(grid)} lambdas, "
          f"{steps} steps of batch {c.batch_size} each; kl_coef {settings.kl_coef}; {args.threads} thread(s)")
    print(f"batched (G = {len(grid)}):  {batched:8.2f} s  ({1e3 * batched / steps:.3f} ms/step)")
    print(f"one after another:  {serial:8.2f} s  ({1e3 * serial / (steps * len(grid)):.3f} ms/step per point)")
    print(f"speed-up: {serial / batched:.1f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
