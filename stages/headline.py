"""headline: the few dozen numbers a reader asks for first -> metrics/headline.json.

    python -m stages.headline OUT_JSON [--eval EVAL_JSON] [--ffn-sweep SWEEP_JSON] [--baselines BASELINES_JSON]
                                       [--acts-model ACTS_MODEL_JSON] [--acts ACTS_JSON] [--truth TRUTH_JSON]

The only file under `metrics:` in dvc.yaml, so `dvc metrics show` / `dvc exp show` list these and
not the ~2000 detail leaves (those stay plain outputs: `dvc metrics show metrics/eval.json`).
Each source is optional: a project without a track drops that option (and its dep) from the
stage, and mnist_sae.headline leaves the section out. No params, no torch work.
"""

import argparse
import json
from pathlib import Path

from mnist_sae.headline import headline
from stages._common import DataError, run, write_json

SOURCES = ("eval", "ffn_sweep", "baselines", "acts_model", "acts", "truth")


def read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the stage that writes it (dvc repro) or drop it from headline's cmd")
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_json")
    for name in SOURCES:
        parser.add_argument("--" + name.replace("_", "-"), dest=name)
    args = parser.parse_args()
    sources = {name: read_json(getattr(args, name)) for name in SOURCES if getattr(args, name)}
    write_json(args.out_json, headline(**{("eval_" if k == "eval" else k): v for k, v in sources.items()}))


if __name__ == "__main__":
    run(main)
