"""evaluate: the trained SAE's fidelity on train/val/test -> metrics/eval.json, BEST_RESULTS.md, plots.

    python -m stages.evaluate COLLECTED_DIR FFN_CKPT SAE_CKPT EVAL_JSON BEST_MD
        MSE_HIST_JSON L0_HIST_JSON CONFUSION_CSV FIGURE_PNG

eval.json is nested by split ({"sae": {...}, "train": {...}, "val": {...}, "test": {...}}),
numbers only, so `dvc metrics diff` shows every changed number on its own row.
"""

import argparse
from dataclasses import dataclass, field

from mnist_sae import plots
from mnist_sae.collect import load_collected, load_space
from mnist_sae.evaluate import SPLITS, best_results_markdown, evaluate_split
from mnist_sae.ffn import FFN
from mnist_sae.metrics import calibration_error
from mnist_sae.sae import SAE
from mnist_sae.stats import seed_summary
from stages._common import (POSITIVE, load_device, load_params, load_torch, read_params_file, run, save_figure,
                            setup_torch, write_json, write_text)
from stages._params import EvaluateParams


@dataclass(frozen=True)
class SAEReported:
    """The sae.* keys this stage reads (the SAE stages own and fully validate the section)."""
    target_l0: float = field(metadata=POSITIVE)  # the L0 calibration aims at (calibration error)
    batch_size: int = field(metadata=POSITIVE)  # reported in BEST_RESULTS.md


@dataclass(frozen=True)
class FFNReported:
    batch_size: int = field(metadata=POSITIVE)  # ffn.batch_size, reported in BEST_RESULTS.md


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "ffn_ckpt", "sae_ckpt", "eval_json", "best_md", "mse_hist_json", "l0_hist_json",
                 "confusion_csv", "figure_png"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(EvaluateParams, "evaluate", raw)
    sae_p = load_params(SAEReported, "sae", raw, partial=True)
    ffn_p = load_params(FFNReported, "ffn", raw, partial=True)
    device = load_device(raw)
    setup_torch(0)

    info, space = load_space(args.collected_dir)
    ffn_ckpt, sae_ckpt = load_torch(args.ffn_ckpt), load_torch(args.sae_ckpt)
    sae = SAE.from_checkpoint(sae_ckpt["sae"]).to(device).eval()
    head = FFN.from_checkpoint(ffn_ckpt).eval().head
    to_logits = head if info["site"] == "hidden" else (lambda y_BO: y_BO)

    # every seed's model scored alike; the tables and eval.json report mean and 95% t-interval over
    # seeds (mnist_sae.stats), the histograms and confusion matrix show the first seed's model
    results, arrays = {}, {}
    for split in SPLITS:
        y_ND, logits_NO, labels_N = load_collected(args.collected_dir, split)
        per_seed = []
        for g in range(sae.n_models):
            row, arr = evaluate_split(sae.select(g), y_ND, logits_NO, labels_N, space, to_logits,
                                      dense_threshold=p.dense_threshold)
            per_seed.append(row)
            if g == 0:
                arrays[split] = arr
        results[split] = seed_summary(per_seed)
    cfg = sae.cfg
    l0_val = results["val"]["l0"]
    summary = {"lambda": float(sae_ckpt["lambda"]), "seeds": sae.n_models, "target_l0": sae_p.target_l0,
               "l0_val": l0_val, "calibration_error": calibration_error(l0_val, sae_p.target_l0),
               "n_latents": cfg.n_latents, "dead_fraction_train": results["train"]["dead_fraction"]}
    write_json(args.eval_json, {"sae": summary, **results, "device": device})

    settings = {"site": info["site"], "normalized input": info["normalize"], "SAE": f"{cfg.arch} ({cfg.ste} STE)",
                "latents": cfg.n_latents, "target L0": sae_p.target_l0, "achieved L0 (val)": summary["l0_val"],
                "calibration error": summary["calibration_error"], "lambda": summary["lambda"], "tau": cfg.tau,
                "seeds": f"{sae.n_models} (tables: mean +- 95% t-interval half-width over seeds)",
                "SAE batch size": sae_p.batch_size, "FFN": f"{ffn_ckpt['config']['kind']} hidden "
                f"{ffn_ckpt['config']['n_hidden']}, lr {ffn_ckpt.get('lr', 'n/a')}", "FFN batch size": ffn_p.batch_size,
                "dead latents (train)": summary["dead_fraction_train"]}
    write_text(args.best_md, best_results_markdown(settings, results))

    write_json(args.mse_hist_json, plots.log_histogram(arrays["val"]["mse_N"], p.hist_bins, "log10_mse"))
    write_json(args.l0_hist_json, plots.count_histogram(arrays["val"]["l0_N"], "l0"))
    test = arrays["test"]
    write_text(args.confusion_csv, plots.prediction_pairs_csv(test["pred_orig_N"], test["pred_recon_N"], "ffn", "reconstructed"))
    confusion_CC = plots.confusion_matrix(test["pred_orig_N"], test["pred_recon_N"], n_classes=ffn_ckpt["config"]["n_out"])
    fig = plots.evaluation_figure({s: arrays[s]["mse_N"] for s in SPLITS}, {s: arrays[s]["l0_N"] for s in SPLITS},
                                  confusion_CC, f"{cfg.arch} SAE at the {info['site']} site, {cfg.n_latents} latents, "
                                  f"L0 (val) {summary['l0_val']:.2f}")
    save_figure(args.figure_png, fig)


if __name__ == "__main__":
    run(main)
