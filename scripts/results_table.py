"""Regenerate the README's Results section from the metrics files, beside the original numbers.

    python scripts/results_table.py            # rewrite README.md between the results markers
    python scripts/results_table.py --check    # exit 1 when README.md is out of date

Reads metrics/eval.json (required), metrics/ffn_sweep.json, metrics/calibration.json and
metrics/baselines.json (each when present). The site (logits or hidden) picks the original
reference: it is read from dvc.lock (the params the collect stage last ran with), else params.yaml.
Everything between `<!-- results:start -->` and `<!-- results:end -->` is replaced; nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist_sae.evaluate import ce_accuracy_table, reconstruction_table  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"

# The original notebooks' results (the study this project reproduces, README "Results"): the SAE at each site, and the FFN sweep's winner.
ORIGINAL = {
    "logits": {"n_latents": 32, "target_l0": 1, "l0_val": 1.63, "test_acc_orig": 97.21, "test_acc_recon": 91.59,
               "test_acc_drop_pp": 5.62, "val_mse_norm": 0.1743, "val_ce_orig": 0.1061, "val_ce_recon": 0.3659},
    "hidden": {"n_latents": 512, "target_l0": 20, "l0_val": 9.5, "test_acc_orig": 94.13, "test_acc_recon": 93.44,
               "test_acc_drop_pp": 0.69},
}
ORIGINAL_FFN = {"hidden": 8192, "lr": 1e-4, "val_ce": 0.0809, "test_acc": 97.59}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def collected_site(root: Path) -> str:
    """collect.site as the collect stage last ran it (dvc.lock), else as params.yaml sets it."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    lock = root / "dvc.lock"
    if lock.exists():
        stage = (yaml.load(lock.read_text()) or {}).get("stages", {}).get("collect", {})
        site = stage.get("params", {}).get("params.yaml", {}).get("collect.site")
        if site is None:
            site = stage.get("params", {}).get("params.yaml", {}).get("collect", {}).get("site")
        if site:
            return site
    return yaml.load((root / "params.yaml").read_text())["collect"]["site"]


def fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def sae_vs_original(ev: dict, site: str) -> str:
    ref = ORIGINAL.get(site, {})
    s, val, test = ev["sae"], ev["val"], ev["test"]
    rows = [
        ["latents", s["n_latents"], ref.get("n_latents", "n/a")],
        ["target L0", fmt(s["target_l0"], "g"), ref.get("target_l0", "n/a")],
        ["achieved L0 (val)", fmt(s["l0_val"], ".2f"), fmt(ref.get("l0_val"), ".2f")],
        ["test accuracy: FFN -> reconstruction (%)", f"{100 * test['acc_orig']:.2f} -> {100 * test['acc_recon']:.2f}",
         f"{ref['test_acc_orig']:.2f} -> {ref['test_acc_recon']:.2f}" if "test_acc_orig" in ref else "n/a"],
        ["test accuracy drop (pp)", fmt(test["acc_drop_pp"], ".2f"), fmt(ref.get("test_acc_drop_pp"), ".2f")],
        ["val MSE (normalized)", fmt(val["mse_norm"]), fmt(ref.get("val_mse_norm"))],
        ["val CE: FFN -> reconstruction", f"{val['ce_orig']:.4f} -> {val['ce_recon']:.4f}",
         f"{ref['val_ce_orig']:.4f} -> {ref['val_ce_recon']:.4f}" if "val_ce_orig" in ref else "n/a"],
        ["val CE recovered (vs mean ablation)", fmt(val["ce_recovered"]), "n/a"],
        ["val explained variance", fmt(val["explained_variance"]), "n/a"],
        ["dead latents (train)", fmt(s["dead_fraction_train"], ".3f"), "n/a"],
        ["lambda", fmt(s["lambda"], ".4g"), "n/a"],
    ]
    return tabulate(rows, ["", "this run", "original"], tablefmt="github", disable_numparse=True)


