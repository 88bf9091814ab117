"""features: what each live latent of the trained SAE means (firing, labels, top-k, logit effect,
input pattern, a one-line hypothesis) -> a JSON report, a metrics summary and one PNG per latent.

    python -m stages.features PREPARED_DIR FFN_PT COLLECTED_DIR SAE_PT REPORT_JSON METRICS_JSON PLOTS_DIR
"""

import argparse
import json

import numpy as np

from mnist_sae import feature_plots, features
from mnist_sae.collect import load_space, open_split
from mnist_sae.ffn import FFN
from mnist_sae.forked import cpu_workers
from mnist_sae.sae import SAE
from stages._common import (DataError, atomic_path, load_device, load_params, load_prepared, load_torch,
                            read_params_file, run, save_figures, setup_torch, write_json, write_text)
from stages._params import FeaturesParams


def main():
    parser = argparse.ArgumentParser()
    for name in ("prepared", "ffn_pt", "collected", "sae_pt", "report_json", "metrics_json", "plots_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(FeaturesParams, "features", raw)
    device = load_device(raw)
    setup_torch(0)  # nothing here draws random numbers; deterministic kernels and threads only

    info, space = load_space(args.collected)
    acts_ND, _, labels_N = open_split(args.collected, p.split)  # memory-mapped: read in chunks
    x_NI, prepared_labels_N = load_prepared(args.prepared, p.split)
    if not np.array_equal(prepared_labels_N, labels_N):
        raise DataError(f"{args.collected}/{p.split}_labels.npy does not match {args.prepared}/y_{p.split}.npy; rerun collect")
    ffn = FFN.from_checkpoint(load_torch(args.ffn_pt)).to(device).requires_grad_(False)
    ckpt = load_torch(args.sae_pt)
    if ckpt["site"] != info["site"]:
        raise DataError(f"{args.sae_pt}: trained on the {ckpt['site']} site, {args.collected} holds {info['site']}; rerun train_sae")
    sae = SAE.from_checkpoint(ckpt["sae"]).select(0).to(device).requires_grad_(False)  # the first seed's model

    records, summary = features.analyse(sae, ffn, info["site"], acts_ND, x_NI, labels_N, p.top_n, space)

    report = {"site": info["site"], "split": p.split, "n_examples": int(len(labels_N)),
              "n_latents": sae.cfg.n_latents, "n_live": len(records), "top_n": p.top_n}
    # one latent per line: readable and diffable (indent=2 would put each of 784 pattern values on a line)
    fields = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(report.items())]
    latents = ",\n".join(json.dumps(r, sort_keys=True) for r in records)
    write_text(args.report_json, "{" + ", ".join(fields) + ', "latents": [\n' + latents + "\n]}\n")
    write_json(args.metrics_json, {"split": p.split, "device": device, **summary})

    with atomic_path(args.plots_dir) as out:
        out.mkdir()
        title = f"{info['site']} site, {p.split} split: label share when active, {len(records)} live of {sae.cfg.n_latents}"
        figures = [(out / f"latent_{r['latent']:04d}.png",
                    lambda r=r: feature_plots.latent_figure(r, x_NI[[ex["index"] for ex in r["top_n"]]])) for r in records]
        figures.append((out / "overview.png", lambda: feature_plots.overview_figure(records, title)))
        save_figures(figures, cpu_workers(device))  # drawn in forked processes


if __name__ == "__main__":
    run(main)
