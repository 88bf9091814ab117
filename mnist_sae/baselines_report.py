"""The baselines comparison as outputs: metrics/baselines.json, the markdown report with a reading
generated from the numbers, the frontier CSVs for `dvc plots` and the figures.

Pure rendering of `mnist_sae.baselines.Results` (rows scored by `score`): nothing here computes a
metric, so a wording change reruns only the compare stage, never a fit.
"""

from __future__ import annotations

from mnist_sae.baselines import METHOD_ORDER, Results, finite_or_none
from mnist_sae.matched import L0_TOLERANCE, is_matched
from mnist_sae.stats import separated

TABLE_COLUMNS = (  # (row key, header, format)
    ("l0", "L0", ".2f"), ("mse_norm", "MSE norm", ".4f"), ("explained_variance", "EV", ".3f"),
    ("acc_recon", "acc", ".4f"), ("ce_recon", "CE", ".4f"), ("ce_recovered", "CE rec", ".3f"),
    ("dead_fraction_train", "dead", ".2f"), ("purity_top", "purity top", ".3f"),
    ("purity_sampled", "purity sampled", ".3f"), ("probe_acc", "probe acc", ".4f"),
    ("core.ce_loss_score", "CE score", ".3f"), ("core.kl_div_score", "KL score", ".3f"),
)


def _get(row: dict, key: str):
    """row[key], or row["core"][name] for key "core.<name>" (metrics.core_metrics); None if absent."""
    if key.startswith("core."):
        return (row.get("core") or {}).get(key[5:])
    return row.get(key)


def _sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["k"], METHOD_ORDER.index(r["method"])))


def results_json(res: Results, header: dict) -> dict:
    """{**header, "probe_raw_acc", "k<k>": {method: row}, "sae_main": row, "family_training": ...}."""
    out = dict(header, probe_raw_acc=finite_or_none(res.probe_raw_acc), family_training=res.family)
    for row in _sorted_rows(res.rows):
        body = {key: v for key, v in row.items() if key not in ("method", "k")}
        if row["method"] == "sae_main":
            out["sae_main"] = body
        else:
            out.setdefault(f"k{row['k']}", {})[row["method"]] = body
    return out


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def _fmt_ci(row: dict, key: str, spec: str) -> str:
    """row[key], and "+- half-width" of its 95% interval over seeds when the row has one."""
    value, hw = _get(row, key), _get(row, f"{key}_ci95")
    text = _fmt(value, spec)
    return text if hw is None or value is None else f"{text} +- {format(hw, spec)}"


def _table(rows: list[dict]) -> str:
    from tabulate import tabulate

    body = [[r["method"] + ("" if r["k"] == 0 or is_matched(r) else " (L0 off)")]
            + [_fmt_ci(r, key, spec) for key, _, spec in TABLE_COLUMNS] for r in rows]
    return tabulate(body, headers=["method"] + [h for _, h, _ in TABLE_COLUMNS], tablefmt="github", disable_numparse=True)


def _best(rows, key, lowest=False):
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return None
    return (min if lowest else max)(rows, key=lambda r: r[key])


def _reading(rows: list[dict], probe_raw_acc) -> list[str]:
    """Who wins where at one k, in sentences made from the numbers (matched rows only)."""
    lines = []
    off = [r["method"] for r in rows if not is_matched(r)]
    if off:
        lines.append(f"- L0 off target by more than {L0_TOLERANCE:.0%} (left out below): {', '.join(off)}.")
    rows = [r for r in rows if is_matched(r)]
    sae_rows = [r for r in rows if r["method"].startswith("sae_")]
    for key, what, lowest in (("mse_norm", "lowest normalized MSE", True), ("ce_recovered", "highest CE recovered", False),
                              ("purity_top", "purest top activations", False),
                              ("purity_sampled", "purest typical activations", False)):
        best = _best(rows, key, lowest)
        if best is None:
            continue
        line = f"- {what}: **{best['method']}** ({best[key]:.4g})"
        best_sae = _best(sae_rows, key, lowest)
        if best_sae is not None and best_sae is not best:
            line += f"; best SAE {best_sae['method']} {best_sae[key]:.4g}"
        lines.append(line + ".")
    pca = next((r for r in rows if r["method"] == "pca"), None)
    best_sae = _best(sae_rows, "mse_norm", lowest=True)
    if pca is not None and best_sae is not None and pca["mse_norm"] > 0:
        ratio = best_sae["mse_norm"] / pca["mse_norm"]
        lines.append(f"- {best_sae['method']} reaches {ratio:.2f}x the MSE of PCA with the same number of "
                     f"active directions ({'better' if ratio < 1 else 'worse'} than PCA).")
    best_probe = _best(rows, "probe_acc")
    if best_probe is not None and probe_raw_acc is not None:
        lines.append(f"- probe: best codes {best_probe['method']} {best_probe['probe_acc']:.4f} vs raw activations "
                     f"{probe_raw_acc:.4f}.")
    return lines


