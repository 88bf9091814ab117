"""Activation caches from any source: the rows an SAE reads, with labels and per-row metadata.

A source is named by a string (params `acts.source`):

    transformer                   the pipeline's own patch transformer (mnist_sae.vit): every
                                  layer x token of each collected example, one float16 memmap
    npy:<path>                    an (N, D) .npy of any float dtype, opened with mmap_mode="r"
    raw:<path>:<dtype>:<D>        a headerless memmap of rows of D values, dtype float16, float32
                                  or bfloat16 (read as uint16 and widened: numpy has no bfloat16)
    planted                       the planted-feature generator (mnist_sae.planted, one seed): a
                                  float32 memmap, and the truth beside it (true directions and
                                  sparse true codes), so the evaluation can add MCC and the rest

Optional labels (N,) integer .npy and meta .npz of named (N,) integer columns (e.g. example,
layer, token). Rows are split into train / val / test by example (meta column `example` when
present, else every row is its own example): all rows of one example land in one split, so the
tokens of one image never leak across splits (the shuffling trap of SAELens issue #277).

Nothing is loaded whole: checks (finite values) and reads run over chunks of rows; training
batches are gathered per step from the memmap and widened to float32 (`stream_batches`).

Shape letters beyond the package's: R rows of a cache (examples x layers x tokens for the
transformer), L layers, S tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_sae.errors import DataError
from mnist_sae.planted import PlantedSpec, dense_codes, generate

KINDS = ("transformer", "npy", "raw", "planted")
RAW_DTYPES = ("float16", "float32", "bfloat16")
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 65536  # rows per chunk of every pass over a memmap (bounds memory)
ALLOWED_SOURCE = "transformer, npy:<path>, raw:<path>:<float16|float32|bfloat16>:<D>, planted"


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # one of KINDS
    path: str | None = None  # npy and raw
    dtype: str | None = None  # raw: one of RAW_DTYPES
    d: int | None = None  # raw: values per row


def parse_source(text: str) -> SourceSpec:
    """The spec of `acts.source`; ValueError naming what is allowed. Paths may contain ':' for
    npy (everything after the prefix); for raw, dtype and D are the last two fields."""
    if text in ("transformer", "planted"):
        return SourceSpec(text)
    if text.startswith("npy:") and len(text) > 4:
        return SourceSpec("npy", path=text[4:])
    if text.startswith("raw:"):
        parts = text[4:].rsplit(":", 2)
        if len(parts) == 3 and parts[0] and parts[1] in RAW_DTYPES and parts[2].isdigit() and int(parts[2]) > 0:
            return SourceSpec("raw", path=parts[0], dtype=parts[1], d=int(parts[2]))
    raise ValueError(f"allowed {ALLOWED_SOURCE}")


# --- the activations array --------------------------------------------------------------------------


@dataclass
class Activations:
    """An (R, D) memmap and how to widen its rows to float32."""
    data_RD: np.ndarray  # np.memmap or np.load(..., mmap_mode="r")
    path: str
    bf16: bool = False  # data holds bfloat16 bit patterns as uint16

    @property
    def n_rows(self) -> int:
        return self.data_RD.shape[0]

    @property
    def d(self) -> int:
        return self.data_RD.shape[1]

    def rows(self, idx_B) -> np.ndarray:
        """float32 [B, D] of rows idx_B (any order; a sorted gather pages the file least)."""
        return to_float32(self.data_RD[idx_B], self.bf16)

    def chunks(self, rows_N: np.ndarray | None = None, chunk: int = CHUNK_ROWS):
        """(start, float32 chunk) over rows_N (default: all rows, in order)."""
        n = self.n_rows if rows_N is None else len(rows_N)
        for i in range(0, n, chunk):
            yield i, (to_float32(self.data_RD[i:i + chunk], self.bf16) if rows_N is None
                      else self.rows(rows_N[i:i + chunk]))


def to_float32(a: np.ndarray, bf16: bool = False) -> np.ndarray:
    """float32 copy; bfloat16 stored as uint16 is the top half of a float32's bits."""
    if bf16:
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a, dtype=np.float32)


