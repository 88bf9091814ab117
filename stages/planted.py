"""planted: synthetic activations with planted features, one cache folder per generator seed.

    python -m stages.planted PLANTED_DIR

Writes PLANTED_DIR/seed<s>/ (mnist_sae.planted.write_planted: x.npy, directions.npy, codes,
idx_train/val/test.npy, info.json) for every s in planted.seeds, and PLANTED_DIR/info.json with
the seeds and params. The split permutation is seeded by the generator seed.
"""

import argparse
from dataclasses import asdict

from mnist_sae.planted import split_rows, write_planted
from stages._common import atomic_path, load_params, run, write_json
from stages._planted_params import PlantedParams


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("planted_dir")
    args = parser.parse_args()
    p = load_params(PlantedParams, "planted")
    spec = p.spec()
    with atomic_path(args.planted_dir) as tmp:
        tmp.mkdir()
        for seed in p.seeds:
            (tmp / f"seed{seed}").mkdir()
            splits = split_rows(p.n_rows, p.val_fraction, p.test_fraction, seed)
            info = write_planted(tmp / f"seed{seed}", spec, p.n_rows, seed, splits)
            print(f"seed {seed}: {p.n_rows} rows x {p.d}, {p.n_features} features, mean L0 {info['mean_l0']:.3f}")
        write_json(tmp / "info.json", {"seeds": p.seeds, "params": asdict(p)})


if __name__ == "__main__":
    run(main)
