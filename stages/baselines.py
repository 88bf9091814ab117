"""baselines: the reference methods at matched k (PCA, k-means, gain-shape k-means, random and class
directions, an SAE family), fitted and scored once per change of their own params or data.

    python -m stages.baselines COLLECTED_DIR FFN_CKPT OUT_DIR

The k values are baselines.k plus round(sae.target_l0), so the main SAE always has references at
its own sparsity. Fits on train, calibrates the family's lambdas on val, scores on baselines.eval_split; writes
OUT_DIR/rows.json and OUT_DIR/dists/*.npy (mnist_sae.baselines.save_results). It does not read the
main SAE: the compare stage scores that one and writes the report, so a new sae.lambda refits
nothing here. The SAE family's members (independent fits) train in one process per core.
"""

import argparse

import torch
from threadpoolctl import threadpool_limits

from mnist_sae import baselines, references
from mnist_sae.collect import load_collected, load_space
from mnist_sae.ffn import FFN
from mnist_sae.forked import cpu_workers
from mnist_sae.sae_train import lambda_grid
from stages._baselines_params import load_baselines_params, matched_ks
from stages._common import ParamError, atomic_path, load_device, load_torch, read_params_file, run, setup_torch
from stages._sae_params import load_sae_params


def main():
    parser = argparse.ArgumentParser()
    for name in ("collected_dir", "ffn_ckpt", "out_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_baselines_params(raw)
    sp = load_sae_params(raw)
    device = load_device(raw)
    info, space = load_space(args.collected_dir)
    ks = matched_ks(p, sp.target_l0)
    if max(ks) > min(info["d"], sp.n_latents):
        raise ParamError(f"baselines.k = {p.k} with sae.target_l0 = {sp.target_l0}: every k must be at most "
                         f"min(site width {info['d']}, sae.n_latents {sp.n_latents})")
    setup_torch(p.seed)
    # one thread for torch and for sklearn's BLAS/OpenMP: the matrices are tiny (D = 10, F = 32 at
    # the logit site), and on the shared 2-core machine two threads ran the calibration grid ~10x
    # slower (spin-waiting on a busy core: 24 s vs 2.5 s measured)
    torch.set_num_threads(1)

    to_logits = (lambda y: y) if info["site"] == "logits" else FFN.from_checkpoint(load_torch(args.ffn_ckpt)).eval().head
    site = baselines.make_site(lambda s: load_collected(args.collected_dir, s), space, p.eval_split, to_logits)
    family = references.FamilySettings(cfg=sp.config(info["d"]), lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
                                       lambdas=tuple(lambda_grid(p.lambda_min, p.lambda_max, p.lambda_num)),
                                       refine=p.refine, kl_coef=p.kl_coef, aux_coef=sp.topk.aux_coef,
                                       dead_steps=p.dead_steps, shift_thresholds=p.shift_thresholds)
    with threadpool_limits(1):
        refs = references.ReferenceSettings(ks=tuple(ks), n_latents=sp.n_latents, seed=p.seed, seeds=sp.seeds, top_n=p.top_n,
                                            kmeans_n_init=p.kmeans_n_init, kmeans_max_iter=p.kmeans_max_iter)
        res = references.run_references(
            site, refs, probe=baselines.ProbeSettings(p.probe.C, p.probe.max_iter, p.probe.n_train, p.seed),
            family=family if p.family else None, site_is_logits=info["site"] == "logits", device=device,
            workers=cpu_workers(device))  # one process per core; the bits do not depend on it

    # what the compare stage checks its own params against, and reports
    meta = {"site": info["site"], "n_latents": sp.n_latents, "eval_split": p.eval_split, "ks": ks, "seed": p.seed, "seeds": sp.seeds,
            "top_n": p.top_n, "device": device}
    with atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        baselines.save_results(res, tmp, meta)


if __name__ == "__main__":
    run(main)
