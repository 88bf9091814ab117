"""Scoring one dictionary or SAE at one sparsity k on one site, and the stored results.

What the baselines stage (mnist_sae.references fits the methods) and the compare stage (scores the
main SAE, then mnist_sae.baselines_report) share: `SiteData` (one site's train/val/eval data),
`score` (one method at one k: metrics.fidelity + purity, activation and decoder-cosine
distributions, shrinkage, probe), the sparse probe, `Results` and its files. The dictionaries
themselves are in mnist_sae.dictionaries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mnist_sae import metrics
from mnist_sae.dictionaries import nonnegative_atoms
from mnist_sae.forked import map_forked
from mnist_sae.space import InputSpace
from mnist_sae.stats import aggregate_rows

# every method's name, in report order: the reference dictionaries, the SAE family at each k, and
# the train_sae stage's SAE ("sae_main", k = 0: scored at its own L0, not matched)
REFERENCE_METHODS = ("pca", "kmeans_gain_shape", "random", "class")
FAMILY = ("sae_jumprelu", "sae_topk", "sae_relu", "sae_jumprelu_kl")
METHOD_ORDER = ("pca", "kmeans", "kmeans_gain_shape", "random", "class") + FAMILY + ("sae_main",)


# --- the site's data --------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteData:
    """What fitting and scoring need at one site. z = space.to_z(y); space.y_mean_D (the train mean
    of y) is also the mean-ablation vector of CE recovered. to_logits maps y [B, D] to logits
    [B, O] (identity at the logit site, the FFN head at the hidden site). Methods are fitted on train, SAE lambdas
    calibrated on val, everything scored on the eval split.
    """

    z_train_ND: torch.Tensor
    labels_train_N: torch.Tensor
    z_val_ND: torch.Tensor
    z_eval_ND: torch.Tensor
    labels_eval_N: torch.Tensor
    logits_eval_NO: torch.Tensor
    space: InputSpace
    to_logits: Callable[[torch.Tensor], torch.Tensor]

    @property
    def d(self) -> int:
        return self.z_train_ND.shape[1]

    @cached_property
    def z_train_mean_D(self) -> torch.Tensor:
        """The train mean of z (float64 sum): the reference dictionaries' bias b_D, and the centre
        of the relative reconstruction bias gamma."""
        return self.z_train_ND.double().mean(0).float()


def make_site(load_split: Callable, space: InputSpace, eval_split: str, to_logits: Callable) -> SiteData:
    """SiteData from `load_split(split) -> (y_ND, logits_NO, labels_N)` (collect.load_collected)."""
    space = space.to(torch.float32)

    def z(y_ND):
        if y_ND.ndim != 2 or y_ND.shape[1] != space.d:
            raise ValueError(f"make_site: activations {tuple(y_ND.shape)} do not match the {space.d}-d input space")
        return space.to_z(y_ND.float())

    y_train, _, labels_train = load_split("train")
    y_val, _, _ = load_split("val")
    y_eval, logits_eval, labels_eval = load_split(eval_split)
    return SiteData(z(y_train), labels_train.long(), z(y_val), z(y_eval), labels_eval.long(),
                    logits_eval.float(), space, to_logits)


# --- sparse probing ---------------------------------------------------------------------------


def fit_probe(feats_train_NF: np.ndarray, y_train_N: np.ndarray, *, C: float, max_iter: int, seed: int):
    """Multinomial logistic regression (scikit-learn, lbfgs) on standardised features.

    Standardising first puts raw activations, PCA codes and SAE codes on one L2 scale, so one C
    fits all; a constant column (a latent never active in the probe set) is left at zero.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    return probe.fit(np.asarray(feats_train_NF, dtype=np.float64), np.asarray(y_train_N))


def probe_logits(probe, feats_NF: np.ndarray, n_classes: int = 10) -> torch.Tensor:
    """The probe's class scores [N, C] (decision function) for metrics.accuracy; a class the probe
    never saw in training gets -inf, so column c is always class c."""
    scores_NC = np.full((len(feats_NF), n_classes), -np.inf)
    raw = probe.decision_function(np.asarray(feats_NF, dtype=np.float64))
    if raw.ndim == 1:  # two classes seen: sklearn returns the score of classes_[1] vs classes_[0]
        raw = np.stack([-raw, raw], axis=1)
    scores_NC[:, probe.classes_] = raw
    return torch.from_numpy(scores_NC)


# --- scoring: every method through the same metric functions ----------------------------------


