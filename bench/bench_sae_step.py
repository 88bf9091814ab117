"""The SAE training step three ways: mnist_sae.sae_kernel (what train_sae runs at batch <= 32 on
CPU), torch's autograd loop with mnist_sae.adam.FusedAdam, and the same loop with
torch.optim.Adam(fused=True).

    python bench/bench_sae_step.py [--collected data/collected] [--steps 3000] [--rounds 5] [--threads 1]

Trains the train_sae stage's model (params.yaml sae: arch, n_latents, seeds stacked, kl_coef) for
`--steps` steps each way, `--rounds` times in rotating order; prints the median and range of each
and of the ratios to the kernel, checks that the two autograd runs' weights are bit-identical and
prints how far the kernel's weights are from theirs (float32 rounding, not bits). On the collected train split when it exists, else on
Gaussian z of the logit site's width (the per-step cost does not depend on the values).
Not a test: timings are never asserted.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_sae import sae_train  # noqa: E402
from mnist_sae.collect import load_space, load_z  # noqa: E402
from mnist_sae.sae import SAE  # noqa: E402
from mnist_sae.space import InputSpace  # noqa: E402
from stages._common import cpu_name, read_params_file  # noqa: E402
from stages._sae_params import load_sae_params  # noqa: E402


class TorchAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) behind FusedAdam's interface (the loop sets .lr, calls zero_grad)."""

    def __init__(self, params, lr, *, weight_decay=0.0, decoupled=False):
        assert not decoupled and weight_decay == 0.0
        super().__init__(params, lr=lr, fused=True)

    @property
    def lr(self):
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        self.param_groups[0]["lr"] = value


def timed_run(kind, cfg, z_ND, settings, seeds, space):
    kernel, opt_cls = kind
    sae_train.FusedAdam = opt_cls  # the autograd loop builds its optimizer from this name
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    sae = SAE(cfg, n_models=len(seeds), generator=gens)
    t0 = time.perf_counter()
    sae_train.train_sae(sae, z_ND, [0.1] * len(seeds), settings, gens, space=space, kernel=kernel)
    return time.perf_counter() - t0, [v.detach().clone() for v in sae.state_dict().values()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--collected", default="data/collected")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    p = load_sae_params(read_params_file())
    n = args.steps * p.batch_size
    if (Path(args.collected) / "info.json").exists():
        info, space = load_space(args.collected)
        z_ND, source = load_z(args.collected, "train", space)[:n], f"{args.collected} ({info['site']})"
    else:
        z_ND, source = torch.randn(n, 10, generator=torch.Generator().manual_seed(0)), "Gaussian z, D = 10"
        space = InputSpace.identity(10)
    cfg = p.config(z_ND.shape[1])
    settings = p.settings(epochs=1, batch_size=p.batch_size)
    fused = sae_train.FusedAdam
    kinds = {"sae_kernel": (True, fused), "autograd + FusedAdam": (False, fused),
             "autograd + torch.optim.Adam": (False, TorchAdam)}
    times = {k: [] for k in kinds}
    weights = {}
    for kind in kinds.values():  # warm-up (the kernel's compilation is cached after its first run)
        timed_run(kind, cfg, z_ND[:50 * p.batch_size], settings, p.seed_list(), space)
    names = list(kinds)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            t, weights[name] = timed_run(kinds[name], cfg, z_ND, settings, p.seed_list(), space)
            times[name].append(t)
    sae_train.FusedAdam = fused
    same = all(torch.equal(a, b) for a, b in zip(weights[names[1]], weights[names[2]]))
    off = max(float((a - b).abs().max()) for a, b in zip(weights[names[0]], weights[names[1]]))
    print(f"CPU: {cpu_name()}, {args.threads} thread(s); {source}; arch {p.arch}, {len(p.seed_list())} seeds stacked, "
          f"{args.steps} steps of batch {p.batch_size}, {args.rounds} rounds in rotating order")
    for name, ts in times.items():
        print(f"{name:30s} median {statistics.median(ts):6.2f} s [{min(ts):.2f}-{max(ts):.2f}], "
              f"{1e3 * statistics.median(ts) / args.steps:.3f} ms/step")
    for name in names[1:]:
        ratios = [b / a for a, b in zip(times[names[0]], times[name])]
        print(f"{name} / sae_kernel time: median {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]")
    print(f"autograd weights bit-identical (FusedAdam vs torch.optim): {same}; "
          f"kernel vs autograd weights: max |difference| {off:.2e}")

if __name__ == "__main__":
    main()
