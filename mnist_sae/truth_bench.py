"""The planted-truth benchmark: every SAE variant and dictionary baseline fitted at matched L0 on
planted activations, scored against the truth with mnist_sae.truth, aggregated over generator seeds.

Per generator seed and target L0 k: fit on train, calibrate (SAE lambdas, JumpReLU threshold
shift) on val, score on test.

- SAEs (mnist_sae.sae, trained by mnist_sae.sae_train): jumprelu with the sigmoid surrogate and
  with the rectangle pseudo-derivative, relu + L1 (lambda calibrated to val L0 = k), topk (k).
- Dictionaries (mnist_sae.dictionaries): PCA top-k (k atoms), k-means centroid directions and random
  unit directions (n_latents atoms each) with the top-k least-squares encoder (L0 = k).

`BenchSettings.archs` / `.baselines` pick a subset (default: all): the classic 512/256 toy
(README, "Planted ground truth") fits only the cheaper methods.

The SAE input is the raw activation x (no per-dimension scaling, which would bend the planted
directions); b_dec starts at the train mean.
"""

from __future__ import annotations

import numpy as np
import torch

# the dictionary baselines (the same ones the baselines stage fits)
from mnist_sae.dictionaries import fit_kmeans, fit_pca, pca_dictionary, random_directions, topk_dictionary
from mnist_sae.metrics import core_metrics
from mnist_sae.sae import SAE, SAEConfig, reconstruct
from mnist_sae.fit import FitPlan, fit_sae
from mnist_sae.sae_train import TrainSettings
from mnist_sae.settings import BASELINES, SAE_VARIANTS, BenchSettings
from mnist_sae.truth import truth_scores

# baselines the headline compares with: those with as many atoms as the SAEs. PCA has only L0
# atoms, so its MCC averages over L0 matched pairs, not min(F, T): on the 512/256 toy it scored
# MCC 0.91 while recovering none of the features, and would have "won" the headline
HEADLINE_BASELINES = ("kmeans", "random")
METHODS = SAE_VARIANTS + BASELINES
METRICS = ("mcc", "mmcs", "f1", "precision", "recall", "recovered", "uniqueness", "l0")


def fit_variant(variant: str, k: int, z_train_ND: torch.Tensor, z_val_ND: torch.Tensor, s: BenchSettings, seed: int,
            device: str = "cpu") -> tuple[SAE, dict]:
    """One SAE at sparsity k: calibrate lambda on val (jumprelu, relu), train with it (same seed,
    init and batches as calibration), shift JumpReLU thresholds to val L0 = k; topk has k by
    construction. Returns (sae on CPU, {"lambda", "calibrated_l0_val", "theta_shift"})."""
    arch = {"sae_jumprelu_sigmoid": "jumprelu", "sae_jumprelu_rectangle": "jumprelu", "sae_relu": "relu",
            "sae_topk": "topk"}[variant]
    cfg = SAEConfig(arch=arch, d_in=z_train_ND.shape[1], n_latents=s.n_latents,
                    ste="rectangle" if variant == "sae_jumprelu_rectangle" else "sigmoid", tau=s.tau,
                    bandwidth=s.bandwidth, theta_init=s.theta_init, k=k if arch == "topk" else 1,
                    aux_k=min(s.aux_k, s.n_latents))
    settings = TrainSettings(lr=s.lr, epochs=s.epochs, batch_size=s.batch_size, aux_coef=s.aux_coef,
                             dead_steps=s.dead_steps, lr_decay=s.lr_decay, log_every=10**9)
    plan = FitPlan(target_l0=float(k), train=settings, seeds=(seed,), lambdas=tuple(s.lambdas), refine=s.refine,
                   shift_thresholds=s.shift_thresholds)
    sae, res = fit_sae(cfg, z_train_ND, z_val_ND, plan, device=device)
    return sae, {"lambda": res.lam, "calibrated_l0_val": None if res.calibration is None else res.calibration.l0,
                 "theta_shift": res.theta_shift[0]}