def finite_or_none(v):
    """JSON has no NaN: an undefined number (CE recovered when the ablation costs nothing, the
    purity of a dictionary with no live atom) becomes null, inside nested dicts too ("core")."""
    if isinstance(v, dict):
        return {key: finite_or_none(x) for key, x in v.items()}
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class ProbeSettings:
    C: float  # inverse L2 strength of the logistic regression
    max_iter: int  # lbfgs iterations
    n_train: int  # train examples the probe is fitted on (a seeded subsample; all if larger)
    seed: int


def probe_train_index(n: int, settings: ProbeSettings) -> torch.Tensor:
    """The seeded subsample of train rows every probe is fitted on (the same for all methods)."""
    gen = torch.Generator().manual_seed(settings.seed)
    return torch.randperm(n, generator=gen)[:settings.n_train].sort().values


def probe_accuracy(feats_train_NF: torch.Tensor, feats_eval_NF: torch.Tensor, site: SiteData,
                   settings: ProbeSettings) -> float:
    """Eval-split accuracy of `fit_probe` fitted on `probe_train_index` rows of the train features."""
    idx = probe_train_index(feats_train_NF.shape[0], settings)
    model = fit_probe(feats_train_NF[idx].double().numpy(), site.labels_train_N[idx].numpy(),
                      C=settings.C, max_iter=settings.max_iter, seed=settings.seed)
    return metrics.accuracy(probe_logits(model, feats_eval_NF.double().numpy()), site.labels_eval_N)


@torch.no_grad()
def score(method: str, k: int, reconstruct_fn, W_dec_FD: torch.Tensor, signed: bool, site: SiteData, *,
          top_n: int, seed: int, probe: ProbeSettings | None = None) -> tuple[dict, dict]:
    """(row, dists): every metric of one method at one k on the eval split, and the raw samples of
    its distributions ("cos": pairwise decoder cosines, "mag": non-zero |activations|).

    reconstruct_fn(z_ND) -> (z_hat_ND, a_NF). The row holds metrics.fidelity on the eval split (y
    space, mean ablation = train mean of y; its "core" dict: metrics.core_metrics), the dead fraction on train (as the original study), label purity of
    the top_n and of top_n uniformly sampled activating examples averaged over live atoms (signed
    codes count as two atoms, `nonnegative_atoms`), non-zero activation quantiles, decoder
    cosines with the Welch bound, the relative reconstruction bias gamma (centred on the train
    mean of z) and, with `probe`, the eval accuracy of a logistic-regression probe on the codes.
    """
    z_hat_ND, a_NF = reconstruct_fn(site.z_eval_ND)
    _, a_train_NF = reconstruct_fn(site.z_train_ND)
    row = {"method": method, "k": k, "n_latents": int(a_NF.shape[1])}
    space = site.space
    row.update(metrics.fidelity(space.to_y(site.z_eval_ND), space.to_y(z_hat_ND), site.labels_eval_N,
                                site.logits_eval_NO, site.to_logits, space.y_mean_D,
                                z_ND=site.z_eval_ND if space.normalize else None,
                                z_hat_ND=z_hat_ND if space.normalize else None, a_NF=a_NF))
    row["dead_fraction_train"] = metrics.dead_fraction(metrics.latent_frequency(a_train_NF))
    atoms_NA = nonnegative_atoms(a_NF, signed)
    top_A = metrics.top_activation_purity(atoms_NA, site.labels_eval_N, top_n)
    gen = torch.Generator().manual_seed(seed)
    row["purity_top"] = metrics.live_mean(top_A)
    row["purity_sampled"] = metrics.live_mean(metrics.sampled_activation_purity(atoms_NA, site.labels_eval_N, top_n, gen))
    row["live_atoms"] = int((~torch.isnan(top_A)).sum())
    row["n_atoms"] = int(atoms_NA.shape[1])
    mag_M = metrics.nonzero_magnitudes(a_NF)
    row.update({f"mag_{key}": v for key, v in metrics.magnitude_summary(mag_M).items()})
    cos_P = metrics.pairwise_cosine_similarities(W_dec_FD)
    row["cos_abs_mean"] = cos_P.abs().mean().item() if cos_P.numel() else 0.0
    row["cos_abs_max"] = cos_P.abs().max().item() if cos_P.numel() else 0.0
    row["welch_bound"] = metrics.welch_bound(W_dec_FD.shape[0], W_dec_FD.shape[1])
    z_mean_D = site.z_train_mean_D
    row["gamma"] = metrics.relative_reconstruction_bias(site.z_eval_ND - z_mean_D, z_hat_ND - z_mean_D)
    if probe is not None:
        row["probe_acc"] = probe_accuracy(a_train_NF, a_NF, site, probe)
    return {key: finite_or_none(v) for key, v in row.items()}, {"cos": cos_P, "mag": mag_M}


