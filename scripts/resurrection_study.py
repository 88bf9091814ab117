"""Dead latents with and without resurrection on the activation cache (issue 13, item 3).

    python scripts/resurrection_study.py [CACHE_DIR] [--sizes 512,4096] [--epochs N] \
        [--dead-steps 20] [--resample-every 250] [--relu-lambda 0.05] [--out metrics/acts_resurrection.md]

For each dictionary size, fits the acts SAE of params.yaml (`acts.sae`, n_latents replaced) on
the cache's train rows five ways, each through mnist_sae.acts_fit.fit_cache_sae (the acts_sae
stage's recipe: streamed minibatches, one seed):

    topk, AuxK off (aux_coef 0)
    topk, AuxK on (Gao et al. 2024) with acts.sae.topk.dead_steps, and with --dead-steps
    relu + L1 at --relu-lambda, resample_every 0 and --resample-every (latents that did not fire
        in that many steps re-initialised towards badly reconstructed rows, Anthropic 2023)

The relu runs use a fixed L1 coefficient (calibration's one-epoch grid misses on this cache), so
the two differ only in the resampling. Each is scored on the val rows by
mnist_sae.acts_eval.score_split (the numbers acts_eval reports): dead fraction (never fires on
val), dense fraction (fires on more than acts.eval.dense_threshold of val rows), L0, explained
variance. Writes a markdown table (OUT) and prints it. Run it after `dvc repro acts_cache` (the
default: the transformer's residual cache, data/acts/cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401,E402  (the numerical pin, before torch loads)
import torch  # noqa: E402

from mnist_sae.acts import open_cache  # noqa: E402
from mnist_sae.acts_eval import score_split  # noqa: E402
from mnist_sae.acts_fit import fit_cache_sae  # noqa: E402
from stages._acts_params import load_acts_params  # noqa: E402
from stages._common import read_params_file, setup_torch  # noqa: E402
from stages.acts_sae import fit_plan  # noqa: E402


def variants(p, sizes: list[int], dead_steps: int, resample_every: int, relu_lambda: float) -> list[tuple[str, dict]]:
    """(name, acts.sae overrides) of the runs, for each dictionary size; "topk" holds acts.sae.topk's."""
    out = []
    for n in sizes:
        out += [(f"{n}: topk, AuxK off", {"n_latents": n, "arch": "topk", "topk": {"aux_coef": 0.0}}),
                (f"{n}: topk, AuxK on, dead after {p.sae.topk.dead_steps} steps", {"n_latents": n, "arch": "topk"}),
                (f"{n}: topk, AuxK on, dead after {dead_steps} steps",
                 {"n_latents": n, "arch": "topk", "topk": {"dead_steps": dead_steps}}),
                (f"{n}: relu, no resampling", {"n_latents": n, "arch": "relu", "lam": relu_lambda, "resample_every": 0}),
                (f"{n}: relu, resample every {resample_every} steps",
                 {"n_latents": n, "arch": "relu", "lam": relu_lambda, "resample_every": resample_every})]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir", nargs="?", default="data/acts/cache")
    parser.add_argument("--epochs", type=int, default=None, help="acts.sae.epochs unless given")
    parser.add_argument("--sizes", default="512,4096", help="dictionary sizes (acts.sae.n_latents), comma-separated")
    parser.add_argument("--dead-steps", type=int, default=20, help="AuxK's dead_steps of the third topk run")
    parser.add_argument("--resample-every", type=int, default=250)
    parser.add_argument("--relu-lambda", type=float, default=0.05, help="the relu runs' L1 coefficient")
    parser.add_argument("--out", default="metrics/acts_resurrection.md")
    args = parser.parse_args()
    p = load_acts_params(read_params_file())
    p = replace(p, sae=replace(p.sae, epochs=args.epochs or p.sae.epochs))
    cache = open_cache(args.cache_dir)
    train, val = cache.splits["train"], cache.splits["val"]
    rows = []
    sizes = [int(n) for n in args.sizes.split(",")]
    for name, overrides in variants(p, sizes, args.dead_steps, args.resample_every, args.relu_lambda):
        setup_torch(p.sae.seed)
        torch.set_num_threads(1)  # one core, whatever the numerical pin chose
        topk = replace(p.sae.topk, **overrides.get("topk", {}))
        q = replace(p, sae=replace(p.sae, **{k: v for k, v in overrides.items() if k != "topk"}, topk=topk))
        start = time.perf_counter()
        f = fit_cache_sae(cache, train, val, q.sae.config(cache.acts.d), fit_plan(q))
        seconds = time.perf_counter() - start
        m = score_split(cache, val, f.sae, f.space, [], p.eval.dense_threshold, p.eval.chunk_rows)
        rows.append((name, f.lam, m, seconds))
        print(f"{name}: lambda {f.lam:.4g}, dead {m['dead_fraction']:.4f}, dense {m['dense_fraction']:.4f}, "
              f"L0 {m['l0']:.2f}, EV {m['explained_variance']:.4f} ({seconds:.0f} s)", flush=True)
    s = p.sae
    lines = ["# Dead latents with and without resurrection (activation cache)", "",
             f"Generated by `python scripts/resurrection_study.py{' --epochs ' + str(args.epochs) if args.epochs else ''}` "
             f"on the acts_cache output ({cache.info['kind']} source, {len(train)} train rows x {cache.acts.d}); "
             f"acts.sae of params.yaml: "
             f"target L0 {s.target_l0:g} (topk: k = {s.top_k()}), {s.epochs} epochs at batch {s.batch_size}, lr {s.lr:g}, "
             f"seed {s.seed}; AuxK: aux_k {s.topk.aux_k}, aux_coef {s.topk.aux_coef:g}. relu: L1 coefficient fixed at "
             f"{args.relu_lambda:g} (--relu-lambda) in both runs, so only the resampling differs (resampled latents: "
             f"those that did not fire in the last {args.resample_every} steps, during the steps before the lr decay). "
             f"The first number of a run is acts.sae.n_latents. Scored on the {len(val)} val rows "
             f"(mnist_sae.acts_eval.score_split): dead = never fires on val, dense = fires on more than "
             f"{p.eval.dense_threshold:g} of them.", "",
             "| run | lambda | dead | dense | L0 | explained variance | fit (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, lam_, m, seconds in rows:
        lines.append(f"| {name} | {lam_:.4g} | {m['dead_fraction']:.4f} | {m['dense_fraction']:.4f} | {m['l0']:.2f} | "
                     f"{m['explained_variance']:.4f} | {seconds:.0f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
