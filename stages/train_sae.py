"""train_sae: the SAE on the collected site, lambda from sae.lambda or (null) from the calibration.

    python -m stages.train_sae COLLECTED_DIR CALIBRATION_JSON SAE_CKPT METRICS_JSON CURVES_DIR

Writes the checkpoint {"sae": SAE.to_checkpoint(), "lambda", "lambda_source", "theta_shift",
"site", "normalize"} (load with SAE.from_checkpoint(load_torch(path)["sae"])), a small metrics
JSON (val L0, normalized MSE, accuracy drop at the logit site) and dvclive training curves.
"""

import argparse
import json
from pathlib import Path

import torch

from mnist_sae import metrics
from mnist_sae.data import DataError
from mnist_sae.sae import SAE, reconstruct
from mnist_sae.collect import load_collected, to_y
from mnist_sae.sae_train import shift_thresholds_, train_sae
from stages._common import run, save_torch, write_json
from stages._curves import training_curves
from stages._sae_params import start_sae_stage

CURVES = ("mse", "l0", "total", "sparsity", "kl", "aux")  # loss terms logged when present


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "calibration_json", "sae_ckpt", "metrics_json", "curves_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device, z_train_ND, z_val_ND, info, mean_D, std_D = start_sae_stage(args.collected_dir)
    if p.arch == "topk":
        lam, source = 0.0, "none (topk)"
    elif p.lam is not None:
        lam, source = p.lam, "params"
    else:
        cal_path = Path(args.calibration_json)
        if not cal_path.exists():
            raise DataError(f"{cal_path}: not found; run `dvc repro calibrate`")
        cal = json.loads(cal_path.read_text())
        if cal.get("arch") != p.arch or cal.get("lambda") is None:
            raise DataError(f"{cal_path}: calibrated for arch {cal.get('arch')!r}, not {p.arch!r}; run `dvc repro calibrate`")
        lam, source = float(cal["lambda"]), "calibration"

    gen = torch.Generator().manual_seed(p.seed)
    sae = SAE(p.config(info["d"]), n_models=1, generator=gen).to(device)
    with training_curves(args.curves_dir, CURVES) as on_step:
        train_sae(sae, z_train_ND, [lam], p.settings(p.epochs, p.batch_size), gen, mean_D=mean_D, std_D=std_D,
                  on_step=on_step)
    sae = sae.cpu().eval()
    delta = shift_thresholds_(sae, z_val_ND, p.target_l0) if p.theta_shift and p.arch == "jumprelu" else 0.0

    z_hat_ND, a_NF = reconstruct(sae, z_val_ND)
    out = {"lambda": lam, "lambda_source": source, "theta_shift": delta, "l0_val": metrics.l0(a_NF),
           "mse_norm_val": metrics.mse(z_val_ND, z_hat_ND),
           "dead_fraction_val": metrics.dead_fraction(metrics.latent_frequency(a_NF))}
    if info["site"] == "logits":
        y_hat_NO = to_y(z_hat_ND, mean_D, std_D, info["normalize"])
        _, logits_NO, labels_N = load_collected(args.collected_dir, "val")
        out["acc_drop_pp_val"] = 100.0 * (metrics.accuracy(logits_NO, labels_N) - metrics.accuracy(y_hat_NO, labels_N))
        out["kl_val"] = metrics.kl_divergence(logits_NO, y_hat_NO)
    save_torch(args.sae_ckpt, {"sae": sae.to_checkpoint(), "lambda": lam, "lambda_source": source,
                               "theta_shift": delta, "site": info["site"], "normalize": bool(info["normalize"])})
    out["device"] = device
    write_json(args.metrics_json, out)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))


if __name__ == "__main__":
    run(main)
