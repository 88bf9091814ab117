"""truth: every SAE variant and dictionary baseline at matched L0 on the planted caches, scored
against the planted features (mnist_sae.truth_bench, mnist_sae.truth), mean and std over seeds.

    python -m stages.truth PLANTED_DIR METRICS_JSON REPORT_MD PLOTS_DIR

Per generator seed s (PLANTED_DIR/seed<s>): fit on train, calibrate on val, score on test; the
SAEs, k-means and random directions are seeded with truth.seed + s.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from mnist_sae.errors import DataError
from mnist_sae.planted import load_planted
from mnist_sae.truth_bench import aggregate, frontier_csvs, headline, markdown_report, score_seed
from stages._common import (ParamError, atomic_path, load_device, load_params, read_params_file, run, setup_torch,
                            write_json, write_text)
from stages._params import TruthParams


def main():
    parser = argparse.ArgumentParser()
    for name in ("planted_dir", "metrics_json", "report_md", "plots_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(TruthParams, "truth", raw)
    device = load_device(raw)
    info_path = Path(args.planted_dir) / "info.json"
    if not info_path.exists():
        raise DataError(f"{info_path}: not found; run `dvc repro planted`")
    planted = json.loads(info_path.read_text())
    d = planted["params"]["d"]
    if max(p.l0) > d:
        raise ParamError(f"truth.l0 = {p.l0}: at most the planted width d = {d} (PCA has d components)")
    setup_torch(p.seed)
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest on the shared 2-core machine
    start = time.time()
    rows_by_seed = {}
    with threadpool_limits(1):
        for s in planted["seeds"]:
            tr, va, te = (load_planted(Path(args.planted_dir) / f"seed{s}", split) for split in ("train", "val", "test"))
            rows_by_seed[s] = score_seed(tr.x_ND, va.x_ND, te.x_ND, te.c_NT, te.W_true_TD, p.l0, p.settings(),
                                         p.seed + s, device)
    agg = aggregate(rows_by_seed)
    head = headline(agg)
    pp = planted["params"]
    notes = [f"planted: T = {pp['n_features']} features in D = {pp['d']}, {pp['n_rows']} rows per seed, p in "
             f"[{pp['p_min']:g}, {pp['p_max']:g}] (Zipf s = {pp['zipf_exponent']:g}), hierarchy {pp['n_parents']} x "
             f"{pp['children']}, copula rank {pp['corr_rank']}, noise {pp['noise_std']:g}",
             f"generator seeds {planted['seeds']}; fit on train, SAE lambdas calibrated on val, scored on test",
             f"every SAE, k-means and random dictionary has {p.n_latents} latents; PCA has L0 atoms; "
             f"recovered = matched |cos| >= {p.recovered_cosine:g}",
             f"SAEs: {p.epochs} epochs, batch {p.batch_size}, lr {p.lr:g}, lambda grid {p.lambda_num} points "
             f"{p.lambda_min:g}..{p.lambda_max:g} + {p.refine} bisection steps"]
    # archs / baselines are left out of "params": the methods that ran are the keys of "methods"
    # (and the default run's truth.json keeps its bytes)
    written = {k: v for k, v in asdict(p).items() if k not in ("archs", "baselines")}
    write_json(args.metrics_json, {"headline": head, "methods": agg, "l0": p.l0, "seeds": planted["seeds"],
                                   "per_seed": {str(s): r for s, r in rows_by_seed.items()}, "device": device,
                                   "params": written})
    write_text(args.report_md, markdown_report(agg, head, notes) + "\n")
    with atomic_path(args.plots_dir) as tmp:
        tmp.mkdir()
        for name, text in frontier_csvs(agg).items():
            (tmp / name).write_text(text)
    if head:
        print(f"best SAE {head['best_sae']['method']}@{head['best_sae']['k']} MCC {head['best_sae']['mcc']:.3f}, best "
              f"baseline {head['best_baseline']['method']}@{head['best_baseline']['k']} {head['best_baseline']['mcc']:.3f}, "
              f"margin {head['margin']:+.3f} +- {head['margin_std']:.3f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    run(main)
