"""Evaluation of an SAE on an activation cache, with no classifier head needed.

Per split: metrics.reconstruction (MSE, normalized MSE, explained variance, cosine, L2 ratio,
relative reconstruction bias, L0, dead and dense fractions) and metrics.core_metrics (SAEBench's
core set, under "core"), overall and per layer when the cache has a layer column. With the
transformer: spliced fidelity (mnist_sae.vit.spliced_logits), the SAE's reconstruction fed back at
each layer at every token, and the test split's per-layer core metrics gain the CE / KL scores
against zero ablation of the residual at that layer. Probes: logistic regression on SAE
codes vs raw activations, per layer, same rows and budget, with per-class precision / recall / F1.
Feature usage: each latent's firings by layer, by token and by label on the test split. With a
planted source (the cache carries the truth): the ground-truth metrics of mnist_sae.truth (MMCS,
MCC, recovered fraction, uniqueness, mean precision / recall / F1 of firing) on the test split.
"""

from __future__ import annotations

import numpy as np
import torch

from mnist_sae import metrics, truth
from mnist_sae.acts import Cache, Truth
from mnist_sae.baselines import fit_probe
from mnist_sae.evaluate import CORE_NOTE, core_table
from mnist_sae.sae import SAE, reconstruct
from mnist_sae.space import InputSpace


class SplitRecon:
    """x (source units), z (standardized), their reconstructions and the codes of one split."""

    def __init__(self, cache: Cache, split: str, sae: SAE, mean_D: torch.Tensor, std_D: torch.Tensor,
                 keep_N: np.ndarray | None = None):
        """keep_N (bool over the split's rows): only those rows (e.g. one layer's)."""
        self.rows_N = cache.splits[split] if keep_N is None else cache.splits[split][keep_N]
        self.x_ND = torch.from_numpy(cache.load_rows(self.rows_N))
        space = InputSpace(mean_D, std_D, True)
        self.z_ND = space.to_z(self.x_ND)
        self.z_hat_ND, self.a_NF = (t.cpu() for t in reconstruct(sae, self.z_ND))  # the SAE may sit on CUDA
        self.x_hat_ND = space.to_y(self.z_hat_ND)

    def metrics(self, centre_D: torch.Tensor, dense_threshold: float, keep_N: np.ndarray | None = None) -> dict:
        if keep_N is None:
            keep_N = slice(None)
        keep_N = torch.as_tensor(keep_N) if not isinstance(keep_N, slice) else keep_N
        return metrics.reconstruction(self.x_ND[keep_N], self.x_hat_ND[keep_N], self.z_ND[keep_N],
                                      self.z_hat_ND[keep_N], self.a_NF[keep_N], centre_D, dense_threshold)

    def core(self, keep_N: np.ndarray | None = None, **head) -> dict:
        """metrics.core_metrics of the kept rows in the source's units; `head` = the labels and
        clean / spliced / zero-ablated logits of core_metrics (spliced_head), or nothing."""
        keep_N = slice(None) if keep_N is None else torch.as_tensor(keep_N)
        return metrics.core_metrics(self.x_ND[keep_N], self.x_hat_ND[keep_N], self.a_NF[keep_N], **head)


def sae_replacer(sae: SAE, mean_D: torch.Tensor, std_D: torch.Tensor):
    """r_BSD -> the SAE's reconstruction of every token's residual, in the residual's units."""
    space = InputSpace(mean_D, std_D, True)

    def replace(r_BSD: torch.Tensor) -> torch.Tensor:
        z_hat_ND = reconstruct(sae, space.to_z(r_BSD.reshape(-1, r_BSD.shape[-1])))[0].cpu()
        return space.to_y(z_hat_ND).reshape(r_BSD.shape)
    return replace


def splice_summary(clean_NO: torch.Tensor, spliced_NO: torch.Tensor, ablated_NO: torch.Tensor, y_N: torch.Tensor) -> dict:
    """Accuracy and CE of the clean and spliced model, the drop, KL(clean || spliced) and CE
    recovered against mean ablation (metrics.ce_recovered)."""
    out = {"acc_clean": metrics.accuracy(clean_NO, y_N), "acc_spliced": metrics.accuracy(spliced_NO, y_N),
           "ce_clean": metrics.cross_entropy(clean_NO, y_N), "ce_spliced": metrics.cross_entropy(spliced_NO, y_N),
           "ce_ablated": metrics.cross_entropy(ablated_NO, y_N), "kl": metrics.kl_divergence(clean_NO, spliced_NO),
           "agreement": metrics.agreement(clean_NO, spliced_NO)}
    out["acc_drop_pp"] = 100.0 * (out["acc_clean"] - out["acc_spliced"])
    out["ce_increase"] = out["ce_spliced"] - out["ce_clean"]
    out["ce_recovered"] = metrics.ce_recovered(out["ce_clean"], out["ce_spliced"], out["ce_ablated"])
    return out


