"""acts_eval: the SAE of acts_sae scored on its cache without a classifier head (mnist_sae.acts_eval).

    python -m stages.acts_eval PREP_DIR MODEL_PT CACHE_DIR SAE_PT METRICS_JSON REPORT_MD PLOTS_DIR

Writes METRICS_JSON (headline: reconstruction and SAEBench core metrics per split and layer,
spliced fidelity and CE / KL scores per layer for the transformer, probe accuracy codes vs raw per
layer), REPORT_MD (the same with per-class precision / recall / F1 and the most-used latents) and
PLOTS_DIR/{usage.png, per_layer.csv, usage_{layer,token,label}.csv} (the heat maps latent x value
of dvc.yaml's top-level plots).
"""

import argparse

import numpy as np
import torch

from mnist_sae import acts_eval as ae
from mnist_sae.acts import SPLITS, open_cache
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
    sae, mean_D, std_D = SAE.from_checkpoint(ckpt["sae"]).eval().to(device), ckpt["mean_D"], ckpt["std_D"]
    layers = [int(v) for v in np.unique(cache.meta["layer"])] if "layer" in cache.meta else []
    # a split larger than acts.eval.max_rows is scored on a seeded subsample of its rows
    keep = {s: ae.row_subsample(len(cache.splits[s]), e.max_rows, e.seed + 1 + i) for i, s in enumerate(SPLITS)}
    recon = {s: ae.SplitRecon(cache, s, sae, mean_D, std_D, keep[s]) for s in SPLITS}
    splits = {}
    for s, r in recon.items():
        splits[s] = r.metrics(mean_D, e.dense_threshold) | {"core": r.core()}
        at = {str(l): cache.meta["layer"][r.rows_N] == l for l in layers}
        splits[s]["per_layer"] = {l: r.metrics(mean_D, e.dense_threshold, keep) | {"core": r.core(keep)}
                                  for l, keep in at.items()}

    spliced = {}
    if cache.info["kind"] == "transformer":
        model = ViT.from_checkpoint(load_torch(args.model_pt)["vit"]).eval()
        ex_E = np.unique(cache.meta["example"][cache.splits["test"]])
        x_NI, y_N = load_prepared(args.prep_dir, "test")
        index_E = np.load(f"{args.cache_dir}/example_index.npy")[ex_E]
        x_EI, y_E = torch.from_numpy(x_NI[index_E]), torch.from_numpy(y_N[index_E])
        spliced, heads = ae.splice_layers(model, sae, mean_D, std_D, x_EI, y_E, recon["train"], cache, layers)
        test = recon["test"]
        for l, head in heads.items():  # the test rows at layer l are the tokens of exactly these examples
            splits["test"]["per_layer"][l]["core"] = test.core(cache.meta["layer"][test.rows_N] == int(l), **head)

    splice = None if not spliced else (lambda sae_l, mean_l, std_l, l: ae.splice_layers(
        model, sae_l, mean_l, std_l, x_EI, y_E, recon["train"], cache, [l])[0][str(l)])
    per_layer_saes = ae.score_layer_saes(ckpt.get("per_layer", {}), cache, e.dense_threshold, device, splice,
                                         keep["test"])

    probes, n_probe = {}, 0
    if cache.labels_R is not None:
        n_classes = int(cache.labels_R.max()) + 1
        rng = np.random.default_rng(e.seed)
        for l in layers or [None]:
            tr = ae.probe_rows(cache, recon["train"].rows_N, l, e.probe_token)
            tr = np.sort(rng.permutation(tr)[:e.probe_n_train])
            te = ae.probe_rows(cache, recon["test"].rows_N, l, e.probe_token)
            feats = [{"codes": recon[s].a_NF[i].numpy(), "raw": recon[s].x_ND[i].numpy()}
                     for s, i in (("train", tr), ("test", te))]
            labels = [cache.labels_R[recon[s].rows_N[i]] for s, i in (("train", tr), ("test", te))]
            probes["all" if l is None else str(l)] = ae.compare_probes(feats[0], labels[0], feats[1], labels[1], n_classes,
                                                                       C=e.probe_C, max_iter=e.probe_max_iter, seed=e.seed)
            n_probe = len(tr)

    test = recon["test"]
    truth = None if cache.truth is None else ae.truth_metrics(sae, std_D, cache.truth, test.rows_N, test.a_NF)
    columns = {k: cache.meta[k][test.rows_N] for k in ("layer", "token") if k in cache.meta}
    if cache.labels_R is not None:
        columns["label"] = cache.labels_R[test.rows_N]
    usage = ae.feature_usage(test.a_NF, columns)
    usage_rows = ae.usage_table(usage, len(test.rows_N), e.top_latents)

    out = {"source": p.source, "probe_token": e.probe_token, "probe_rows": n_probe,
           "rows_scored": {s: int(len(r.rows_N)) for s, r in recon.items()},
           "cache": {k: cache.info[k] for k in ("kind", "d", "n_rows", "split_rows")},
           "sae": {"arch": sae.cfg.arch, "n_latents": sae.cfg.n_latents, "lambda": ckpt["lambda"],
                   "lambda_source": ckpt["lambda_source"]},
           "splits": splits, "spliced": spliced, "probes": probes, "truth": truth,
           "per_layer_saes": per_layer_saes, "device": device}
    write_text(args.report_md, ae.markdown_report(out, usage_rows))
    out["probes"] = {l: {k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in by.items()} for l, by in probes.items()}
    with atomic_path(args.plots_dir) as tmp:
        tmp.mkdir()
        ae.write_plot_csvs(tmp, splits["test"], spliced, usage, [r["latent"] for r in usage_rows])
        save_figure(tmp / "usage.png", ae.usage_figure(usage, [r["latent"] for r in usage_rows], list(columns)))
    write_json(args.metrics_json, out)
    t = splits["test"]
    print(f"test: EV {t['explained_variance']:.4f}, L0 {t['l0']:.2f}, dead {splits['val']['dead_fraction']:.3f}; "
          + " ".join(f"layer {l} drop {s['acc_drop_pp']:.2f} pp" for l, s in spliced.items())
          + (f"MCC {truth['mcc']:.4f}, recovered {truth['recovered']:.3f}, F1 {truth['f1']:.3f}" if truth else ""))


if __name__ == "__main__":
    run(main)