def open_activations(spec: SourceSpec) -> Activations:
    """Open an npy or raw source read-only, shape and dtype checked; DataError naming the file."""
    if spec.kind not in ("npy", "raw"):
        raise ValueError(f"open_activations: {spec.kind!r} is not a file source")
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"{path}: not found (acts.source {spec.kind}:...)")
    if spec.kind == "npy":
        try:
            data_RD = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy ({e}); for a headerless file use raw:<path>:<dtype>:<D>") from None
        if data_RD.ndim != 2 or data_RD.shape[0] == 0 or data_RD.shape[1] == 0:
            raise DataError(f"{path}: expected a non-empty (N, D) array, got shape {data_RD.shape}")
        if data_RD.dtype.kind != "f":
            raise DataError(f"{path}: expected a float dtype (float16, float32, float64), got {data_RD.dtype}")
        return Activations(data_RD, str(path))
    store = np.uint16 if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
    row_bytes = spec.d * np.dtype(store).itemsize
    size = path.stat().st_size
    if size == 0 or size % row_bytes:
        raise DataError(f"{path}: {size} bytes is not a positive multiple of D x itemsize = {spec.d} x "
                        f"{np.dtype(store).itemsize} = {row_bytes} (check the dtype {spec.dtype} and D {spec.d})")
    data_RD = np.memmap(path, dtype=store, mode="r", shape=(size // row_bytes, spec.d))
    return Activations(data_RD, str(path), bf16=spec.dtype == "bfloat16")


def check_finite(acts: Activations, chunk: int = CHUNK_ROWS) -> None:
    """DataError naming the file, the count and the first bad row if any value is NaN or inf."""
    bad, first = 0, None
    for start, x_BD in acts.chunks(chunk=chunk):
        bad_B = ~np.isfinite(x_BD).all(axis=1)
        if bad_B.any():
            bad += int(bad_B.sum())
            first = first if first is not None else start + int(np.argmax(bad_B))
    if bad:
        raise DataError(f"{acts.path}: {bad} rows contain NaN or inf (first: row {first}); only finite values are allowed")


def fingerprint(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """sha256 of the file size, its first and last `block` bytes and 14 blocks spread between:
    a cheap check that a referenced (not copied) user cache has not changed."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({int(x) for x in np.linspace(0, max(0, size - block), 16)}):
            f.seek(off)
            h.update(f.read(block))
    return h.hexdigest()


# --- labels and metadata ----------------------------------------------------------------------------


def load_labels(path: str | os.PathLike, n_rows: int) -> np.ndarray:
    """(N,) int64 labels from an integer .npy whose length matches the activations."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (acts.labels)")
    try:
        y_R = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy ({e}) (acts.labels)") from None
    if y_R.ndim != 1 or y_R.dtype.kind not in "iu":
        raise DataError(f"{path}: acts.labels must be a 1-d integer array, got {y_R.dtype} {y_R.shape}")
    if len(y_R) != n_rows:
        raise DataError(f"{path}: acts.labels has {len(y_R)} rows, the activations {n_rows}")
    if len(y_R) and y_R.min() < 0:
        raise DataError(f"{path}: acts.labels must be >= 0, got {int(y_R.min())}")
    return np.asarray(y_R, dtype=np.int64)


def load_meta(path: str | os.PathLike, n_rows: int) -> dict[str, np.ndarray]:
    """Named (N,) int64 columns from an .npz (e.g. example, layer, token), sorted by name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (acts.meta)")
    try:
        with np.load(path, allow_pickle=False) as z:
            cols = {k: z[k] for k in sorted(z.files)}
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz ({e}) (acts.meta)") from None
    for name, c in cols.items():
        if c.ndim != 1 or c.dtype.kind not in "iu" or len(c) != n_rows:
            raise DataError(f"{path}: acts.meta column {name!r} must be (N,) integers with N = {n_rows}, "
                            f"got {c.dtype} {c.shape}")
    return {k: c.astype(np.int64) for k, c in cols.items()}


# --- splits and batches -----------------------------------------------------------------------------


def split_by_example(example_R: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: sorted row indices. The distinct examples are permuted with
    np.random.default_rng(seed); the first round(val_fraction E) go to val, the next
    round(test_fraction E) to test, the rest to train; every row follows its example."""
    ex_E, inv_R = np.unique(example_R, return_inverse=True)
    E = len(ex_E)
    n_val, n_test = int(round(val_fraction * E)), int(round(test_fraction * E))
    if n_val < 1 or n_test < 1 or n_val + n_test >= E:
        raise ValueError(f"split_by_example: {E} examples do not split into {n_val} val, {n_test} test and a train part")
    split_E = np.zeros(E, dtype=np.int64)  # 0 train, 1 val, 2 test
    perm_E = np.random.default_rng(seed).permutation(E)
    split_E[perm_E[:n_val]] = 1
    split_E[perm_E[n_val:n_val + n_test]] = 2
    split_R = split_E[inv_R.reshape(-1)]
    return {name: np.flatnonzero(split_R == i) for i, name in enumerate(SPLITS)}


def row_stats(acts: Activations, rows_N: np.ndarray, min_std: float = 1e-3, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population std of the given rows, float64 over chunks (two passes:
    the mean, then the mean squared deviation), as float32; std < min_std becomes 1, as in
    mnist_sae.collect.normalization_stats, which needs the rows in memory. Memory: one chunk."""
    n = len(rows_N)
    if n == 0:
        raise ValueError("row_stats: no rows")
    sum_D = np.zeros(acts.d)
    for _, x_BD in acts.chunks(rows_N, chunk):
        sum_D += x_BD.sum(0, dtype=np.float64)
    mean_D = sum_D / n
    sq_D = np.zeros(acts.d)
    for _, x_BD in acts.chunks(rows_N, chunk):
        sq_D += np.square(x_BD - mean_D).sum(0)
    std_D = np.sqrt(sq_D / n)
    std_D = np.where(std_D < min_std, 1.0, std_D)
    return mean_D.astype(np.float32), std_D.astype(np.float32)


def stream_batches(acts: Activations, rows_N: np.ndarray, batch_size: int, n_steps: int, rng: np.random.Generator):
    """n_steps float32 batches [B, D], each B rows drawn uniformly with replacement from rows_N
    and gathered from the memmap (sorted, so pages are read in order): memory is one batch,
    whatever the cache's size."""
    for _ in range(n_steps):
        idx_B = np.sort(rows_N[rng.integers(0, len(rows_N), size=batch_size)])
        yield acts.rows(idx_B)


# --- the cache folder ---------------------------------------------------------------------------------
# info.json (source, acts path, dtype, d, n_rows, fingerprint, has_labels, meta columns, ...),
# acts.npy (transformer and planted; a user cache is referenced by path), labels.npy, meta.npz,
# idx_{train,val,test}.npy; planted also truth_directions.npy and truth_codes_{row,col,val}.npy.
# Every SAE stage reads the folder, never the source name.


class Truth(NamedTuple):
    """The planted features of a cache: unit directions and the sparse true codes (sorted by row)."""
    W_true_TD: np.ndarray  # float32 [T, D]
    row_M: np.ndarray  # int64 row of each non-zero code, ascending
    col_M: np.ndarray  # int32 its feature
    val_M: np.ndarray  # float32 its magnitude

    def codes(self, rows_N: np.ndarray) -> np.ndarray:
        """c_NT float32 true codes of the given rows (0 where a feature is off)."""
        return dense_codes(self.row_M, self.col_M, self.val_M, rows_N, self.W_true_TD.shape[0])


TRUTH_FILES = {"W_true_TD": "truth_directions.npy", "row_M": "truth_codes_row.npy", "col_M": "truth_codes_col.npy",
               "val_M": "truth_codes_val.npy"}


def write_planted_source(folder: Path, spec: PlantedSpec, n_rows: int, seed: int) -> dict:
    """The planted source into `folder` (which must exist): n_rows rows of mnist_sae.planted.generate
    (spec, seed) as the float32 memmap acts.npy, the truth beside it; returns the info.json fields.
    The same spec, n_rows and seed give the bytes of the planted stage's seed<seed>/x.npy."""
    folder = Path(folder)
    pl = generate(spec, n_rows, seed, x_path=folder / "acts.npy")
    truth = Truth(pl.W_true_TD, pl.row_M, pl.col_M, pl.val_M)
    for name, file in TRUTH_FILES.items():
        np.save(folder / file, getattr(truth, name))
    return {"kind": "planted", "dtype": "float32", "d": spec.d, "n_rows": n_rows, "n_layers": None, "n_tokens": None,
            "has_truth": True, "n_features": spec.n_features, "planted_seed": seed,
            "planted_mean_l0": float(len(pl.row_M) / n_rows)}


def write_index(folder: Path, labels_R: np.ndarray | None, meta: dict[str, np.ndarray],
                splits: dict[str, np.ndarray], info: dict) -> None:
    """Labels, meta, split indices and info.json into `folder` (which must exist)."""
    folder = Path(folder)
    if labels_R is not None:
        np.save(folder / "labels.npy", labels_R)
    np.savez(folder / "meta.npz", **meta)
    for name, idx in splits.items():
        np.save(folder / f"idx_{name}.npy", idx)
    info = {**info, "has_labels": labels_R is not None, "meta_columns": sorted(meta),
            "split_rows": {k: int(len(v)) for k, v in splits.items()},
            "split_examples": {k: int(len(np.unique(meta["example"][v]))) if "example" in meta else int(len(v))
                               for k, v in splits.items()}}
    (folder / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


@dataclass
class Cache:
    acts: Activations
    labels_R: np.ndarray | None
    meta: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    info: dict
    truth: Truth | None = None  # planted source only

    def split_labels(self, split: str) -> np.ndarray | None:
        return None if self.labels_R is None else self.labels_R[self.splits[split]]

    def load_split(self, split: str) -> np.ndarray:
        """float32 [N, D] of one split, read in chunks (for caches small enough to hold)."""
        return self.load_rows(self.splits[split])

    def load_rows(self, rows_N: np.ndarray) -> np.ndarray:
        """float32 [N, D] of the given rows, read in chunks."""
        out_ND = np.empty((len(rows_N), self.acts.d), dtype=np.float32)
        for i, x_BD in self.acts.chunks(rows_N):
            out_ND[i:i + len(x_BD)] = x_BD
        return out_ND


def open_cache(folder: str | os.PathLike) -> Cache:
    """The folder written by the acts_cache stage; a referenced user file is fingerprint-checked."""
    folder = Path(folder)
    info_path = folder / "info.json"
    if not info_path.exists():
        raise DataError(f"{info_path}: not found; run `dvc repro acts_cache`")
    info = json.loads(info_path.read_text())
    if info["kind"] in ("transformer", "planted"):
        acts = Activations(np.load(folder / "acts.npy", mmap_mode="r"), str(folder / "acts.npy"))
    else:
        spec = SourceSpec(info["kind"], info["path"], info.get("dtype"), info.get("d"))
        if not Path(spec.path).is_file():
            raise DataError(f"{spec.path}: the cache's activations are gone; run `dvc repro acts_cache`")
        got = fingerprint(spec.path)
        if got != info["fingerprint"]:
            raise DataError(f"{spec.path}: changed since acts_cache ran (fingerprint {got[:12]}, expected "
                            f"{info['fingerprint'][:12]}); run `dvc repro acts_cache --force`")
        acts = open_activations(spec)
    if acts.n_rows != info["n_rows"] or acts.d != info["d"]:
        raise DataError(f"{acts.path}: shape {acts.data_RD.shape}, expected ({info['n_rows']}, {info['d']})")
    labels_R = np.load(folder / "labels.npy") if info["has_labels"] else None
    with np.load(folder / "meta.npz") as z:
        meta = {k: z[k] for k in sorted(z.files)}
    splits = {k: np.load(folder / f"idx_{k}.npy") for k in SPLITS}
    truth = None
    if info.get("has_truth"):
        truth = Truth(**{name: np.load(folder / file) for name, file in TRUTH_FILES.items()})
        if truth.W_true_TD.shape != (info["n_features"], info["d"]) or not len(truth.row_M) == len(truth.col_M) == len(truth.val_M):
            raise DataError(f"{folder}: truth arrays disagree with info.json (directions {truth.W_true_TD.shape})")
    return Cache(acts, labels_R, meta, splits, info, truth)