def splice_layers(model, sae: SAE, mean_D: torch.Tensor, std_D: torch.Tensor, x_EI: torch.Tensor, y_E: torch.Tensor,
                  train: SplitRecon, cache: Cache, layers: list[int]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({layer: splice_summary}, {layer: spliced_head}) for images x_EI: the SAE's reconstruction
    spliced in after each layer at every token, the mean ablation (the train rows' mean per token
    at that layer) and the zero ablation (the residual after that layer set to 0, SAEBench's).
    spliced_head holds core_metrics' keyword arguments: labels_E, logits_{clean,sae,zero}_EO."""
    from mnist_sae.vit import spliced_logits

    out, heads = {}, {}
    for l in layers:
        at_l = cache.meta["layer"][train.rows_N] == l
        tok_N = torch.from_numpy(cache.meta["token"][train.rows_N][at_l])
        x_l_ND = train.x_ND[torch.from_numpy(at_l)]
        mean_SD = torch.stack([x_l_ND[tok_N == t].mean(0) for t in range(model.cfg.n_tokens)])
        clean_NO, spliced_NO = spliced_logits(model, x_EI, l, sae_replacer(sae, mean_D, std_D))
        _, ablated_NO = spliced_logits(model, x_EI, l, lambda r_BSD: mean_SD.expand_as(r_BSD))
        _, zero_NO = spliced_logits(model, x_EI, l, torch.zeros_like)
        out[str(l)] = splice_summary(clean_NO, spliced_NO, ablated_NO, y_E)
        heads[str(l)] = {"labels_E": y_E, "logits_clean_EO": clean_NO, "logits_sae_EO": spliced_NO,
                         "logits_zero_EO": zero_NO}
    return out, heads


def truth_metrics(sae: SAE, std_D: torch.Tensor, true: Truth, rows_N: np.ndarray, a_NF: torch.Tensor,
                  threshold: float = truth.RECOVERED_COSINE) -> dict:
    """mnist_sae.truth.truth_scores of the SAE's dictionary against the planted features on the
    given rows. The SAE reads z = (x - mean) / std, so x_hat = mean + std * (b_dec + a @ W_dec):
    latent f's atom in the cache's units is std_D * w_f (elementwise), and that is what is
    compared with the true directions (comparing w_f itself would bend every direction by the
    per-dimension scaling)."""
    W_dec_FD = (sae.W_dec_GFD[0].detach().cpu() * std_D).double().numpy()
    out = truth.truth_scores(W_dec_FD, true.W_true_TD, a_NF.numpy(), true.codes(rows_N), threshold)
    return {**out, "recovered_cosine": threshold, "n_features": int(true.W_true_TD.shape[0])}


def score_layer_saes(layer_ckpts: dict, cache: Cache, dense_threshold: float, device: str = "cpu", splice=None,
                     keep_N: np.ndarray | None = None) -> dict:
    """{layer: {"test": SplitRecon metrics, "spliced": splice(...)}} of the per-layer SAEs of
    acts_sae ({layer: checkpoint}), each on its own layer's test rows (of those keep_N keeps);
    splice(sae, mean_D, std_D, layer) -> splice_summary, or None without a head."""
    out = {}
    for l, c in sorted(layer_ckpts.items()):
        sae = SAE.from_checkpoint(c["sae"]).eval().to(device)
        at_l = cache.meta["layer"][cache.splits["test"]] == int(l)
        r = SplitRecon(cache, "test", sae, c["mean_D"], c["std_D"], at_l if keep_N is None else at_l & keep_N)
        out[l] = {"test": r.metrics(c["mean_D"], dense_threshold)}
        if splice is not None:
            out[l]["spliced"] = splice(sae, c["mean_D"], c["std_D"], int(l))
    return out


def row_subsample(n: int, max_rows: int, seed: int) -> np.ndarray | None:
    """A bool mask over n rows keeping a seeded uniform subsample of max_rows of them (in order),
    or None when all n fit: what acts_eval scores of a split too large to hold."""
    if n <= max_rows:
        return None
    keep_N = np.zeros(n, dtype=bool)
    keep_N[np.random.default_rng(seed).choice(n, max_rows, replace=False)] = True
    return keep_N


def probe_rows(cache: Cache, rows_N: np.ndarray, layer: int | None, token: int | None) -> np.ndarray:
    """Positions (into rows_N, rows of the cache) of the rows of one layer (None: all) and token
    (None: all)."""
    keep_N = np.ones(len(rows_N), dtype=bool)
    if layer is not None:
        keep_N &= cache.meta["layer"][rows_N] == layer
    if token is not None:
        keep_N &= cache.meta["token"][rows_N] == token
    return np.flatnonzero(keep_N)


def compare_probes(feats_train: dict[str, np.ndarray], y_train_N: np.ndarray, feats_test: dict[str, np.ndarray],
                   y_test_N: np.ndarray, n_classes: int, *, C: float, max_iter: int, seed: int) -> dict:
    """{name: metrics.per_class_prf of a logistic probe fitted on feats_train[name]}: every
    feature set is fitted on the same rows with the same settings (baselines.fit_probe)."""
    out = {}
    for name in feats_train:
        probe = fit_probe(feats_train[name], y_train_N, C=C, max_iter=max_iter, seed=seed)
        out[name] = metrics.per_class_prf(y_test_N, probe.predict(np.asarray(feats_test[name], dtype=np.float64)),
                                          n_classes)
    return out


def feature_usage(a_NF: torch.Tensor, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"count_F": rows each latent fires on, name_FV: firings of latent f on rows with column
    value v, for each named integer column (layer, token, label...)}, float64."""
    fired_NF = (a_NF != 0).double()
    out = {"count_F": fired_NF.sum(0).numpy()}
    for name, col_N in columns.items():
        onehot_NV = torch.nn.functional.one_hot(torch.from_numpy(col_N).long(), int(col_N.max()) + 1).double()
        out[name] = (fired_NF.T @ onehot_NV).numpy()
    return out


def usage_table(usage: dict[str, np.ndarray], n_rows: int, top: int) -> list[dict]:
    """The `top` most-used latents: firing rate, and for each column its preferred value and the
    share of the latent's firings there (label purity for the label column)."""
    order_F = np.argsort(-usage["count_F"], kind="stable")[:top]
    rows = []
    for f in order_F:
        if usage["count_F"][f] == 0:
            break
        row = {"latent": int(f), "rate": float(usage["count_F"][f] / n_rows)}
        for name, c_FV in usage.items():
            if name != "count_F":
                v = int(np.argmax(c_FV[f]))
                row[name] = v
                row[f"{name}_share"] = float(c_FV[f, v] / c_FV[f].sum())
        rows.append(row)
    return rows


def usage_shares(usage: dict[str, np.ndarray], latents: list[int], name: str) -> list[dict]:
    """Long-form rows {latent, name, share, count} for a heat map latent x value of column `name`:
    share = firings of latent f on rows with that value / all firings of f (0 for a latent that
    never fires). Latents keep the given order (most used first); a column the cache lacks gives
    one value "all" (share 1 where the latent fires)."""
    c_FV = usage[name][latents] if name in usage else usage["count_F"][latents][:, None]
    values = [str(v) for v in range(c_FV.shape[1])] if name in usage else ["all"]
    share_FV = c_FV / np.maximum(c_FV.sum(1, keepdims=True), 1)
    return [{"latent": str(f), name: v, "share": float(share_FV[i, j]), "count": int(c_FV[i, j])}
            for i, f in enumerate(latents) for j, v in enumerate(values)]


USAGE_MAPS = ("layer", "token", "label")  # the heat maps of dvc.yaml's top-level plots acts_usage_by_*


def write_plot_csvs(folder, test: dict, spliced: dict, usage: dict[str, np.ndarray], latents: list[int]) -> None:
    """folder/per_layer.csv (test EV, L0 and spliced drop per layer) and usage_<column>.csv for
    each of USAGE_MAPS (usage_shares rows, drawn by the vega template .dvc/plots/heatmap.json)."""
    import csv
    from pathlib import Path

    folder = Path(folder)
    with open(folder / "per_layer.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer", "explained_variance", "l0", "acc_drop_pp"])
        for l, m in (test["per_layer"] or {"all": test}).items():
            w.writerow([l, f"{m['explained_variance']:.6f}", f"{m['l0']:.4f}",
                        f"{spliced[l]['acc_drop_pp']:.4f}" if l in spliced else ""])
    for name in USAGE_MAPS:
        with open(folder / f"usage_{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["latent", name, "share", "count"], lineterminator="\n")
            w.writeheader()
            for row in usage_shares(usage, latents, name):
                w.writerow({**row, "share": f"{row['share']:.6f}"})


def usage_figure(usage: dict[str, np.ndarray], latents: list[int], columns: list[str]):
    """Heat maps latent x value (share of the latent's firings), one panel per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not columns:  # no layer, token or label column (a planted cache): the firing rates alone
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(latents) + 2))
        ax.barh(range(len(latents)), usage["count_F"][latents] / max(usage["count_F"].sum(), 1))
        ax.set_yticks(range(len(latents)), [str(f) for f in latents], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("share of all firings")
        ax.set_ylabel("latent (most used first)")
        fig.tight_layout()
        return fig
    fig, axes = plt.subplots(1, len(columns), figsize=(min(12.0, 4.0 * len(columns)), 0.25 * len(latents) + 2), squeeze=False)
    for ax, name in zip(axes[0], columns):
        c_FV = usage[name][latents]
        share_FV = c_FV / np.maximum(c_FV.sum(1, keepdims=True), 1)
        im = ax.imshow(share_FV, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(latents)), [str(f) for f in latents], fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("latent (most used first)")
        ax.set_title(f"share of firings by {name}")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


# --- the report -------------------------------------------------------------------------------------


def _f(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def markdown_report(out: dict, usage_rows: list[dict]) -> str:
    """metrics/ACTS.md from the acts_eval results dict (see stages/acts_eval.py)."""
    lines = [f"# Activation cache SAE: {out['source']}", "",
             f"Cache: {out['cache']['n_rows']} rows x {out['cache']['d']} ({out['cache']['kind']}), split by example: "
             + ", ".join(f"{k} {v} rows" for k, v in out["cache"]["split_rows"].items()) + ". "
             + ("Scored on seeded subsamples of at most acts.eval.max_rows rows: "
                + ", ".join(f"{k} {v}" for k, v in out["rows_scored"].items()) + ". "
                if out["rows_scored"] != out["cache"]["split_rows"] else "")
             + f"SAE: {out['sae']['arch']}, {out['sae']['n_latents']} latents, lambda {out['sae']['lambda']:.4g} "
             f"({out['sae']['lambda_source']}).", "",
             "## Reconstruction (no head needed)", "",
             "| split | layer | MSE | norm. MSE | expl. var. | cosine | L2 ratio | rel. bias | L0 | dead | dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, m in out["splits"].items():
        for layer, r in [("all", m)] + sorted(m.get("per_layer", {}).items()):
            lines.append(f"| {split} | {layer} | {r['mse']:.4g} | {r['mse_norm']:.4f} | {r['explained_variance']:.4f} | "
                         f"{r['cosine_similarity']:.4f} | {r['l2_ratio']:.4f} | {r['relative_reconstruction_bias']:.4f} | "
                         f"{r['l0']:.2f} | {r['dead_fraction']:.3f} | {r['dense_fraction']:.3f} |")
    lines += ["", "Explained variance is 1 - SSE/SST about the split's mean (SAEBench); dead: never fires on the "
              "whole split; dense: fires on more than the dense threshold of its rows.", ""]
    core_rows = {f"{split} / {layer}": r["core"] for split, m in out["splits"].items()
                 for layer, r in [("all", m)] + sorted(m.get("per_layer", {}).items()) if "core" in r}
    if core_rows:
        lines += ["## Core metrics (SAEBench)", "", core_table(core_rows, "split / layer"), "",
                  "In the source's units; rel. bias uncentred (SAEBench's; the table above centres it on the train "
                  "mean). " + CORE_NOTE + (" CE / KL scores: test examples, the residual after that layer replaced "
                                            "by the SAE's reconstruction (sae) or by zeros (zero) at every token."
                                            if out.get("spliced") else " No head: no CE / KL scores."), ""]
    if out.get("spliced"):
        lines += ["## Spliced fidelity (test examples)", "",
                  "The SAE's reconstruction replaces the residual after that layer at every token; the rest of the "
                  "transformer runs on it. CE recovered is against mean ablation (train mean per token).", "",
                  "| layer | acc clean | acc spliced | drop (pp) | CE clean | CE spliced | KL | CE recovered |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer, s in sorted(out["spliced"].items()):
            lines.append(f"| {layer} | {s['acc_clean']:.4f} | {s['acc_spliced']:.4f} | {s['acc_drop_pp']:.2f} | "
                         f"{s['ce_clean']:.4f} | {s['ce_spliced']:.4f} | {s['kl']:.4f} | {_f(s['ce_recovered'])} |")
        lines.append("")
    if out.get("truth"):
        t = out["truth"]
        lines += ["## Ground truth (planted source, test split)", "",
                  f"The SAE's {out['sae']['n_latents']} atoms (decoder rows mapped back to the cache's units) against the "
                  f"{t['n_features']} planted directions (mnist_sae/truth.py): MCC is the mean |cos| of the Hungarian "
                  f"matching, MMCS the mean best |cos| per true feature, recovered the share of true features matched "
                  f"at |cos| >= {t['recovered_cosine']}, F1 of \"latent fires\" vs \"feature fires\" per matched pair.",
                  "", "| MCC | MMCS | recovered | uniqueness | precision | recall | F1 |", "|---|---|---|---|---|---|---|",
                  f"| {t['mcc']:.4f} | {t['mmcs']:.4f} | {t['recovered']:.4f} | {t['uniqueness']:.4f} | "
                  f"{t['precision']:.4f} | {t['recall']:.4f} | {t['f1']:.4f} |", ""]
    if out.get("per_layer_saes"):
        lines += ["## One SAE per layer vs one SAE over all layers (test split)", "",
                  "Per layer: the all-layer SAE on that layer's rows, and an SAE of the same settings trained on that "
                  "layer's rows only (its own standardization; with L layers it sees 1/L of the rows, so 1/L of the "
                  "steps at the same epochs). Dead: never fires on that layer's test rows.", "",
                  "| layer | SAE | expl. var. | norm. MSE* | L0 | dead | spliced drop (pp) | CE recovered |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer, own in sorted(out["per_layer_saes"].items()):
            for name, m, sp in (("all layers", out["splits"]["test"]["per_layer"][layer], out["spliced"].get(layer)),
                                (f"layer {layer} only", own["test"], own.get("spliced"))):
                lines.append(f"| {layer} | {name} | {m['explained_variance']:.4f} | {m['mse_norm']:.4f} | {m['l0']:.2f} | "
                             f"{m['dead_fraction']:.3f} | {_f(sp and sp['acc_drop_pp'], '.2f')} | "
                             f"{_f(sp and sp['ce_recovered'])} |")
        lines += ["", "*normalized MSE is in each SAE's own standardized units: compare the two SAEs by explained variance.", ""]
    if out.get("probes"):
        lines += ["## Probes: SAE codes vs raw activations (test split)", "",
                  f"Logistic regression (lbfgs, standardized features) on the same {out['probe_rows']} train rows for "
                  f"both, token {out['probe_token'] if out['probe_token'] is not None else 'all'}.", "",
                  "| layer | features | accuracy | macro precision | macro recall | macro F1 |", "|---|---|---|---|---|---|"]
        for layer, by in sorted(out["probes"].items()):
            for name, r in by.items():
                lines.append(f"| {layer} | {name} | {r['accuracy']:.4f} | {r['macro_precision']:.4f} | "
                             f"{r['macro_recall']:.4f} | {r['macro_f1']:.4f} |")
        layer, by = sorted(out["probes"].items())[-1]
        lines += ["", f"Per class, layer {layer}:", "",
                  "| class | support | P codes | R codes | F1 codes | P raw | R raw | F1 raw |",
                  "|---|---|---|---|---|---|---|---|"]
        c, r = by["codes"], by["raw"]
        for k in range(len(c["support"])):
            lines.append(f"| {k} | {c['support'][k]} | {c['precision'][k]:.3f} | {c['recall'][k]:.3f} | {c['f1'][k]:.3f} | "
                         f"{r['precision'][k]:.3f} | {r['recall'][k]:.3f} | {r['f1'][k]:.3f} |")
        lines.append("")
    if usage_rows:
        cols = [k for k in usage_rows[0] if k not in ("latent", "rate")]
        lines += ["## Most-used latents (test split)", "",
                  "Rate: share of rows the latent fires on; for each column its most common value and the share of "
                  "the latent's firings there (for label: its label purity).", "",
                  "| " + " | ".join(["latent", "rate"] + cols) + " |", "|---|---|" + "---|" * len(cols)]
        for row in usage_rows:
            lines.append("| " + " | ".join([str(row["latent"]), f"{row['rate']:.4f}"] +
                                           [f"{row[k]:.3f}" if k.endswith("_share") else str(row[k]) for k in cols]) + " |")
        lines.append("")
    return "\n".join(lines)
