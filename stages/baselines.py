"""baselines: PCA, k-means, random and class directions and an SAE family at matched k, all scored
on one split through the same metric functions as evaluate, plus the main SAE as a reference row.

    python -m stages.baselines COLLECTED_DIR FFN_CKPT SAE_CKPT METRICS_JSON REPORT_MD PLOTS_DIR

Fits on train, calibrates SAE lambdas on val, scores on baselines.eval_split.
"""

import argparse
from dataclasses import dataclass, field

import torch
from threadpoolctl import threadpool_limits

from mnist_sae import baselines
from mnist_sae.data import DataError
from mnist_sae.collect import load_collected, load_stats
from mnist_sae.ffn import FFN
from mnist_sae.sae import SAE
from mnist_sae.sae_train import lambda_grid
from stages._common import (NON_NEGATIVE, POSITIVE, ParamError, atomic_path, choice, load_device, load_params,
                            load_torch, read_params_file, rule, run, save_figure, setup_torch, write_json, write_text)
from stages._sae_params import load_sae_params

N_CLASSES = 10


@dataclass(frozen=True)
class ProbeParams:
    C: float = field(metadata=POSITIVE)  # inverse L2 strength of the logistic-regression probe
    max_iter: int = field(metadata=POSITIVE)  # lbfgs iterations
    n_train: int = field(metadata=POSITIVE)  # train examples the probes are fitted on (seeded subsample)


