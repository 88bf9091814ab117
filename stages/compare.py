"""compare: the main SAE (train_sae's) scored by the same `score` as the reference methods, placed
among them -> metrics/baselines.json, metrics/BASELINES.md, plots/baselines/.

    python -m stages.compare COLLECTED_DIR FFN_CKPT SAE_CKPT BASELINES_DIR METRICS_JSON REPORT_MD PLOTS_DIR

BASELINES_DIR is the baselines stage's output. Cheap (one SAE scored, then rendering with
mnist_sae.baselines_report): this is all a new sae.lambda or a report wording change reruns.
"""

import argparse

import torch
from threadpoolctl import threadpool_limits

from mnist_sae import baselines, baselines_report as report
from mnist_sae.collect import load_collected, load_space
from mnist_sae.errors import DataError
from mnist_sae.ffn import FFN
from mnist_sae.forked import cpu_workers
from mnist_sae.sae import SAE
from stages._baselines_params import load_baselines_params, matched_ks
from stages._common import atomic_path, load_device, load_torch, read_params_file, run, save_figures, setup_torch, write_json, write_text
from stages._sae_params import load_sae_params


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "ffn_ckpt", "sae_ckpt", "baselines_dir", "metrics_json", "report_md", "plots_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_baselines_params(raw)
    device = load_device(raw)
    info, space = load_space(args.collected_dir)
    res, meta = baselines.load_results(args.baselines_dir)
    sp = load_sae_params(raw)
    ks = matched_ks(p, sp.target_l0)
    made_with = {"site": info["site"], "eval_split": p.eval_split, "ks": ks, "seed": p.seed, "top_n": p.top_n,
                 "seeds": sp.seeds}
    stale = [key for key, v in made_with.items() if meta[key] != v]
    if stale:
        raise DataError(f"{args.baselines_dir}: made with other {', '.join(stale)} than params.yaml; run dvc repro baselines")
    ckpt = load_torch(args.sae_ckpt)
    if ckpt.get("site", info["site"]) != info["site"]:
        raise DataError(f"{args.sae_ckpt}: trained at site {ckpt['site']!r}, collected data is {info['site']!r}")
    setup_torch(p.seed)
    torch.set_num_threads(1)  # as the baselines stage: the same threads, the same sums

    to_logits = (lambda y: y) if info["site"] == "logits" else FFN.from_checkpoint(load_torch(args.ffn_ckpt)).eval().head
    site = baselines.make_site(lambda s: load_collected(args.collected_dir, s), space, p.eval_split, to_logits)
    with threadpool_limits(1):
        # k = 0: scored at its own L0, not matched to a k
        sae = SAE.from_checkpoint(ckpt["sae"]).eval()  # one model per seed: the row is their mean and interval
        baselines.add_scored(res, "sae_main", 0, baselines.sae_methods(sae), site,
                             top_n=p.top_n, seed=p.seed,
                             probe=baselines.ProbeSettings(p.probe.C, p.probe.max_iter, p.probe.n_train, p.seed),
                             workers=cpu_workers(device))  # the seeds scored in forked processes; the bits do not depend on it

    header = {"site": info["site"], "d": info["d"], "normalize": info["normalize"], "n_latents": meta["n_latents"],
              "eval_split": p.eval_split, "ks": ks, "device": meta["device"]}
    notes = [f"fitted on train, SAE lambdas calibrated on val, scored on {p.eval_split}",
             f"SAE family: batch {p.batch_size}, {p.epochs} epoch(s), lr {p.lr:g}, lambda grid {p.lambda_num} points "
             f"{p.lambda_min:g}..{p.lambda_max:g} trained at once + {p.refine} bisection steps (a smaller budget than "
             f"train_sae's; sae_main is the train_sae stage's SAE)" if p.family else "SAE family: not trained (baselines.family false)",
             f"purity: top {p.top_n} and {p.top_n} uniformly sampled activating examples per latent, mean over live "
             "latents; signed codes (pca, kmeans_gain_shape, random, class) count as two atoms (+d and -d)",
             f"probe: logistic regression on {p.probe.n_train} train examples, standardised features, C {p.probe.C}"]
    write_json(args.metrics_json, report.results_json(res, header))
    write_text(args.report_md, report.markdown_report(res, header, notes))
    with atomic_path(args.plots_dir) as tmp:
        tmp.mkdir()
        for name, text in report.frontier_csvs(res).items():
            (tmp / name).write_text(text)
        k_hist = max(ks)
        save_figures([
            (tmp / "frontier.png", lambda: report.frontier_figure(res)),
            (tmp / "cosine_hist.png", lambda: report.histogram_figure(
                res, "cos", k_hist, f"pairwise decoder cosine similarities at k = {k_hist} (dotted: Welch bound)", welch=True)),
            (tmp / "magnitude_hist.png", lambda: report.histogram_figure(
                res, "mag", k_hist, f"non-zero activation magnitudes |a| on {p.eval_split} at k = {k_hist}")),
        ], cpu_workers(device))  # drawn in forked processes


if __name__ == "__main__":
    run(main)