def score_seed(x_train_ND: np.ndarray, x_val_ND: np.ndarray, x_test_ND: np.ndarray, c_test_NT: np.ndarray,
               W_true_TD: np.ndarray, ks: list[int], s: BenchSettings, seed: int, device: str = "cpu",
               log=print) -> list[dict]:
    """Rows {"method", "k", "l0" (mean test L0), mcc, mmcs, recovered, uniqueness, precision,
    recall, f1, "core" (metrics.core_metrics of the test reconstruction, the head-free subset: no
    model reads planted activations), and for SAEs lambda / theta_shift} for every method of
    s.baselines and s.archs at every k, on test, in the order of BASELINES then SAE_VARIANTS."""
    z_train_ND, z_val_ND, z_test_ND = (torch.from_numpy(np.asarray(x, np.float32)) for x in (x_train_ND, x_val_ND, x_test_ND))
    if max(ks) > min(z_train_ND.shape[1], s.n_latents):
        raise ValueError(f"score_seed: k = {max(ks)} exceeds min(D = {z_train_ND.shape[1]}, n_latents = {s.n_latents})")
    rows = []

    def add(method, k, W_dec_FD, recon, extra=None):
        z_hat_ND, a_NF = (t.detach() for t in recon)
        core = core_metrics(z_test_ND, z_hat_ND, a_NF)
        a_NF = a_NF.numpy()
        row = {"method": method, "k": k, "l0": float((a_NF != 0).sum(1).mean())}
        row.update(truth_scores(W_dec_FD.detach().numpy(), W_true_TD, a_NF, c_test_NT, s.recovered_cosine))
        row.update(extra or {})
        row["core"] = core
        rows.append(row)
        log(f"seed {seed} k={k} {method:24s} L0 {row['l0']:.2f}  MCC {row['mcc']:.3f}  MMCS {row['mmcs']:.3f}  "
            f"F1 {row['f1']:.3f}  recovered {row['recovered']:.2f}")

    unknown = sorted(set(s.archs) - set(SAE_VARIANTS)) + sorted(set(s.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"score_seed: unknown methods {unknown}; known: {METHODS}")
    mean_D = z_train_ND.double().mean(0).float()
    # each baseline fitted once per seed (PCA at the largest k), and only when asked for
    if "pca" in s.baselines:
        components_KD, pca_mean_D = fit_pca(z_train_ND, max(ks))
    if "kmeans" in s.baselines:
        C_FD = fit_kmeans(z_train_ND, s.n_latents, seed, s.kmeans_n_init, s.kmeans_max_iter)
    W_rand_FD = random_directions(s.n_latents, z_train_ND.shape[1], torch.Generator().manual_seed(seed))

    def dictionary(method, k):
        if method == "pca":
            return pca_dictionary(components_KD[:k], pca_mean_D)
        return topk_dictionary(C_FD - mean_D if method == "kmeans" else W_rand_FD, mean_D, k)

    for k in ks:
        for method in (m for m in BASELINES if m in s.baselines):
            dic = dictionary(method, k)
            add(method, k, dic.W_dec_FD, dic.reconstruct(z_test_ND))
        for variant in (v for v in SAE_VARIANTS if v in s.archs):
            sae, info = fit_variant(variant, k, z_train_ND, z_val_ND, s, seed, device)
            add(variant, k, sae.W_dec_GFD[0], reconstruct(sae, z_test_ND), info)
    return rows


# --- over seeds ---------------------------------------------------------------------------------


def aggregate(rows_by_seed: dict[int, list[dict]]) -> dict:
    """{method: {"k<k>": {metric: {"mean", "std", "values"}, "core": {name: {...}}}}}: mean and
    population std (ddof 0) over generator seeds of every metric in METRICS and, when the rows
    carry it, of every core metric."""
    def stats(vals):
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": [float(v) for v in vals]}

    out: dict = {}
    seeds = sorted(rows_by_seed)
    keys = sorted({(r["method"], r["k"]) for rows in rows_by_seed.values() for r in rows})
    for method, k in keys:
        rows = [r for s in seeds for r in rows_by_seed[s] if r["method"] == method and r["k"] == k]
        cell = {m: stats([r[m] for r in rows]) for m in METRICS}
        if all("core" in r for r in rows):
            cell["core"] = {name: stats([r["core"][name] for r in rows]) for name in rows[0]["core"]}
        out.setdefault(method, {})[f"k{k}"] = cell
    return out


def headline(agg: dict) -> dict:
    """The best SAE (variant, k) and the best full-size baseline (HEADLINE_BASELINES: method, k) by
    mean MCC over seeds, and the margin MCC_sae - MCC_baseline: its mean and std over seeds (the two cells' per-seed values
    paired by seed)."""
    def best(methods):
        cells = [(agg[m][kk]["mcc"]["mean"], m, kk) for m in methods if m in agg for kk in agg[m]]
        return max(cells) if cells else None

    bs, bb = best(SAE_VARIANTS), best(HEADLINE_BASELINES)
    if bs is None or bb is None:
        return {}
    sae_v = np.array(agg[bs[1]][bs[2]]["mcc"]["values"])
    base_v = np.array(agg[bb[1]][bb[2]]["mcc"]["values"])
    margin = sae_v - base_v
    return {"best_sae": {"method": bs[1], "k": int(bs[2][1:]), "mcc": bs[0], "mcc_std": float(sae_v.std())},
            "best_baseline": {"method": bb[1], "k": int(bb[2][1:]), "mcc": bb[0], "mcc_std": float(base_v.std())},
            "margin": float(margin.mean()), "margin_std": float(margin.std()), "n_seeds": int(len(margin))}


def _ks(agg: dict) -> list[int]:
    return sorted({int(kk[1:]) for cells in agg.values() for kk in cells})


def markdown_report(agg: dict, head: dict, notes: list[str]) -> str:
    """metrics/TRUTH.md: one table per k (mean +- std over seeds) and sentences made from the numbers."""
    from tabulate import tabulate

    from mnist_sae.evaluate import CORE_NOTE, core_table

    cols = ("l0", "mcc", "mmcs", "f1", "recovered", "uniqueness")
    out = ["# Planted ground truth", "", "Generated by `stages/truth.py`; do not edit by hand.", ""]
    out += [f"- {n}" for n in notes] + [""]
    if head:
        bs, bb = head["best_sae"], head["best_baseline"]
        out += [f"**{bs['method']}** at L0 {bs['k']} recovers most of the truth: MCC {bs['mcc']:.3f} +- {bs['mcc_std']:.3f} "
                f"vs the best baseline {bb['method']} at L0 {bb['k']} {bb['mcc']:.3f} +- {bb['mcc_std']:.3f}, a margin of "
                f"{head['margin']:+.3f} +- {head['margin_std']:.3f} (mean +- std over {head['n_seeds']} generator seeds).", ""]
    for k in _ks(agg):
        body, best = [], None
        for m in METHODS:
            cell = agg.get(m, {}).get(f"k{k}")
            if cell is None:
                continue
            body.append([m] + [f"{cell[c]['mean']:.3f} +- {cell[c]['std']:.3f}" for c in cols])
            if best is None or cell["mcc"]["mean"] > best[1]["mcc"]["mean"]:
                best = (m, cell)
        out += [f"## L0 = {k}", "", tabulate(body, headers=["method"] + list(cols), tablefmt="github",
                                             disable_numparse=True), ""]
        if best is not None:
            out += [f"At L0 = {k}, {best[0]} has the highest MCC ({best[1]['mcc']['mean']:.3f}) and recovers "
                    f"{best[1]['recovered']['mean']:.0%} of the true features at |cos| >= the threshold.", ""]
        core = {m: {name: v["mean"] for name, v in agg[m][f"k{k}"]["core"].items()}
                for m in METHODS if "core" in agg.get(m, {}).get(f"k{k}", {})}
        if core:
            out += [f"Core metrics at L0 = {k} (SAEBench, head-free; mean over seeds, test split):", "",
                    core_table(core, "method"), ""]
    if any("core" in cell for cells in agg.values() for cell in cells.values()):
        out += [CORE_NOTE + " No model reads the planted activations, so no CE / KL scores.", ""]
    return "\n".join(out)


FRONTIER_COLUMNS = ("l0", "mcc", "f1", "mcc_std", "k")


def frontier_csvs(agg: dict) -> dict[str, str]:
    """{"frontier_<method>.csv": text}, one per method in METHODS (header only if it did not run),
    one line per k: mean test L0, mean MCC, mean F1, MCC std over seeds, target k."""
    out = {}
    for m in METHODS:
        lines = [",".join(FRONTIER_COLUMNS)]
        for k in _ks(agg):
            cell = agg.get(m, {}).get(f"k{k}")
            if cell is not None:
                lines.append(",".join(repr(v) for v in (cell["l0"]["mean"], cell["mcc"]["mean"], cell["f1"]["mean"],
                                                        cell["mcc"]["std"], k)))
        out[f"frontier_{m}.csv"] = "\n".join(lines) + "\n"
    return out

