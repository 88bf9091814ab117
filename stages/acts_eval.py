"""acts_eval: the SAE of acts_sae scored on its cache without a classifier head (mnist_sae.acts_eval).

    python -m stages.acts_eval PREP_DIR MODEL_PT CACHE_DIR SAE_PT METRICS_JSON REPORT_MD PLOTS_DIR

Writes METRICS_JSON (headline: reconstruction and SAEBench core metrics per split and layer,
spliced fidelity and CE / KL scores per layer for the transformer, probe accuracy codes vs raw per
layer), REPORT_MD (the same with per-class precision / recall / F1 and the most-used latents) and
PLOTS_DIR/{usage.png, per_layer.csv, usage_{layer,token,label}.csv} (the heat maps latent x value
of dvc.yaml's top-level plots).
"""

import argparse
from dataclasses import fields

import numpy as np
import torch

from mnist_sae import acts_eval as ae
from mnist_sae.acts import SPLITS, open_cache
from mnist_sae.acts_fit import checkpoint_space
from mnist_sae.sae import SAE
from mnist_sae.vit import ViT
from stages._acts_params import start_acts_stage
from stages._common import ParamError, atomic_path, load_prepared, load_torch, run, save_figure, write_json, write_text


def main():
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "model_pt", "cache_dir", "sae_pt", "metrics_json", "report_md", "plots_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device = start_acts_stage(lambda p: p.eval.seed)
    e = p.eval
    cache = open_cache(args.cache_dir)
    if e.probe_token is not None and cache.labels_R is not None and "token" not in cache.meta:  # no labels: no probes
        raise ParamError(f"acts.eval.probe_token = {e.probe_token}: the cache has no token column; set null")
    ckpt = load_torch(args.sae_pt)
    sae, space = SAE.from_checkpoint(ckpt["sae"]).eval().to(device), checkpoint_space(ckpt)
    layers = [int(v) for v in np.unique(cache.meta["layer"])] if "layer" in cache.meta else []
    # every split streams from the memmap in chunks of acts.eval.chunk_rows; one larger than
    # acts.eval.max_rows is scored on a seeded subsample of its rows
    rows = {name: ae.scored_rows(cache.splits[name], e.max_rows, e.seed + 1 + i) for i, name in enumerate(SPLITS)}
    settings = ae.EvalSettings(**{f.name: getattr(e, f.name) for f in fields(ae.EvalSettings)})  # acts.eval's names
    sc = ae.score_cache(cache, rows, sae, space, layers, settings)
    splits = sc.splits

    spliced, splice = {}, None
    if cache.info["kind"] == "transformer":
        model = ViT.from_checkpoint(load_torch(args.model_pt)["vit"]).eval()
        ex_E = np.unique(cache.meta["example"][cache.splits["test"]])
        x_NI, labels_N = load_prepared(args.prep_dir, "test")
        index_E = np.load(f"{args.cache_dir}/example_index.npy")[ex_E]
        x_EI, labels_E = torch.from_numpy(x_NI[index_E]), torch.from_numpy(labels_N[index_E])
        mean_LSD = ae.token_means(cache, rows["train"], layers, model.cfg.n_tokens)
        spliced, heads = ae.splice_layers(model, sae, space, x_EI, labels_E, mean_LSD, layers)
        for l, head in heads.items():  # the test rows at layer l are the tokens of exactly these examples
            splits["test"]["per_layer"][l]["core"] |= ae.core_downstream(**head)
        splice = (lambda sae_l, space_l, l: ae.splice_layers(model, sae_l, space_l, x_EI, labels_E, mean_LSD,
                                                             [l])[0][str(l)])
    per_layer_saes = ae.score_layer_saes(ckpt.get("per_layer", {}), cache, rows["test"], e.dense_threshold,
                                         e.chunk_rows, device, splice)
    usage_rows = ae.usage_table(sc.usage, len(rows["test"]), e.top_latents)

    out = {"source": p.source, "probe_token": e.probe_token, "probe_rows": sc.probe_rows,
           "rows_scored": {name: int(len(r)) for name, r in rows.items()},
           "cache": {k: cache.info[k] for k in ("kind", "d", "n_rows", "split_rows")},
           "sae": {"arch": sae.cfg.arch, "n_latents": sae.cfg.n_latents, "lambda": ckpt["lambda"],
                   "lambda_source": ckpt["lambda_source"]},
           "splits": splits, "spliced": spliced, "probes": sc.probes, "truth": sc.truth,
           "per_layer_saes": per_layer_saes, "device": device}
    write_text(args.report_md, ae.markdown_report(out, usage_rows))
    out["probes"] = {l: {k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in by.items()}
                     for l, by in sc.probes.items()}
    with atomic_path(args.plots_dir) as tmp:
        tmp.mkdir()
        ae.write_plot_csvs(tmp, splits["test"], spliced, sc.usage, [r["latent"] for r in usage_rows])
        save_figure(tmp / "usage.png", ae.usage_figure(sc.usage, [r["latent"] for r in usage_rows], list(sc.columns)))
    write_json(args.metrics_json, out)
    t, truth = splits["test"], sc.truth
    print(f"test: EV {t['explained_variance']:.4f}, L0 {t['l0']:.2f}, dead {splits['val']['dead_fraction']:.3f}; "
          + " ".join(f"layer {l} drop {s['acc_drop_pp']:.2f} pp" for l, s in spliced.items())
          + (f"MCC {truth['mcc']:.4f}, recovered {truth['recovered']:.3f}, F1 {truth['f1']:.3f}" if truth else ""))


if __name__ == "__main__":
    run(main)
