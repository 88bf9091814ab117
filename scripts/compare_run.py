"""Compare the workspace's headline metrics with a commit's, knowing how noisy each number is.

    python scripts/compare_run.py              # metrics/headline.json now vs at HEAD
    python scripts/compare_run.py v1.0         # ... vs at any git revision
    python scripts/compare_run.py HEAD~3 --spreads bench/headline_spread.json

Prints one row per headline number: key, committed, now, diff, spread, verdict:

    same bits        the two values are equal (JSON keeps a float's every bit)
    within spread    |diff| <= spread
    OUTSIDE spread   |diff| > spread: more than seed noise moved it
    no spread known  the values differ and nothing says how much they may

The spread of key K: when either file has `K_ci95` (a 95% half-width over seeds), the sum of the
two files' half-widths; else when either has `K_std`, 2 x the larger std; else the number for K
in the spreads file (--spreads; default bench/headline_spread.json when it exists), a JSON object
{"sae.test.mse_norm": 0.002, ...} of measured machine-to-machine differences. No such file is
committed: with `repro.portable: true` the pipeline's bits are the same on every AVX2 x86-64 CPU
(README, "The same bits on every machine"), so a machine adds no spread; to measure one for a non-portable run, run
`dvc repro` on two machines and record |a - b| per key (or the largest over several machines).
Text values (a method's name) are `same bits` or `changed`. Exit 0 whatever the verdicts; 2 with
one line for bad input (unknown revision, missing or invalid file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

HEADLINE = "metrics/headline.json"
SPREADS = "bench/headline_spread.json"
SPREAD_SUFFIXES = ("_ci95", "_std")


class BadInput(Exception):
    pass


def flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = v
    return flat


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def spread_of(key: str, old: dict, new: dict, measured: dict) -> float | None:
    ci = [f[key + "_ci95"] for f in (old, new) if _num(f.get(key + "_ci95"))]
    if ci:
        return float(sum(ci))
    std = [f[key + "_std"] for f in (old, new) if _num(f.get(key + "_std"))]
    if std:
        return 2.0 * max(std)
    return float(measured[key]) if _num(measured.get(key)) else None


def compare(old: dict, new: dict, measured: dict | None = None) -> list[dict]:
    """One row per value leaf of either headline dict (spread leaves are folded into their value)."""
    old, new, measured = flatten(old), flatten(new), measured or {}
    keys = [k for k in dict.fromkeys([*old, *new]) if not k.endswith(SPREAD_SUFFIXES)]
    rows = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        row = {"key": key, "committed": a, "now": b, "diff": None, "spread": None}
        if key not in old or key not in new:
            row["verdict"] = "only now" if key not in old else "only committed"
        elif a == b and type(a) is type(b):
            row["verdict"] = "same bits"
        elif not (_num(a) and _num(b)):
            row["verdict"] = "changed"
        else:
            row["diff"] = b - a
            row["spread"] = spread_of(key, old, new, measured)
            row["verdict"] = ("no spread known" if row["spread"] is None else
                              "within spread" if abs(row["diff"]) <= row["spread"] else "OUTSIDE spread")
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    return format(v, ".6g") if _num(v) else str(v)


def read_json(text: str, where: str) -> dict:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not valid JSON ({e})")
    if not isinstance(d, dict):
        raise BadInput(f"{where}: expected a JSON object")
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision to compare with (default HEAD)")
    parser.add_argument("--file", default=HEADLINE, help=f"the metrics file, relative to the repo root (default {HEADLINE})")
    parser.add_argument("--spreads", help=f"measured spreads per key (default {SPREADS} when it exists)")
    args = parser.parse_args(argv)
    try:
        path = Path(args.file)
        if not path.is_file():
            raise BadInput(f"{args.file}: not found in the workspace; run dvc repro (or pass --file)")
        new = read_json(path.read_text(), args.file)
        proc = subprocess.run(["git", "show", f"{args.rev}:{args.file}"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BadInput(f"{args.rev}:{args.file}: not in git ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'git failed'})")
        old = read_json(proc.stdout, f"{args.rev}:{args.file}")
        spreads_path = args.spreads or (SPREADS if Path(SPREADS).is_file() else None)
        measured = {}
        if spreads_path:
            if not Path(spreads_path).is_file():
                raise BadInput(f"{spreads_path}: not found (--spreads names a JSON object of key -> spread)")
            measured = read_json(Path(spreads_path).read_text(), spreads_path)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare(old, new, measured)
    print(tabulate([[r["key"], _fmt(r["committed"]), _fmt(r["now"]), _fmt(r["diff"]), _fmt(r["spread"]), r["verdict"]]
                    for r in rows], headers=["key", f"committed ({args.rev})", "now", "diff", "spread", "verdict"],
                   tablefmt="github", disable_numparse=True))
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print("\n" + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
