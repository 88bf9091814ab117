"""The JumpReLU-at-L0-1 study behind the README's "The default JumpReLU against the targets".

    python scripts/jumprelu_study.py [COLLECTED_DIR] [--lam 0.866] [--seeds 1] [VARIANT ...]

Each variant is a list of key=value overrides of the default recipe (sae: section of params.yaml,
sae.jumprelu's knobs by their own name: `tau=0.3` is sae.jumprelu.tau),
e.g. `decoder_init=data,resample_every=1000`; `default` is the recipe itself. Every variant runs
through mnist_sae.fit.fit_sae (the code path of the train_sae stage) with lambda fixed at --lam
(the committed calibrated value; a dvc exp run would recalibrate it, which the threshold shift
to val L0 = 1 makes nearly irrelevant) and prints val L0, val normalized MSE, test accuracy drop
(pp) and the dead fraction on val, per seed and as the mean. Run it after `dvc repro collect`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stages  # noqa: F401,E402  (the numerical pin, before torch loads)
import torch  # noqa: E402

from mnist_sae import metrics  # noqa: E402
from mnist_sae.collect import load_collected, load_space, load_z  # noqa: E402
from mnist_sae.fit import FitPlan, fit_sae  # noqa: E402
from mnist_sae.sae import SAEConfig, reconstruct  # noqa: E402
from mnist_sae.sae_train import TrainSettings  # noqa: E402

DEFAULT = {"ste": "sigmoid", "tau": 0.1, "bandwidth": 0.05, "theta_init": 0.1, "lr": 1e-3, "kl_coef": 1.0,
           "epochs": 5, "lr_decay": 0.2, "decoder_init": "random", "resample_every": 0, "sparsity_warmup": 0.0}


def parse_variant(text: str) -> dict:
    out = dict(DEFAULT)
    if text == "default":
        return out
    for item in text.split(","):
        key, value = item.split("=")
        if key not in DEFAULT:
            raise SystemExit(f"unknown key {key!r}; allowed: {', '.join(DEFAULT)}")
        out[key] = type(DEFAULT[key])(value)
    return out


def run_variant(v: dict, collected: str, lam: float, seeds: int) -> dict:
    torch.set_num_threads(1)
    info, space = load_space(collected)
    z_tr, z_va, z_te = (load_z(collected, s, space) for s in ("train", "val", "test"))
    _, logits_te, labels_te = load_collected(collected, "test")
    cfg = SAEConfig(arch="jumprelu", d_in=info["d"], n_latents=32, ste=v["ste"], tau=v["tau"],
                    bandwidth=v["bandwidth"], theta_init=v["theta_init"])
    train = TrainSettings(lr=v["lr"], epochs=v["epochs"], batch_size=8, kl_coef=v["kl_coef"], lr_decay=v["lr_decay"],
                          log_every=10**9, decoder_init=v["decoder_init"], resample_every=v["resample_every"],
                          sparsity_warmup=v["sparsity_warmup"])
    plan = FitPlan(target_l0=1.0, train=train, seeds=tuple(range(seeds)), lam=lam)
    start = time.perf_counter()
    sae, _ = fit_sae(cfg, z_tr, z_va, plan, space=space)
    rows = []
    for g in range(sae.n_models):
        one = sae.select(g)
        z_hat_va, a_va = reconstruct(one, z_va)
        y_hat_te = space.to_y(reconstruct(one, z_te)[0])
        rows.append({"l0_val": metrics.l0(a_va), "mse_norm_val": metrics.mse(z_va, z_hat_va),
                     "acc_drop_pp_test": 100 * (metrics.accuracy(logits_te, labels_te) - metrics.accuracy(y_hat_te, labels_te)),
                     "dead_fraction_val": metrics.dead_fraction(metrics.latent_frequency(a_va))})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {"seconds": round(time.perf_counter() - start), "mean": mean, "per_seed": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("collected", nargs="?", default="data/collected")
    ap.add_argument("--lam", type=float, default=0.866)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("variants", nargs="*", default=["default"])
    args = ap.parse_args()
    for text in args.variants:
        out = run_variant(parse_variant(text), args.collected, args.lam, args.seeds)
        print(json.dumps({"variant": text, **out}), flush=True)


if __name__ == "__main__":
    main()
