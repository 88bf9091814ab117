"""collect: the chosen FFN's site activations, logits and labels for train/val/test, + train stats.

    python -m stages.collect PREP_DIR FFN_CKPT OUT_DIR

Every array is an .npy written through np.lib.format.open_memmap (self-describing shape and
dtype) so downstream stages open it with mmap_mode="r".
"""

import argparse
import json

import numpy as np
import torch

from mnist_sae.collect import collect_site, normalization_stats
from mnist_sae.ffn import FFN
from mnist_sae.forked import cpu_workers
from stages._common import (atomic_path, load_device, load_params, load_prepared, load_torch, read_params_file, run,
                            setup_torch)
from stages._params import CollectParams


def write_npy(path, arr: np.ndarray) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape)
    out[:] = arr
    out.flush()
    del out


def main():
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "ffn_ckpt", "out_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(CollectParams, "collect", raw)
    device = load_device(raw)
    setup_torch(0)

    model = FFN.from_checkpoint(load_torch(args.ffn_ckpt)).to(device).eval()
    with atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        for split in ("train", "val", "test"):
            x_NI, labels_N = load_prepared(args.prep_dir, split)
            acts_ND, logits_NO = collect_site(model, torch.from_numpy(x_NI), p.site, chunk=p.batch_size,
                                              workers=cpu_workers(device))  # the bits do not depend on it
            acts_ND = acts_ND.numpy().astype(p.dtype)
            write_npy(tmp / f"{split}_acts.npy", acts_ND)
            write_npy(tmp / f"{split}_logits.npy", logits_NO.numpy().astype(np.float32))
            write_npy(tmp / f"{split}_labels.npy", labels_N.astype(np.uint8))
            if split == "train":
                mean_D, std_D = normalization_stats(acts_ND)
                write_npy(tmp / "mean_D.npy", mean_D)
                write_npy(tmp / "std_D.npy", std_D)
        info = {"site": p.site, "d": int(acts_ND.shape[1]), "normalize": p.normalize, "n_hidden": model.n_hidden,
                "dtype": p.dtype}
        (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run(main)