@dataclass(frozen=True)
class BaselinesParams:
    k: list[int] = field(metadata=rule(lambda v: len(v) > 0 and all(x >= 1 for x in v), "a non-empty list of integers >= 1"))  # matched sparsities
    eval_split: str = field(metadata=choice("val", "test"))  # split every method is scored on
    seed: int = field(metadata=NON_NEGATIVE)  # k-means, random directions, SAE family, purity sampling, probes
    top_n: int = field(metadata=POSITIVE)  # examples per latent in the purity metrics
    kmeans_n_init: int = field(metadata=POSITIVE)  # k-means restarts (k-means++ init)
    kmeans_max_iter: int = field(metadata=POSITIVE)  # Lloyd iterations per restart
    family: bool  # train the SAE family at each k (false: reference methods and the main SAE only)
    batch_size: int = field(metadata=POSITIVE)  # SAE family minibatch (larger than train_sae's, for speed)
    epochs: int = field(metadata=POSITIVE)  # SAE family epochs (calibration grid and final model)
    lr: float = field(metadata=POSITIVE)  # SAE family Adam learning rate (larger batch, larger step)
    lambda_min: float = field(metadata=POSITIVE)  # geometric lambda grid of the family's calibration
    lambda_max: float = field(metadata=POSITIVE)
    lambda_num: int = field(metadata=rule(lambda v: v >= 2, ">= 2"))
    refine: int = field(metadata=NON_NEGATIVE)  # bisection steps after the grid
    kl_coef: float = field(metadata=POSITIVE)  # KL weight of sae_jumprelu_kl (logit site only)
    dead_steps: int = field(metadata=POSITIVE)  # topk AuxK: steps without firing before a latent is dead
    shift_thresholds: bool  # jumprelu: shift thresholds so that the val L0 is exactly k
    probe: ProbeParams

    def validate(self, prefix: str) -> None:
        if sorted(set(self.k)) != self.k:
            raise ParamError(f"{prefix}.k = {self.k}: must be strictly increasing")
        if max(self.k) > N_CLASSES:
            raise ParamError(f"{prefix}.k = {self.k}: at most {N_CLASSES} (the class-direction dictionary has {N_CLASSES} atoms)")
        if self.lambda_min >= self.lambda_max:
            raise ParamError(f"{prefix}.lambda_min = {self.lambda_min}: must be < lambda_max = {self.lambda_max}")


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "ffn_ckpt", "sae_ckpt", "metrics_json", "report_md", "plots_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(BaselinesParams, "baselines", raw)
    sp = load_sae_params(raw)
    device = load_device(raw)
    info, mean_D, std_D = load_stats(args.collected_dir)
    if max(p.k) > min(info["d"], sp.n_latents):
        raise ParamError(f"baselines.k = {p.k}: at most min(site width {info['d']}, sae.n_latents {sp.n_latents})")
    ckpt = load_torch(args.sae_ckpt)
    if ckpt.get("site", info["site"]) != info["site"]:
        raise DataError(f"{args.sae_ckpt}: trained at site {ckpt['site']!r}, collected data is {info['site']!r}")
    setup_torch(p.seed)
    # one thread for torch and for sklearn's BLAS/OpenMP: the matrices are tiny (D = 10, F = 32 at
    # the logit site), and on the shared 2-core machine two threads ran the calibration grid ~10x
    # slower (spin-waiting on a busy core: 24 s vs 2.5 s measured)
    torch.set_num_threads(1)

    to_logits = (lambda y: y) if info["site"] == "logits" else FFN.from_checkpoint(load_torch(args.ffn_ckpt)).eval().head
    site = baselines.make_site(lambda s: load_collected(args.collected_dir, s), mean_D, std_D, info["normalize"],
                               p.eval_split, to_logits)
    family = baselines.FamilySettings(lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
                                      lambdas=tuple(lambda_grid(p.lambda_min, p.lambda_max, p.lambda_num)),
                                      refine=p.refine, kl_coef=p.kl_coef, aux_coef=sp.aux_coef,
                                      dead_steps=p.dead_steps, shift_thresholds=p.shift_thresholds)
    with threadpool_limits(1):
        res = baselines.run_baselines(
            site, p.k, sp.n_latents, seed=p.seed, top_n=p.top_n, kmeans_n_init=p.kmeans_n_init,
            kmeans_max_iter=p.kmeans_max_iter, probe=baselines.ProbeSettings(p.probe.C, p.probe.max_iter, p.probe.n_train, p.seed),
            family=family if p.family else None, base_cfg=sp.config(info["d"]), site_is_logits=info["site"] == "logits",
            main_sae=SAE.from_checkpoint(ckpt["sae"]).eval(), device=device)

    header = {"site": info["site"], "d": info["d"], "normalize": info["normalize"], "n_latents": sp.n_latents,
              "eval_split": p.eval_split, "ks": p.k, "device": device}
    notes = [f"fitted on train, SAE lambdas calibrated on val, scored on {p.eval_split}",
             f"SAE family: batch {p.batch_size}, {p.epochs} epoch(s), lr {p.lr:g}, lambda grid {p.lambda_num} points "
             f"{p.lambda_min:g}..{p.lambda_max:g} trained at once + {p.refine} bisection steps (a smaller budget than "
             f"train_sae's; sae_main is the train_sae stage's SAE)" if p.family else "SAE family: not trained (baselines.family false)",
             f"purity: top {p.top_n} and {p.top_n} uniformly sampled activating examples per latent, mean over live "
             "latents; signed codes (pca, kmeans_gain_shape, random, class) count as two atoms (+d and -d)",
             f"probe: logistic regression on {p.probe.n_train} train examples, standardised features, C {p.probe.C}"]
    write_json(args.metrics_json, baselines.results_json(res, header))
    write_text(args.report_md, baselines.markdown_report(res, header, notes))
    with atomic_path(args.plots_dir) as tmp:
        tmp.mkdir()
        for name, text in baselines.frontier_csvs(res).items():
            (tmp / name).write_text(text)
        k_hist = max(p.k)
        save_figure(tmp / "frontier.png", baselines.frontier_figure(res))
        save_figure(tmp / "cosine_hist.png", baselines.histogram_figure(
            res, "cos", k_hist, f"pairwise decoder cosine similarities at k = {k_hist} (dotted: Welch bound)", welch=True))
        save_figure(tmp / "magnitude_hist.png", baselines.histogram_figure(
            res, "mag", k_hist, f"non-zero activation magnitudes |a| on {p.eval_split} at k = {k_hist}"))


if __name__ == "__main__":
    run(main)
