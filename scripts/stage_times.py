"""The wall time of each stage of the last run, from what the stages recorded.

    python scripts/stage_times.py [--file .dvc/tmp/stage_times.jsonl]

Every stage appends one line to .dvc/tmp/stage_times.jsonl when it finishes (stages/_common.py
`run`); the FFN sweep's workers add one line per trained point. This prints, for the most recent
record of each stage, its seconds and start time, in the order the stages started, the total, and
the CPU the stages ran on. A stage DVC skipped (up to date) wrote nothing this run: its row is
from an older run, marked "(older run)" when it started before the newest stage's run began.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def load(path: Path) -> list[dict]:
    if not path.exists():
        sys.exit(f"error: {path}: not found; it is written by the stages as they finish (run `dvc repro` first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=".dvc/tmp/stage_times.jsonl")
    args = parser.parse_args()
    records = load(Path(args.file))
    stages = {r["stage"]: r for r in records if not r["worker"]}  # the latest record per stage wins
    workers = {" ".join(r["argv"][:3]): r for r in records if r["worker"]}
    rows = sorted(stages.values(), key=lambda r: r["started"])
    if not rows:
        sys.exit(f"error: {args.file}: no stage records")
    # the last run: the stages that started after the latest check_params (it runs first, every time)
    run_start = stages["check_params"]["started"] if "check_params" in stages else rows[0]["started"]
    print(f"CPU: {rows[-1]['cpu']}, {rows[-1]['cores']} cores\n")
    print("| stage | seconds | started |")
    print("|---|---:|---|")
    total = 0.0
    for r in rows:
        older = r["started"] < run_start - 1
        total += 0 if older else r["seconds"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        print(f"| {r['stage']}{' (older run)' if older else ''} | {r['seconds']:.0f} | {when} |")
        if r["stage"] == "train_ffn":
            for w in sorted((w for w in workers.values() if w["started"] >= r["started"]), key=lambda w: w["started"]):
                print(f"| &nbsp;&nbsp;point {w['argv'][1]} lr {w['argv'][2]} (in parallel) | {w['seconds']:.0f} | "
                      f"{time.strftime('%H:%M:%S', time.localtime(w['started']))} |")
    print(f"| **total of this run's stages** | **{total:.0f}** ({total / 60:.1f} min) | |")


if __name__ == "__main__":
    main()
