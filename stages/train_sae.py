"""train_sae: the SAE on the collected site, lambda from sae.lambda or (null) from the calibration.

    python -m stages.train_sae COLLECTED_DIR CALIBRATION_JSON SAE_CKPT METRICS_JSON CURVES_DIR

The recipe is mnist_sae.fit.fit_sae: sae.seeds models (seeds sae.seed, sae.seed + 1, ...) trained at
once as one stacked model with the same lambda, each JumpReLU shifted to val L0 = target_l0.
Writes the checkpoint {"sae": SAE.to_checkpoint() (G = seeds), "lambda", "lambda_source", "seeds",
"theta_shift" (per seed), "site", "normalize"} (load with SAE.from_checkpoint(load_torch(path)["sae"]),
one seed with .select(g)), a small metrics JSON (val L0, normalized MSE, accuracy drop at the logit
site: mean and 95% t-interval half-width over seeds, and each seed's value) and dvclive training
curves (seed 0's terms).
"""

import argparse
import json
from pathlib import Path


from mnist_sae import metrics
from mnist_sae.errors import DataError
from mnist_sae.sae import reconstruct
from mnist_sae.collect import load_collected
from mnist_sae.fit import FitPlan, fit_sae
from mnist_sae.stats import seed_summary
from stages._common import run, save_torch, write_json
from stages._curves import training_curves
from stages._sae_stage import start_sae_stage

CURVES = ("mse", "l0", "total", "sparsity", "kl", "aux")  # loss terms logged when present


def calibrated_lambda(cal_path: Path, arch: str) -> float:
    if not cal_path.exists():
        raise DataError(f"{cal_path}: not found; run `dvc repro calibrate`")
    cal = json.loads(cal_path.read_text())
    if cal.get("arch") != arch or cal.get("lambda") is None:
        raise DataError(f"{cal_path}: calibrated for arch {cal.get('arch')!r}, not {arch!r}; run `dvc repro calibrate`")
    return float(cal["lambda"])


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "calibration_json", "sae_ckpt", "metrics_json", "curves_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device, z_train_ND, z_val_ND, info, space = start_sae_stage(args.collected_dir)
    # fit_sae picks the lambda (topk: none; sae.lambda; else the calibrate stage's, read here so
    # that it is not calibrated twice)
    lam, source = p.lam, "params"
    if lam is None and p.arch != "topk":
        lam, source = calibrated_lambda(Path(args.calibration_json), p.arch), "calibration"
    plan = FitPlan(target_l0=p.target_l0, train=p.settings(p.epochs, p.batch_size), seeds=p.seed_list(), lam=lam,
                   lam_source=source, shift_thresholds=p.jumprelu.theta_shift)
    with training_curves(args.curves_dir, CURVES) as on_step:
        sae, fitted = fit_sae(p.config(info["d"]), z_train_ND, z_val_ND, plan, device=device, space=space,
                              on_step=on_step)
    lam, source = fitted.lam, fitted.lambda_source

    per_seed = []
    _, logits_NO, labels_N = load_collected(args.collected_dir, "val")
    for g in range(sae.n_models):
        z_hat_ND, a_NF = reconstruct(sae.select(g), z_val_ND)
        row = {"l0_val": metrics.l0(a_NF), "mse_norm_val": metrics.mse(z_val_ND, z_hat_ND),
               "dead_fraction_val": metrics.dead_fraction(metrics.latent_frequency(a_NF))}
        if info["site"] == "logits":
            y_hat_NO = space.to_y(z_hat_ND)
            row["acc_drop_pp_val"] = 100.0 * (metrics.accuracy(logits_NO, labels_N) - metrics.accuracy(y_hat_NO, labels_N))
            row["kl_val"] = metrics.kl_divergence(logits_NO, y_hat_NO)
        per_seed.append(row)
    out = {"lambda": lam, "lambda_source": source, "seeds": list(plan.seeds), **seed_summary(per_seed)}
    save_torch(args.sae_ckpt, {"sae": sae.to_checkpoint(), "lambda": lam, "lambda_source": source,
                               "seeds": list(plan.seeds), "theta_shift": fitted.theta_shift, "site": info["site"],
                               "normalize": bool(info["normalize"])})
    out["device"] = device
    write_json(args.metrics_json, out)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items() if k != "per_seed"))


if __name__ == "__main__":
    run(main)
