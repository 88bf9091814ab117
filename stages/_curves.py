"""Training curves of one SAE run as the plots folder a stage declares in dvc.yaml (x: step)."""

from __future__ import annotations

import contextlib

from dvclive import Live

from stages._common import atomic_path


@contextlib.contextmanager
def training_curves(curves_dir, names: tuple[str, ...]):
    """Yield an `on_step(step, terms)` for mnist_sae.sae_train.train_sae that logs terms[name][0]
    for each name present; on exit curves_dir holds one TSV (step, value) per logged name.

    dvclive writes into a scratch folder next to the atomic temporary; only its per-metric TSVs
    become the output. With fewer steps than log_every nothing is logged: the folder is empty.
    """
    with atomic_path(curves_dir) as tmp:
        live = Live(str(tmp.parent / "live"), dvcyaml=False, save_dvc_exp=False, report=None)

        def on_step(step, terms):
            live.step = step
            for name in names:
                if name in terms:
                    live.log_metric(f"train/{name}", float(terms[name][0]))

        yield on_step
        live.end()
        curves = tmp.parent / "live" / "plots" / "metrics" / "train"
        if curves.exists():
            curves.rename(tmp)
        else:
            tmp.mkdir()
