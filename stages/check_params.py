"""check_params: every key of params.yaml is one some stage reads, before any stage works.

    python -m stages.check_params OUT_FILE

DVC tracks the params keys each stage lists, so a typo (`sae.lamda: 0.12`) is a key no stage
lists: `dvc repro` would say "up to date" and run the old lambda. This stage depends on the whole
params.yaml file and on the stages' params dataclasses, parses every section with its owner's
dataclass (unknown key, missing key, wrong type, out of range: one line naming the key, the
nearest valid key where one is close, exit 2), and writes OUT_FILE, whose content does not depend
on the params: every other stage depends on it, so it runs first, and since its output's hash
never changes, a valid params change reruns only the stages that read the changed keys.

Every module it imports is free of torch (the settings in mnist_sae/settings.py, the sections of
single stages in stages/_params.py): it reruns on every `dvc exp run -S ...`, and importing
torch was ~2-3 s of its ~3 s (AMD EPYC VM of the README). A test keeps it that way.
"""

import argparse
import importlib

from stages._common import ParamError, ReproParams, check_device, load_params, nearest, read_params_file, run, write_text

# section -> (module, loader): the owner's own parse, so a key is valid here exactly when its stage accepts it
SECTIONS = {
    "device": (None, lambda raw: check_device(raw)),  # cuda without CUDA: the first stage that loads it says so
    "repro": (None, lambda raw: load_params(ReproParams, "repro", raw)),
    "data": ("stages.prepare", lambda m, raw: load_params(m.DataParams, "data", raw)),
    "ffn": ("stages._ffn_params", lambda m, raw: load_params(m.FFNParams, "ffn", raw)),
    "collect": ("stages._params", lambda m, raw: load_params(m.CollectParams, "collect", raw)),
    "sae": ("stages._sae_params", lambda m, raw: m.load_sae_params(raw)),
    "evaluate": ("stages._params", lambda m, raw: load_params(m.EvaluateParams, "evaluate", raw)),
    "baselines": ("stages._baselines_params", lambda m, raw: load_params(m.BaselinesParams, "baselines", raw)),
    "features": ("stages._params", lambda m, raw: load_params(m.FeaturesParams, "features", raw)),
    "planted": ("stages._planted_params", lambda m, raw: load_params(m.PlantedParams, "planted", raw)),
    "truth": ("stages._params", lambda m, raw: load_params(m.TruthParams, "truth", raw)),
    "acts": ("stages._acts_params", lambda m, raw: m.load_acts_params(raw)),
}
OK = "params.yaml: every key is read by a stage and valid\n"


def check(raw: dict) -> None:
    for section in raw:
        if section not in SECTIONS:
            raise ParamError(f"{section}: unknown section{nearest('', section, SECTIONS)}; "
                             f"sections are {', '.join(SECTIONS)}")
    for section, (module, loader) in SECTIONS.items():
        if section not in raw:
            raise ParamError(f"{section}: missing from params.yaml")
        if module is None:
            loader(raw)
        else:
            loader(importlib.import_module(module), raw)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_file")
    args = parser.parse_args()
    check(read_params_file())
    write_text(args.out_file, OK)


if __name__ == "__main__":
    run(main)
