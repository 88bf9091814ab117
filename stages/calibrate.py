"""calibrate: the lambda whose mean hard L0 on val is closest to sae.target_l0.

    python -m stages.calibrate COLLECTED_DIR CALIBRATION_JSON CALIBRATION_CSV

A geometric grid (sae.calibration) is trained at once as one batched model, then the best point's
bracket is bisected in log-lambda (sae.calibration.refine steps). TopK has no lambda: it writes
lambda null and an empty curve. So no sae.topk knob reaches the output (the grid is jumprelu or
relu, which never run AuxK), and dvc.yaml lists none: a TopK change does not recalibrate.
"""

import argparse
import csv
import math

from mnist_sae.sae_train import calibrate, lambda_grid
from stages._common import atomic_path, run, write_json
from stages._sae_stage import start_sae_stage


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "calibration_json", "calibration_csv"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device, z_train_ND, z_val_ND, info, space = start_sae_stage(args.collected_dir)
    c = p.calibration
    result = {"arch": p.arch, "target_l0": p.target_l0}
    rows = []
    if p.arch == "topk":
        result.update({"lambda": None, "l0_val": None, "bracketed": None, "points": []})
    else:
        grid = lambda_grid(c.lambda_min, c.lambda_max, c.num)
        cal = calibrate(p.config(info["d"]), z_train_ND, z_val_ND, p.target_l0, grid, c.refine,
                        p.settings(c.epochs, c.batch_size), p.seed, device=device, space=space)
        result.update({"lambda": cal.lam, "l0_val": cal.l0, "bracketed": cal.bracketed,
                       "points": [{"lambda": lam, "l0_val": l0, "source": src} for lam, l0, src in cal.points]})
        rows = sorted(cal.points)
        if not cal.bracketed:
            print(f"warning: target L0 {p.target_l0} lies outside the grid's L0 range "
                  f"[{min(l for _, l, _ in cal.points):.3f}, {max(l for _, l, _ in cal.points):.3f}]; "
                  f"widen sae.calibration.lambda_min/lambda_max")
        print(f"calibrated lambda {cal.lam:.6g}: val L0 {cal.l0:.4f} (target {p.target_l0})")

    result["device"] = device
    write_json(args.calibration_json, result)
    with atomic_path(args.calibration_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["lambda", "log10_lambda", "l0_val", "source"])
        for lam, l0, src in rows:
            w.writerow([f"{lam:.8g}", f"{math.log10(lam):.6f}", f"{l0:.6f}", src])


if __name__ == "__main__":
    run(main)
