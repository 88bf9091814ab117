"""acts_sae: an SAE on the cache's train rows with mnist_sae's SAE, calibration and training loop.

    python -m stages.acts_sae CACHE_DIR SAE_PT METRICS_JSON CURVES_DIR

acts.sae is the MNIST track's SAE section in its own place. The input is standardized per
dimension with the train split's mean and std, z = (x - mean) / std. lambda: acts.sae.lambda, or
(null, jumprelu / relu) calibrated on val to acts.sae.target_l0 as in the calibrate stage. The
train and val rows are read into memory (float32); streaming from the memmap is not wired into
the loop yet (mnist_sae.acts.stream_batches exists). The checkpoint is {"sae", "lambda",
"lambda_source", "theta_shift", "mean_D", "std_D", "calibration"}.
"""

import argparse

import torch

from mnist_sae import metrics
from mnist_sae.acts import open_cache
from mnist_sae.collect import normalization_stats, to_z
from mnist_sae.sae import SAE, reconstruct
from mnist_sae.sae_train import calibrate, lambda_grid, shift_thresholds_, train_sae
from stages._acts_params import start_acts_stage
from stages._common import run, save_torch, write_json
from stages._curves import training_curves

CURVES = ("mse", "l0", "total", "sparsity", "aux")


def main():
    parser = argparse.ArgumentParser()
    for name in ("cache_dir", "sae_pt", "metrics_json", "curves_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device = start_acts_stage(lambda p: p.sae.seed)
    s = p.sae
    cache = open_cache(args.cache_dir)
    x_train_ND = cache.load_split("train")
    mean_D, std_D = (torch.from_numpy(a) for a in normalization_stats(x_train_ND))
    z_train_ND = to_z(torch.from_numpy(x_train_ND), mean_D, std_D, True)
    z_val_ND = to_z(torch.from_numpy(cache.load_split("val")), mean_D, std_D, True)
    cfg = s.config(cache.acts.d)

    cal = None
    if s.arch == "topk":
        lam, source = 0.0, "none (topk)"
    elif s.lam is not None:
        lam, source = s.lam, "params"
    else:
        c = s.calibration
        cal = calibrate(cfg, z_train_ND, z_val_ND, s.target_l0, lambda_grid(c.lambda_min, c.lambda_max, c.num), c.refine,
                        s.settings(c.epochs, c.batch_size), s.seed, device=device)
        lam, source = cal.lam, "calibration"
        print(f"calibrated lambda {cal.lam:.6g}: val L0 {cal.l0:.4f} (target {s.target_l0}, bracketed {cal.bracketed})")

    gen = torch.Generator().manual_seed(s.seed)
    sae = SAE(cfg, n_models=1, generator=gen).to(device)
    with training_curves(args.curves_dir, CURVES) as on_step:
        train_sae(sae, z_train_ND, [lam], s.settings(s.epochs, s.batch_size), gen, on_step=on_step)
    sae = sae.cpu().eval()
    delta = shift_thresholds_(sae, z_val_ND, s.target_l0) if s.theta_shift and s.arch == "jumprelu" else 0.0
    z_hat_ND, a_NF = reconstruct(sae, z_val_ND)
    calibration = None if cal is None else {"lambda": cal.lam, "l0_val": cal.l0, "bracketed": cal.bracketed,
                                            "points": [list(pt) for pt in cal.points]}
    out = {"lambda": lam, "lambda_source": source, "theta_shift": delta, "l0_val": metrics.l0(a_NF),
           "mse_norm_val": metrics.mse(z_val_ND, z_hat_ND),
           "dead_fraction_val": metrics.dead_fraction(metrics.latent_frequency(a_NF)),
           "calibration": calibration, "train_rows": int(z_train_ND.shape[0]), "device": device}
    save_torch(args.sae_pt, {"sae": sae.to_checkpoint(), "lambda": lam, "lambda_source": source, "theta_shift": delta,
                             "mean_D": mean_D, "std_D": std_D})
    write_json(args.metrics_json, out)
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items() if k != "calibration"))


if __name__ == "__main__":
    run(main)
