"""The headline numbers: a few dozen leaves picked from the detail metrics files.

`dvc metrics show` on every detail file lists ~2000 numbers; `headline` picks the ones a reader
asks for first, under stable nested names, and nothing else is computed here (every number is
copied from a file that another stage wrote with mnist_sae/metrics.py):

    ffn.test_acc                                    metrics/ffn_sweep.json best.test_acc
    sae.<val|test>.{l0, acc_drop_pp, ce_increase,   metrics/eval.json <split> (dAcc in pp, dCE,
               mse_norm, dead_fraction}             normalized MSE, dead fraction)
    baselines.k<k>.{reference, sae}.{method,        metrics/baselines.json k<k>: the lowest
               mse_norm}                            mse_norm among matched reference methods
                                                    (PCA, k-means, random, class) and among
                                                    matched SAE-family rows
    acts.vit_test_acc                               metrics/acts_model.json test_acc
    acts.test.{explained_variance, l0,              metrics/acts.json splits.test
               dead_fraction}
    acts.layer<l>.{spliced_acc_drop_pp,             metrics/acts.json spliced.<l>, probes.<l>
               probe_acc_codes, probe_acc_raw}
    truth.*                                         metrics/truth.json headline (as it is)

A seed spread stored next to a value (`<key>_ci95`, a 95% half-width, or `<key>_std`) is copied
with it. Any source may be None (its track removed) and any key may be missing: that part is
left out, never invented.
"""

from __future__ import annotations

import math

from mnist_sae.matched import is_matched

SAE_KEYS = ("l0", "acc_drop_pp", "ce_increase", "mse_norm", "dead_fraction")
ACTS_KEYS = ("explained_variance", "l0", "dead_fraction")
SPREAD_SUFFIXES = ("_ci95", "_std")
SPLITS = ("val", "test")  # the held-out splits; train stays in eval.json (with ci95s, 3 splits were 75 leaves)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pick(src: dict | None, keys) -> dict:
    """src[key] for each key present and finite, each followed by its spread keys when present."""
    out = {}
    for key in keys:
        if not isinstance(src, dict) or not _number(src.get(key)):
            continue
        out[key] = src[key]
        for suffix in SPREAD_SUFFIXES:
            if _number(src.get(key + suffix)):
                out[key + suffix] = src[key + suffix]
    return out


def _best_row(rows: dict, k: int, sae: bool) -> dict:
    matched = {m: r for m, r in rows.items() if isinstance(r, dict) and m.startswith("sae_") == sae
               and _number(r.get("mse_norm")) and _number(r.get("l0")) and is_matched(dict(r, k=k))}
    if not matched:
        return {}
    method = min(matched, key=lambda m: (matched[m]["mse_norm"], m))
    return {"method": method, **pick(matched[method], ("mse_norm",))}


def headline(eval_: dict | None = None, ffn_sweep: dict | None = None, baselines: dict | None = None,
             acts_model: dict | None = None, acts: dict | None = None, truth: dict | None = None) -> dict:
    """The headline dict from the detail metrics dicts (each optional; see the module docstring)."""
    out: dict = {}
    ffn = pick((ffn_sweep or {}).get("best"), ("test_acc",))
    if ffn:
        out["ffn"] = ffn
    sae = {split: pick((eval_ or {}).get(split), SAE_KEYS) for split in SPLITS}
    if any(sae.values()):
        out["sae"] = {split: v for split, v in sae.items() if v}

    ks = [k for k in (baselines or {}).get("ks", []) if isinstance(k, int) and k > 0]
    base = {}
    for k in ks:
        rows = baselines.get(f"k{k}") or {}
        entry = {name: best for name, best in (("reference", _best_row(rows, k, False)),
                                                ("sae", _best_row(rows, k, True))) if best}
        if entry:
            base[f"k{k}"] = entry
    if base:
        out["baselines"] = base

    acts_out = {}
    if _number((acts_model or {}).get("test_acc")):
        acts_out["vit_test_acc"] = acts_model["test_acc"]
    test = pick(((acts or {}).get("splits") or {}).get("test"), ACTS_KEYS)
    if test:
        acts_out["test"] = test
    spliced, probes = (acts or {}).get("spliced") or {}, (acts or {}).get("probes") or {}
    for layer in sorted(set(spliced) | set(probes), key=lambda s: (len(s), s)):
        row = {}
        if _number((spliced.get(layer) or {}).get("acc_drop_pp")):
            row["spliced_acc_drop_pp"] = spliced[layer]["acc_drop_pp"]
        for kind in ("codes", "raw"):
            acc = ((probes.get(layer) or {}).get(kind) or {}).get("accuracy")
            if _number(acc):
                row[f"probe_acc_{kind}"] = acc
        if row:
            acts_out[f"layer{layer}"] = row
    if acts_out:
        out["acts"] = acts_out

    truth_head = (truth or {}).get("headline")
    if isinstance(truth_head, dict) and truth_head:
        out["truth"] = truth_head
    return out


def numeric_leaves(d: dict) -> dict:
    """The leaves that are numbers: what `dvc metrics show` and `dvc exp show` list as columns."""
    return {k: v for k, v in leaves(d).items() if _number(v)}


def leaves(d: dict, prefix: str = "") -> dict:
    """Flatten to {"a.b.c": value}, as `dvc metrics show` names the leaves."""
    flat = {}
    for key, v in d.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            flat.update(leaves(v, name + "."))
        else:
            flat[name] = v
    return flat
