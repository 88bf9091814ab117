"""The planted-feature generator: determinism, Zipf range, planned rates, hierarchy, codes."""

import numpy as np
import pytest

from mnist_sae.planted import (PlantedSpec, dense_codes, generate, load_planted, split_rows, write_planted,
                               zipf_probabilities)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = PlantedSpec(16, 8, 0.05, 0.3, corr_rank=2, corr_strength=0.4, noise_std=0.01, n_parents=2, children=2)
    a, b, c = generate(spec, 500, 3), generate(spec, 500, 3), generate(spec, 500, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a.x_ND, c.x_ND)
    m = generate(spec, 500, 3, x_path=tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy").tobytes() == a.x_ND.tobytes() and np.array_equal(m.row_M, a.row_M)


def test_zipf_probabilities_in_range_and_decreasing():
    p_T = zipf_probabilities(50, 0.01, 0.2, 1.0)
    assert p_T[0] == pytest.approx(0.2) and p_T[-1] == pytest.approx(0.01)
    assert (p_T >= 0.01 - 1e-12).all() and (p_T <= 0.2 + 1e-12).all() and (np.diff(p_T) < 0).all()
    assert np.allclose(zipf_probabilities(5, 0.1, 0.3, 0.0), 0.3)


@pytest.mark.parametrize("extra", [{}, {"corr_rank": 3, "corr_strength": 0.6}, {"n_parents": 3, "children": 3}])
def test_empirical_rates_close_to_planned(extra):
    pl = generate(PlantedSpec(20, 10, 0.05, 0.4, **extra), 40000, 0)
    rate_T = np.bincount(pl.col_M, minlength=20) / 40000
    # binomial standard error at p <= 0.4, n = 40000 is <= 0.0025; 5 sigma
    assert np.abs(rate_T - pl.rate_T).max() < 0.0125


def test_codes_rebuild_x_and_directions_are_unit():
    pl = generate(PlantedSpec(12, 6, 0.1, 0.5), 300, 1)
    c_NT = dense_codes(pl.row_M, pl.col_M, pl.val_M, np.arange(300), 12)
    assert np.allclose(c_NT @ pl.W_true_TD, pl.x_ND, atol=1e-5)
    assert np.allclose(np.linalg.norm(pl.W_true_TD, axis=1), 1, atol=1e-6) and (pl.val_M > 0).all()
    assert (np.diff(pl.row_M) >= 0).all()
    W = generate(PlantedSpec(4, 6, 0.1, 0.5), 10, 0).W_true_TD  # T <= D: orthonormal
    assert np.allclose(W @ W.T, np.eye(4), atol=1e-6)


def test_hierarchy_children_only_with_parent_and_siblings_exclusive():
    spec = PlantedSpec(14, 8, 0.05, 0.5, zipf_exponent=0.3, n_parents=2, children=3)
    pl = generate(spec, 5000, 0)
    fires_NT = dense_codes(pl.row_M, pl.col_M, pl.val_M, np.arange(5000), 14) > 0
    for par in (0, 1):
        kids = np.flatnonzero(pl.parent_T == par)
        assert len(kids) == 3
        assert not (fires_NT[:, kids].any(1) & ~fires_NT[:, par]).any()  # child without parent
        assert fires_NT[:, kids].sum(1).max() <= 1  # siblings exclusive
        assert fires_NT[:, kids].any()


def test_split_rows_disjoint_and_folder_round_trip(tmp_path):
    splits = split_rows(100, 0.1, 0.2, 0)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(100))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    spec = PlantedSpec(6, 4, 0.2, 0.5)
    write_planted(tmp_path, spec, 100, 0, splits)
    full = generate(spec, 100, 0)
    te = load_planted(tmp_path, "test")
    assert np.array_equal(te.x_ND, full.x_ND[splits["test"]])
    assert np.allclose(te.c_NT @ te.W_true_TD, te.x_ND, atol=1e-5)


def test_bad_spec_raises():
    with pytest.raises(ValueError, match="p_min <= p_max"):
        PlantedSpec(8, 4, 0.5, 0.1)
    with pytest.raises(ValueError, match="exceed"):
        PlantedSpec(8, 4, 0.1, 0.5, n_parents=3, children=3)