def sae_methods(sae) -> list[tuple]:
    """[(reconstruct_fn, W_dec_FD, signed)] of each model of a (stacked) trained SAE, in seed
    order, for `add_scored`."""
    from mnist_sae.sae import reconstruct

    def method(one):
        return (lambda z_ND: reconstruct(one, z_ND)), one.W_dec_GFD[0].detach(), False

    return [method(sae.select(g)) for g in range(sae.n_models)]


# --- results and their files ------------------------------------------------------------------


@dataclass
class Results:
    rows: list[dict]  # one per (method, k), references (kmeans, sae_main) with their own k
    dists: dict[str, dict]  # "method@k" -> {"cos": pairwise decoder cosines, "mag": |activations|}
    probe_raw_acc: float | None  # the probe on the raw site activations z
    family: dict[str, dict]  # "method@k" -> training info (lambda, calibrated val L0, shift)


def add_scored(res: Results, method: str, k: int, fits: list[tuple], site: SiteData, *, top_n: int, seed: int,
               probe: ProbeSettings | None, log=print, workers: int = 1) -> None:
    """`score` one method fitted once per seed (fits: [(reconstruct_fn, W_dec_FD, signed)], in seed
    order) and append one row to `res`: the mean over seeds with 95% t-interval half-widths
    (mnist_sae.stats.aggregate_rows), and the first seed's distributions."""
    add_scored_all(res, [(method, k, fits)], site, top_n=top_n, seed=seed, probe=probe, log=log, workers=workers)


def add_scored_all(res: Results, entries: list[tuple[str, int, list[tuple]]], site: SiteData, *, top_n: int,
                   seed: int, probe: ProbeSettings | None, log=print, workers: int = 1) -> None:
    """`add_scored` for each (method, k, fits) entry, rows appended in entry order. Every (entry,
    seed) score is an independent job (its own seeded generator): they run in `workers` forked
    processes (mnist_sae.forked), and the rows do not depend on `workers`."""
    jobs = [(method, k, fit) for method, k, fits in entries for fit in fits]
    runs = map_forked(lambda job: score(job[0], job[1], *job[2], site, top_n=top_n, seed=seed, probe=probe), jobs,
                      workers)
    start = 0
    for method, k, fits in entries:
        mine, start = runs[start:start + len(fits)], start + len(fits)
        row = aggregate_rows([r for r, _ in mine])
        res.rows.append(row)
        res.dists[f"{method}@{k}"] = mine[0][1]
        log(f"{method:18s} k={k}: L0 {row['l0']:.3f}  mse_norm {row['mse_norm']:.4f}  ce_recovered {row['ce_recovered']}"
            f"  ({len(mine)} seed{'s' if len(mine) > 1 else ''})")


ROWS_FILE, DISTS_DIR = "rows.json", "dists"


def save_results(res: Results, out_dir, meta: dict) -> None:
    """out_dir/rows.json (rows, probe_raw_acc, family, the order of dists, and `meta`: what the
    results were made with; key order kept, floats exact through repr) and one
    out_dir/dists/<method>@<k>.<cos|mag>.npy per distribution (dtype kept). .npy rather than one
    .npz: np.savez stamps the write time into the zip, and cached outputs are bit-reproducible."""
    out_dir = Path(out_dir)
    doc = {"meta": meta, "rows": res.rows, "probe_raw_acc": res.probe_raw_acc, "family": res.family,
           "dists": {name: list(d) for name, d in res.dists.items()}}
    (out_dir / ROWS_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / DISTS_DIR).mkdir()
    for name, d in res.dists.items():
        for key, v_M in d.items():
            np.save(out_dir / DISTS_DIR / f"{name}.{key}.npy", v_M.numpy())


def load_results(out_dir) -> tuple[Results, dict]:
    """(Results, meta) as `save_results` wrote them: the same rows, arrays and order."""
    out_dir = Path(out_dir)
    doc = json.loads((out_dir / ROWS_FILE).read_text())
    dists = {name: {key: torch.from_numpy(np.load(out_dir / DISTS_DIR / f"{name}.{key}.npy")) for key in keys}
             for name, keys in doc["dists"].items()}
    return Results(doc["rows"], dists, doc["probe_raw_acc"], doc["family"]), doc["meta"]
