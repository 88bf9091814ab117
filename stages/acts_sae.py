"""acts_sae: an SAE on the cache's train rows with mnist_sae's SAE, calibration and training loop.

    python -m stages.acts_sae CACHE_DIR SAE_PT METRICS_JSON CURVES_DIR

acts.sae is the MNIST track's SAE section in its own place; the recipe is
mnist_sae.acts_fit.fit_cache_sae: the input standardized per dimension with the train rows' mean
and std, z = (x - mean) / std; lambda from acts.sae.lambda, or (null, jumprelu / relu) calibrated
on val to acts.sae.target_l0 as in the calibrate stage; trained by train_sae; JumpReLU threshold
shift. The train rows stream from the memmap (mnist_sae.acts_fit.CacheBatches); the val rows are read
into memory (float32).

acts.per_layer (caches with a layer column): also one SAE per layer, the same recipe on that
layer's train / val rows only (its own standardization and, where calibrated, its own lambda),
trained one after the other (not as one stacked-G model: that trains its G models on the same
batches, and these see different rows), in a second forked process while this one trains the
all-layer SAE (mnist_sae.forked; the bits do not depend on it).

The checkpoint is {"sae", "lambda", "lambda_source", "theta_shift", "mean_D", "std_D",
"per_layer": {layer: the same keys}}.
"""

import argparse

import numpy as np

from mnist_sae.acts import open_cache
from mnist_sae.acts_fit import fit_cache_sae
from mnist_sae.fit import FitPlan
from mnist_sae.forked import cpu_workers, map_forked
from mnist_sae.sae_train import lambda_grid
from stages._acts_params import start_acts_stage
from stages._common import ParamError, run, save_torch, write_json
from stages._curves import training_curves

CURVES = ("mse", "l0", "total", "sparsity", "aux")


def summary(f) -> dict:
    cal = None if f.calibration is None else {"lambda": f.calibration.lam, "l0_val": f.calibration.l0,
                                               "bracketed": f.calibration.bracketed,
                                               "points": [list(pt) for pt in f.calibration.points]}
    return {"lambda": f.lam, "lambda_source": f.lambda_source, "theta_shift": f.theta_shift, "l0_val": f.val["l0"],
            "mse_norm_val": f.val["mse_norm"], "dead_fraction_val": f.val["dead_fraction"], "calibration": cal,
            "train_rows": f.train_rows}


def fit_plan(p) -> FitPlan:
    """The recipe of acts.sae (ActsParams p) as a FitPlan: one seed, lambda given or calibrated."""
    s, c = p.sae, p.sae.calibration
    return FitPlan(target_l0=s.target_l0, train=p.sae_settings(s.epochs, s.batch_size), seeds=(s.seed,), lam=s.lam,
                   lambdas=tuple(lambda_grid(c.lambda_min, c.lambda_max, c.num)), refine=c.refine,
                   calibration=p.sae_settings(c.epochs, c.batch_size), shift_thresholds=s.jumprelu.theta_shift)


def main():
    parser = argparse.ArgumentParser()
    for name in ("cache_dir", "sae_pt", "metrics_json", "curves_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device = start_acts_stage(lambda p: p.sae.seed)
    s, c = p.sae, p.sae.calibration
    cache = open_cache(args.cache_dir)
    cfg = s.config(cache.acts.d)
    plan = fit_plan(p)
    train, val = cache.splits["train"], cache.splits["val"]
    layers = np.unique(cache.meta["layer"]).tolist() if p.per_layer and "layer" in cache.meta else []
    batch = max(s.batch_size, c.batch_size if s.arch != "topk" and s.lam is None else 0)
    for what, n in [("the cache", len(train))] + [(f"layer {l}", int((cache.meta["layer"][train] == l).sum())) for l in layers]:
        if n < batch:
            raise ParamError(f"acts.sae.batch_size = {s.batch_size} (calibration {c.batch_size}): {what} has only {n} "
                             f"train rows; use a smaller batch" + (" or acts.per_layer: false" if what != "the cache" else ""))

    def fit_all():  # the whole cache; its curve points are recorded here and written by this process
        logged = []
        fit = fit_cache_sae(cache, train, val, cfg, plan, device=device, on_step=lambda *point: logged.append(point))
        return fit, logged

    def fit_layers():  # one SAE per layer, one after the other
        return [fit_cache_sae(cache, train[cache.meta["layer"][train] == l], val[cache.meta["layer"][val] == l], cfg,
                              plan, device=device) for l in layers]

    # the two halves of the work are independent (own rows, own seeded generators): two forked
    # processes where there are two cores, the bits the same as one after the other
    results = map_forked(lambda job: job(), [fit_all] + ([fit_layers] if layers else []), cpu_workers(device))
    (fit, logged), per_layer = results[0], (results[1] if layers else [])
    with training_curves(args.curves_dir, CURVES) as on_step:
        for point in logged:
            on_step(*point)
    out = {**summary(fit), "optimizer": p.sae_opt.optimizer, "weight_decay": p.sae_opt.weight_decay, "device": device,
           "per_layer": {}}
    ckpt = {**fit.checkpoint(), "per_layer": {}}
    for l, f in zip(layers, per_layer):
        out["per_layer"][str(l)], ckpt["per_layer"][str(l)] = summary(f), f.checkpoint()
        print(f"layer {l} SAE: val L0 {f.val['l0']:.4g}, norm. MSE {f.val['mse_norm']:.4g}, "
              f"dead {f.val['dead_fraction']:.4g}")
    save_torch(args.sae_pt, ckpt)
    write_json(args.metrics_json, out)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()
                   if k not in ("calibration", "per_layer")))


if __name__ == "__main__":
    run(main)