def _theory(rows: list[dict]) -> list[str]:
    """Checks against what theory and toy models predict: a table per k, then which predictions
    hold at how many k.

    - shrinkage: the L1 penalty pulls reconstructions towards 0, so the relative reconstruction
      bias gamma of ReLU+L1 is the lowest (Rajamanoharan et al. 2024; Wright & Sharkey 2024);
    - activation floor: a JumpReLU never outputs a value below its threshold, a ReLU outputs many
      near 0, so the 5th percentile of non-zero activations is higher for JumpReLU;
    - superposition (Elhage et al. 2022): F > D directions cannot be orthogonal; the Welch bound is
      the least max |cos| any F unit vectors in D dims can have, random directions a reference.
    """
    from tabulate import tabulate

    by = {(r["method"], r["k"]): r for r in rows}
    ks = sorted(k for k in {r["k"] for r in rows} if all((m, k) in by for m in ("sae_jumprelu", "sae_relu", "sae_topk", "random")))
    if not ks:
        return []
    table, shrink, floor = [], 0, 0
    for k in ks:
        j, rl, tk, rd = (by[(m, k)] for m in ("sae_jumprelu", "sae_relu", "sae_topk", "random"))
        shrink += rl["gamma"] < min(j["gamma"], tk["gamma"])
        floor += (j["mag_p05"] or 0) > (rl["mag_p05"] or 0)
        table.append([k] + [_fmt(v, ".3f") for v in (rl["gamma"], j["gamma"], tk["gamma"], j["mag_p05"], rl["mag_p05"],
                                                    j["cos_abs_max"], rd["cos_abs_max"], j["welch_bound"],
                                                    j["cos_abs_mean"], rd["cos_abs_mean"])])
    # no "|" in headers: it would split a markdown table cell
    headers = ["k", "gamma relu", "gamma jumprelu", "gamma topk", "p05 act jumprelu", "p05 act relu",
               "max abs cos jumprelu", "max abs cos random", "Welch bound", "mean abs cos jumprelu", "mean abs cos random"]
    out = [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    out.append(f"- shrinkage (gamma: 1 = unbiased scale, < 1 shrunk towards 0): ReLU+L1 lowest at {shrink} of {len(ks)} k.")
    out.append(f"- activation floor: JumpReLU's 5th-percentile non-zero activation above ReLU's at {floor} of {len(ks)} k.")
    out.append("- decoder geometry: every max |cos| is at least the Welch bound (a theorem, F > D); a JumpReLU "
               "mean |cos| below random's means its directions spread out more than chance.")
    return out


def _headline(rows: list[dict]) -> list[str]:
    """The main SAE against every method at the k nearest its own L0: is its MSE impressive?"""
    main = next((r for r in rows if r["method"] == "sae_main"), None)
    ks = sorted({r["k"] for r in rows if r["method"] != "sae_main"})
    if main is None or not ks:
        return []
    k = min(ks, key=lambda v: abs(v - main["l0"]))
    others = [r for r in rows if r["k"] == k and r["method"] != "sae_main" and is_matched(r)]

    def apart(r):  # the two 95% intervals over seeds do not overlap (mnist_sae.stats.separated)
        return separated(r["mse_norm"], r.get("mse_norm_ci95"), main["mse_norm"], main.get("mse_norm_ci95"))

    better = [r["method"] + ("" if apart(r) else " (not separated)") for r in others if r["mse_norm"] < main["mse_norm"]]
    worse_close = [r["method"] for r in others if r["mse_norm"] >= main["mse_norm"] and not apart(r)]
    parts = ", ".join(f"{r['method']} {_fmt_ci(r, 'mse_norm', '.4f')}" for r in others)
    return [f"The main SAE (L0 {main['l0']:.2f}, {main.get('seeds', 1)} seed(s)): normalized MSE "
            f"{_fmt_ci(main, 'mse_norm', '.4f')}, CE recovered {_fmt_ci(main, 'ce_recovered', '.3f')}, accuracy "
            f"{_fmt_ci(main, 'acc_recon', '.4f')}. At k = {k}: {parts}. "
            f"Lower MSE than the main SAE: {', '.join(better) if better else 'none'}. "
            f"Higher but not separated by the 95% intervals: {', '.join(worse_close) if worse_close else 'none'}.",
            "", "Values are mean +- 95% t-interval half-width over seeds where a method has seeds (PCA and class "
            "directions have none); \"not separated\" marks a difference the two intervals do not separate.", ""]


def markdown_report(res: Results, header: dict, notes: list[str]) -> str:
    """metrics/BASELINES.md: a settings line, one table per k, the reading, references, theory."""
    rows = _sorted_rows(res.rows)
    ks = sorted({r["k"] for r in rows if r["method"] not in ("kmeans", "sae_main")})
    out = ["# Baselines: the SAE against its reference class", ""]
    out += [f"- {key}: {v}" for key, v in header.items()] + [f"- {n}" for n in notes] + [""]
    out += _headline(rows)
    if res.probe_raw_acc is not None:
        out += [f"Probe on the raw site activations: accuracy {res.probe_raw_acc:.4f}.", ""]
    out += ["CE rec is against mean ablation (the train mean); CE score and KL score are SAEBench's core scores "
            "against zero ablation (metrics.core_metrics; every core metric per method is in baselines.json under "
            "\"core\").", ""]
    for k in ks:
        at_k = [r for r in rows if r["k"] == k and r["method"] != "sae_main"]
        out += [f"## k = {k}", "", _table(at_k), ""] + _reading(at_k, res.probe_raw_acc) + [""]
    refs = [r for r in rows if r["method"] in ("kmeans", "sae_main")]
    if refs:
        out += ["## References at their own L0", "", "kmeans: nearest centroid (L0 = 1); sae_main: the train_sae "
                "stage's SAE.", "", _table(refs), ""]
    theory = _theory(rows)
    if theory:
        out += ["## Theory checks", ""] + theory + [""]
    return "\n".join(out)


FRONTIER_COLUMNS = ("k", "l0", "mse_norm", "mse_norm_ci95", "explained_variance", "ce_recovered", "purity_top",
                    "purity_sampled", "acc_recon", "acc_drop_pp", "acc_drop_pp_ci95", "probe_acc")


def frontier_csvs(res: Results) -> dict[str, str]:
    """{"frontier_<method>.csv": text}: one file per method, one line per k (for `dvc plots`:
    one series per file, x = l0). Every method gets a file, header only when it did not run
    (family off, KL variant off the logit site), so dvc.yaml's plot definitions always resolve."""
    out = {}
    for method in METHOD_ORDER:
        mrows = [r for r in _sorted_rows(res.rows) if r["method"] == method]
        lines = [",".join(FRONTIER_COLUMNS)]
        lines += [",".join("" if r.get(c) is None else repr(r[c]) for c in FRONTIER_COLUMNS) for r in mrows]
        out[f"frontier_{method}.csv"] = "\n".join(lines) + "\n"
    return out


def frontier_figure(res: Results):
    """Normalized MSE, accuracy drop, CE recovered and top-activation purity against L0, one line per
    method; vertical bars are the 95% t-intervals over seeds where a method has seeds. 2 x 2 panels,
    12 in wide (1200 px at the 100 dpi the stages save with), the legend across the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("mse_norm", "normalized MSE (lower is better)"), ("acc_drop_pp", "accuracy drop, pp (lower is better)"),
              ("ce_recovered", "CE recovered"), ("purity_top", "purity of top activations"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    axes = axes.ravel()
    for method in METHOD_ORDER:
        mrows = [r for r in _sorted_rows(res.rows) if r["method"] == method]
        if not mrows:
            continue
        style, ms = ("*", 12) if method == "sae_main" else ("o-", 4) if method.startswith("sae") else ("s--", 4)
        for ax, (key, _) in zip(axes.flat, panels):
            pts = [(r["l0"], r[key], r.get(f"{key}_ci95") or 0.0) for r in mrows if r.get(key) is not None]
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=err, fmt=style, label=method, ms=ms, capsize=3)
    for ax, (_, title) in zip(axes.flat, panels):
        ax.set_xlabel("L0 (active latents per example)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    legend = {}  # label -> handle, over every panel, in plotting order
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def histogram_figure(res: Results, key: str, k: int, title: str, welch: bool = False):
    """One panel per method at k (plus kmeans and sae_main): a histogram of dists[key]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in (f"{m}@{k}" for m in METHOD_ORDER) if n in res.dists]
    names += [n for n in ("kmeans@1", "sae_main@0") if n in res.dists and n not in names]
    cols = 3  # 3 x 4 in: 1200 px wide at 100 dpi
    nrows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    rows = {f"{r['method']}@{r['k']}": r for r in res.rows}
    for ax, name in zip(axes.flat, names):
        vals = res.dists[name][key].numpy()
        if vals.size:
            ax.hist(vals, bins=50, color="C0" if name.startswith("sae") else "C1")
        if welch:  # cosines: one x range for all panels, the Welch bound at +-
            ax.set_xlim(-1.05, 1.05)
            for s in (-1, 1):
                ax.axvline(s * rows[name]["welch_bound"], color="k", ls=":", lw=1)
        ax.set_title(f"{name} (n={vals.size})", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