def ffn_vs_original(sweep: dict) -> str:
    best = sweep["best"]
    rows = [["chosen FFN (by val CE)", f"hidden {best['hidden']}, lr {best['lr']:g}",
             f"hidden {ORIGINAL_FFN['hidden']}, lr {ORIGINAL_FFN['lr']:g}"],
            ["val CE", fmt(best.get("val_ce")), fmt(ORIGINAL_FFN["val_ce"])],
            ["test accuracy (%)", fmt(100 * best["test_acc"], ".2f") if "test_acc" in best else "n/a",
             fmt(ORIGINAL_FFN["test_acc"], ".2f")]]
    return tabulate(rows, ["", "this run", "original"], tablefmt="github", disable_numparse=True)


def calibration_line(cal: dict) -> str:
    return (f"Calibration: target L0 {cal.get('target_l0', 'n/a'):g}, calibrated lambda {fmt(cal.get('lambda'), '.4g')} "
            f"(val L0 {fmt(cal.get('l0_val'), '.3f')} at that lambda while calibrating), "
            f"{len(cal.get('points', []))} lambdas tried, target {'bracketed' if cal.get('bracketed') else 'not bracketed'} "
            "by the grid.")


def baselines_tables(bl: dict) -> str:
    """One table per matched k: every method's L0, normalized MSE, CE recovered, accuracy."""
    out = []
    for key in sorted((k for k in bl if k.startswith("k") and k[1:].isdigit()), key=lambda k: int(k[1:])):
        rows = [[m, fmt(r.get("l0"), ".2f"), fmt(r.get("mse_norm")), fmt(r.get("ce_recovered")),
                 fmt(100 * r["acc_recon"], ".2f") if r.get("acc_recon") is not None else "n/a"]
                for m, r in sorted(bl[key].items())]
        out.append(f"Baselines at k = {key[1:]} (on {bl.get('eval_split', 'the eval split')}):\n\n" + tabulate(
            rows, ["method", "L0", "MSE (normalized)", "CE recovered", "accuracy recon (%)"], tablefmt="github",
            disable_numparse=True))
    return "\n\n".join(out)


def results_section(root: Path) -> str:
    metrics = root / "metrics"
    ev = read_json(metrics / "eval.json")
    if ev is None:
        raise SystemExit(f"{metrics / 'eval.json'}: not found; run `dvc repro evaluate` first")
    site = collected_site(root)
    parts = ["<!-- generated by `python scripts/results_table.py` from metrics/*.json; do not edit by hand -->",
             f"SAE at the {site} site against the original notebooks:", sae_vs_original(ev, site)]
    sweep = read_json(metrics / "ffn_sweep.json")
    if sweep is not None:
        parts += ["The classifier:", ffn_vs_original(sweep)]
    cal = read_json(metrics / "calibration.json")
    if cal is not None:
        parts.append(calibration_line(cal))
    by_split = {s: ev[s] for s in ("train", "val", "test")}
    parts += ["Reconstruction error by split:", reconstruction_table(by_split),
              "Cross-entropy and accuracy by split:", ce_accuracy_table(by_split)]
    bl = read_json(metrics / "baselines.json")
    if bl is not None:
        parts.append(baselines_tables(bl))
    return "\n\n".join(parts)


def splice(readme: str, section: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"README: expected one {START} followed by one {END}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{section}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="project root (holds metrics/, dvc.lock, params.yaml)")
    parser.add_argument("--readme", default=None, help="README to update (default ROOT/README.md)")
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args()
    root = Path(args.root)
    readme_path = Path(args.readme) if args.readme else root / "README.md"
    readme = readme_path.read_text()
    updated = splice(readme, results_section(root))
    if args.check:
        if updated != readme:
            raise SystemExit(f"{readme_path}: Results section is out of date; run python scripts/results_table.py")
        return
    if updated != readme:
        readme_path.write_text(updated)


if __name__ == "__main__":
    main()
