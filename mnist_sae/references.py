"""The baselines stage's reference methods at matched sparsity k: the dictionaries of
mnist_sae.dictionaries fitted on train and an SAE family trained at each k, all scored on the eval
split by mnist_sae.baselines.score (the main SAE is scored by the compare stage with the same
function)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mnist_sae.baselines import FAMILY, ProbeSettings, Results, SiteData, add_scored_all, probe_accuracy, sae_methods
from mnist_sae.dictionaries import (Dictionary, class_directions, fit_kmeans, fit_pca, kmeans_dictionary,
                                    pca_dictionary, random_directions, topk_dictionary)
from mnist_sae.forked import map_forked
from mnist_sae.sae import SAEConfig


# --- the reference methods --------------------------------------------------------------------


def reference_dictionaries(site: SiteData, ks: list[int], n_latents: int, *, seed: int, kmeans_n_init: int,
                           kmeans_max_iter: int, n_classes: int = 10,
                           seeded_only: bool = False) -> list[tuple[str, int, Dictionary]]:
    """[(method, k, Dictionary)], all fitted on train: ("kmeans", 1, nearest centroid) first, then
    for each k: PCA top-k, k-means gain-shape, random directions (seeded), class directions (only
    for k <= n_classes: there are n_classes of them). seeded_only: the methods whose fit depends on
    the seed, without PCA and class directions (deterministic: a further seed would refit them alike)."""
    if max(ks) > min(site.d, n_latents):
        raise ValueError(f"reference_dictionaries: k = {max(ks)} exceeds min(D = {site.d}, n_latents = {n_latents})")
    mean_D = site.z_train_mean_D
    C_FD = fit_kmeans(site.z_train_ND, n_latents, seed, kmeans_n_init, kmeans_max_iter)
    W_rand_FD = random_directions(n_latents, site.d, torch.Generator().manual_seed(seed))
    if not seeded_only:
        components_KD, pca_mean_D = fit_pca(site.z_train_ND, max(ks))
        W_class_CD = class_directions(site.z_train_ND, site.labels_train_N, mean_D, n_classes)
    out = [("kmeans", 1, kmeans_dictionary(C_FD, mean_D))]
    for k in ks:
        if not seeded_only:
            out.append(("pca", k, pca_dictionary(components_KD[:k], pca_mean_D)))
        out += [("kmeans_gain_shape", k, topk_dictionary(C_FD - mean_D, mean_D, k)),
                ("random", k, topk_dictionary(W_rand_FD, mean_D, k))]
        if k <= n_classes and not seeded_only:
            out.append(("class", k, topk_dictionary(W_class_CD, mean_D, k)))
    return out


# --- the SAE family at matched k (training and calibration from mnist_sae.sae_train) ----------

@dataclass(frozen=True)
class FamilySettings:
    """How the baselines stage trains its SAE family (smaller budget than train_sae; see report)."""

    cfg: SAEConfig  # the main SAE's config (n_latents, ste, tau, ...); arch, d_in and k are set per member
    lr: float
    epochs: int
    batch_size: int
    lambdas: tuple[float, ...]  # ascending calibration grid (jumprelu L0 and relu L1 share it)
    refine: int  # bisection steps after the grid (mnist_sae.sae_train.calibrate)
    kl_coef: float  # weight of the KL term of sae_jumprelu_kl
    aux_coef: float  # topk AuxK weight
    dead_steps: int  # topk: steps without firing before a latent counts as dead for AuxK
    shift_thresholds: bool  # jumprelu: shift all thresholds so that the val L0 is exactly k


def family_variants(site_is_logits: bool) -> tuple[str, ...]:
    """The KL term compares softmax(y) with softmax(y_hat): defined at the logit site only."""
    return FAMILY if site_is_logits else tuple(v for v in FAMILY if v != "sae_jumprelu_kl")


def train_family_member(variant: str, k: int, site: SiteData, settings: FamilySettings,
                        seeds: tuple[int, ...], device: str = "cpu"):
    """(sae, info): the family's SAE at sparsity k, one stacked model per seed, by mnist_sae.fit's
    recipe (lambda calibrated with the first seed).

    jumprelu / relu: lambda = sae_train.calibrate(target_l0 = k) on val, then one SAE trained
    with it (same seed, init and batches as the calibration run); jumprelu then optionally
    shifts its thresholds to val L0 = k exactly (sae_train.shift_thresholds_). topk: k active
    latents by construction, no lambda. sae_jumprelu_kl adds kl_coef * KL(softmax(y) ||
    softmax(y_hat)) to the loss (Braun et al. 2024). info: lambda, calibrated val L0, shift.
    """
    import dataclasses

    from mnist_sae.fit import FitPlan, fit_sae
    from mnist_sae.sae_train import TrainSettings

    arch = {"sae_jumprelu": "jumprelu", "sae_jumprelu_kl": "jumprelu", "sae_relu": "relu", "sae_topk": "topk"}[variant]
    base = settings.cfg
    cfg = dataclasses.replace(base, arch=arch, d_in=site.d, k=k if arch == "topk" else min(base.k, base.n_latents))
    kl = settings.kl_coef if variant == "sae_jumprelu_kl" else 0.0
    train_settings = TrainSettings(lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size,
                                   kl_coef=kl, aux_coef=settings.aux_coef, dead_steps=settings.dead_steps,
                                   log_every=10**9)
    plan = FitPlan(target_l0=float(k), train=train_settings, seeds=tuple(seeds), lambdas=tuple(settings.lambdas),
                   refine=settings.refine, shift_thresholds=settings.shift_thresholds)
    sae, fitted = fit_sae(cfg, site.z_train_ND, site.z_val_ND, plan, device=device, space=site.space)
    info = {"lambda": fitted.lam, "calibrated_l0_val": None if fitted.calibration is None else fitted.calibration.l0,
            "theta_shift": fitted.theta_shift}
    return sae, info


def train_family(members: list[tuple[str, int]], site: SiteData, settings: FamilySettings, seeds: tuple[int, ...],
                 device: str = "cpu", workers: int = 1) -> list:
    """[(sae, info)] of train_family_member for each (variant, k), in order, trained in `workers`
    forked processes (mnist_sae.forked; forked.cpu_workers(device) is 1 off the CPU). Each member
    is independent (its own seeded generators, one thread), so the results do not depend on
    `workers`."""
    return map_forked(lambda member: train_family_member(*member, site, settings, seeds, device), members, workers)


@dataclass(frozen=True)
class ReferenceSettings:
    """What the reference dictionaries are fitted and scored with."""

    ks: tuple[int, ...]  # matched sparsities
    n_latents: int  # k-means centroids and random directions (the main SAE's dictionary size)
    seed: int  # the first seed; scoring (purity sampling, probes) always uses it
    seeds: int = 1  # seeded methods are fitted with seed, seed + 1, ..., seed + seeds - 1
    top_n: int = 50  # examples per latent in the purity metrics
    kmeans_n_init: int = 3  # k-means restarts
    kmeans_max_iter: int = 300  # Lloyd iterations per restart


def run_references(site: SiteData, refs: ReferenceSettings, *, probe: ProbeSettings | None,
                   family: FamilySettings | None, site_is_logits: bool = True, device: str = "cpu",
                   workers: int = 1, log=print) -> Results:
    """Fit every reference method on train (and train the SAE family when `family` is given),
    score all on the eval split through `score`. The main SAE is not here: the compare stage adds
    its row with `add_scored`, so a new main SAE refits nothing.

    Methods that depend on a seed (k-means, gain-shape k-means, random directions, the SAE family)
    are fitted with seeds seed, seed + 1, ..., seed + seeds - 1 (the family's seeds trained at once
    as one stacked model); their row holds the mean over seeds and a 95% t-interval half-width per
    metric (mnist_sae.stats.aggregate_rows), their distributions are the first seed's. PCA and
    class directions have no seed: one fit. Scoring (purity sampling, probes) always uses `seed`.
    The family's members train, and every fit is scored, in `workers` forked processes
    (mnist_sae.forked; the bits do not depend on it)."""
    res = Results([], {}, None, {})
    if probe is not None:
        res.probe_raw_acc = probe_accuracy(site.z_train_ND, site.z_eval_ND, site, probe)
    seed, ks = refs.seed, list(refs.ks)
    kw = dict(site=site, top_n=refs.top_n, seed=seed, probe=probe, log=log)
    seed_list = tuple(range(seed, seed + refs.seeds))
    fits: dict[tuple[str, int], list] = {}  # (method, k) -> [(reconstruct_fn, W_dec_FD, signed)] in seed order
    for s in seed_list:
        for method, k, dic in reference_dictionaries(site, ks, refs.n_latents, seed=s, kmeans_n_init=refs.kmeans_n_init,
                                                     kmeans_max_iter=refs.kmeans_max_iter, seeded_only=s != seed):
            fits.setdefault((method, k), []).append((dic.reconstruct, dic.W_dec_FD, dic.signed))
    entries = [(method, k, method_fits) for (method, k), method_fits in fits.items()]
    if family is not None:
        members = [(variant, k) for k in ks for variant in family_variants(site_is_logits)]
        for (variant, k), (sae, info) in zip(members, train_family(members, site, family, seed_list, device, workers)):
            res.family[f"{variant}@{k}"] = info
            entries.append((variant, k, sae_methods(sae)))
    # every (method, k, seed) score is its own job: one pool for all of them
    add_scored_all(res, entries, workers=workers, **kw)
    return res
