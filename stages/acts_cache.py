"""acts_cache: the cache folder every SAE stage of this track reads (mnist_sae.acts, "the cache folder").

    python -m stages.acts_cache PREP_DIR MODEL_PT CACHE_DIR METRICS_JSON

transformer: the residual stream after every block at every token of acts.n_examples images of
the prepared test split (a seeded subsample; images the transformer never trained on), one
float16 memmap acts.npy with meta (example, layer, token), the digit as label and
example_index.npy (each example's row in the prepared test split, for spliced fidelity).
npy: / raw: the user's file is validated (shape, dtype, size, finite in chunks, labels and meta
lengths) and referenced by path with a fingerprint, never copied. planted: planted.n_rows rows of
the planted generator (the `planted:` section, its first seed) as a float32 memmap acts.npy with
the true directions and codes beside it (mnist_sae.acts.write_planted_source); every row is its
own example. Rows are split by example.
"""

import argparse

import numpy as np
import torch

from mnist_sae.acts import (check_finite, fingerprint, load_labels, load_meta, open_activations, parse_source,
                            split_by_example, write_index, write_planted_source)
from mnist_sae.vit import ViT, write_residuals
from stages._acts_params import start_acts_stage
from stages._common import DataError, ParamError, atomic_path, load_params, load_prepared, load_torch, run, write_json
from stages._planted_params import PlantedParams


def main():
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "model_pt", "cache_dir", "metrics_json"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device = start_acts_stage()
    spec = parse_source(p.source)
    if spec.kind == "transformer":
        ckpt = load_torch(args.model_pt)
        if not ckpt.get("trained"):
            raise DataError(f"{args.model_pt}: no transformer in it; run `dvc repro acts_model`")
        model = ViT.from_checkpoint(ckpt["vit"]).eval().to(device)
        x_NI, labels_N = load_prepared(args.prep_dir, "test")
        if p.n_examples > len(labels_N):
            raise ParamError(f"acts.n_examples = {p.n_examples}: the prepared test split has only {len(labels_N)} examples")
        index_N = np.sort(np.random.default_rng(p.seed).permutation(len(labels_N))[:p.n_examples])
    elif spec.kind == "planted":
        planted = load_params(PlantedParams, "planted")
    else:
        acts = open_activations(spec)
        check_finite(acts)
        labels_R = load_labels(p.labels, acts.n_rows) if p.labels is not None else None
        meta = load_meta(p.meta, acts.n_rows) if p.meta is not None else {}
    with atomic_path(args.cache_dir) as tmp:
        tmp.mkdir()
        if spec.kind == "transformer":
            meta = write_residuals(model, torch.from_numpy(x_NI[index_N]), tmp / "acts.npy")
            labels_R = labels_N[index_N].astype(np.int64)[meta["example"]]
            np.save(tmp / "example_index.npy", index_N)
            info = {"kind": "transformer", "source": p.source, "dtype": "float16", "d": model.cfg.d_model,
                    "n_rows": len(labels_R), "n_layers": model.cfg.n_layers, "n_tokens": model.cfg.n_tokens}
        elif spec.kind == "planted":
            info = {**write_planted_source(tmp, planted.spec(), planted.n_rows, planted.seeds[0]), "source": p.source}
            labels_R, meta = None, {}
        else:
            info = {"kind": spec.kind, "source": p.source, "path": spec.path, "dtype": spec.dtype or str(acts.data_RD.dtype),
                    "d": acts.d, "n_rows": acts.n_rows, "fingerprint": fingerprint(spec.path),
                    "n_layers": int(meta["layer"].max()) + 1 if "layer" in meta else None,
                    "n_tokens": int(meta["token"].max()) + 1 if "token" in meta else None}
        example_R = meta.get("example", np.arange(info["n_rows"]))
        try:
            splits = split_by_example(example_R, p.val_fraction, p.test_fraction, p.seed)
        except ValueError as e:
            raise ParamError(f"acts.val_fraction = {p.val_fraction}, test_fraction = {p.test_fraction}: {e}") from None
        write_index(tmp, labels_R, meta, splits, info)
    summary = {k: info[k] for k in ("kind", "d", "n_rows", "n_layers", "n_tokens")}
    summary["split_rows"] = {k: int(len(v)) for k, v in splits.items()}
    summary["device"] = device
    write_json(args.metrics_json, summary)
    print(f"cache: {info['n_rows']} rows x {info['d']} ({info['kind']}), splits {summary['split_rows']}")


if __name__ == "__main__":
    run(main)
