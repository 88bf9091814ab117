"""select_ffn: lowest val CE over the sweep wins (diverged points excluded).

    python -m stages.select_ffn PREP_DIR FFN_DIR TIMING_DIR OUT_CKPT SWEEP_JSON SWEEP_MD SWEEP_CSV
"""

import argparse
import json
import math
from pathlib import Path

import torch
from tabulate import tabulate

from mnist_sae import metrics
from mnist_sae.ffn import FFN, apply_in_chunks
from mnist_sae.forked import cpu_workers, map_forked
from stages._common import (DataError, load_device, load_params, load_prepared, load_torch, read_params_file, run,
                            save_torch, setup_torch, write_json, write_text)
from stages._ffn_params import FFNParams


def main():
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "ffn_dir", "timing_dir", "out_ckpt", "sweep_json", "sweep_md", "sweep_csv"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(FFNParams, "ffn", raw)
    device = load_device(raw)
    setup_torch(p.seed)

    # the grid points of the current params; stale folders from an older grid are ignored
    wanted = {(h, lr) for h in p.sweep.hidden for lr in p.sweep.lr}
    found = {}
    for d in sorted(Path(args.ffn_dir).iterdir()):
        if (d / "point.json").exists():
            point = json.loads((d / "point.json").read_text())
            if (point["hidden"], point["lr"]) in wanted and point["type"] == p.type:
                found[(point["hidden"], point["lr"])] = (d.name, point)
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{args.ffn_dir}: no trained point for (hidden, lr) in {missing}; run `dvc repro train_ffn`")

    splits = {s: load_prepared(args.prep_dir, s) for s in ("val", "test")}
    tensors = {s: (torch.from_numpy(x), torch.from_numpy(y).long()) for s, (x, y) in splits.items()}

    def load_model(name):
        return FFN.from_checkpoint(load_torch(Path(args.ffn_dir) / name / "model.pt")).to(device).eval()

    def val_row(key):
        name, point = found[key]
        timing_file = Path(args.timing_dir) / f"{name}.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        row = {"hidden": point["hidden"], "lr": point["lr"], "diverged": point["diverged"],
               "train_seconds": timing.get("train_seconds", float("nan"))}
        x_NI, labels_N = tensors["val"]
        if not point["diverged"]:
            logits_NO = apply_in_chunks(load_model(name), x_NI.to(device)).cpu()
            row["val_ce"], row["val_acc"] = metrics.cross_entropy(logits_NO, labels_N), metrics.accuracy(logits_NO, labels_N)
            row["diverged"] = not math.isfinite(row["val_ce"])  # finite loss but NaN predictions counts too
        return row

    # the points' evaluations are independent: one forked process per core (the bits do not depend on it)
    keys = sorted(found)
    rows = map_forked(val_row, keys, cpu_workers(device))
    points, best = {}, None
    for key, row in zip(keys, rows):
        name = found[key][0]
        if not row["diverged"] and (best is None or row["val_ce"] < points[best]["val_ce"]):
            best = name
        points[name] = row
    if best is None:
        raise DataError(f"all {len(points)} sweep points diverged ({', '.join(points)}); lower ffn.sweep.lr")
    best_model = load_model(best)

    x_NI, labels_N = tensors["test"]
    logits_NO = apply_in_chunks(best_model, x_NI.to(device)).cpu()
    winner = dict(points[best], point=best, test_ce=metrics.cross_entropy(logits_NO, labels_N),
                  test_acc=metrics.accuracy(logits_NO, labels_N))
    save_torch(args.out_ckpt, {"config": best_model.config(),
                               "state": {k: v.cpu() for k, v in best_model.state_dict().items()},
                               "point": best, "hidden": winner["hidden"], "lr": winner["lr"]})
    write_json(args.sweep_json, {"points": points, "best": winner, "device": device})

    headers = ["point", "hidden", "lr", "val CE", "val acc %", "train s", "diverged"]
    rows = [[n + (" *" if n == best else ""), r["hidden"], r["lr"], r.get("val_ce", float("nan")),
             100 * r.get("val_acc", float("nan")), r["train_seconds"], r["diverged"]] for n, r in points.items()]
    table = tabulate(rows, headers, tablefmt="github", floatfmt=".4f")
    write_text(args.sweep_md, f"# FFN sweep\n\n{table}\n\n* winner by val CE: {best}, test CE "
                              f"{winner['test_ce']:.4f}, test accuracy {100 * winner['test_acc']:.2f}%\n")
    csv = ["point,hidden,lr,val_ce,val_acc"] + [f"{n},{r['hidden']},{r['lr']},{r['val_ce']},{r['val_acc']}"
                                                 for n, r in points.items() if not r["diverged"]]
    write_text(args.sweep_csv, "\n".join(csv) + "\n")


if __name__ == "__main__":
    run(main)
