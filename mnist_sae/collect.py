"""Run the chosen FFN over a split and keep what the SAE studies: logits or hidden activations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mnist_sae.errors import DataError
from mnist_sae.forked import map_forked
from mnist_sae.pixels import pixels_to_float
from mnist_sae.settings import SITES
from mnist_sae.space import InputSpace

if TYPE_CHECKING:  # the readers below need no FFN; only collect_site's signature names it
    from mnist_sae.ffn import FFN


def collect_site(model: FFN, x_NI: torch.Tensor, site: str, chunk: int = 4096,
                 workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts_ND, logits_NO): the site's activations (D = O for logits, H for hidden) and logits.

    x_NI are uint8 pixels; each chunk of rows is scaled to [0, 1] on the fly. The chunks are
    independent: with workers > 1 they are computed in forked processes (mnist_sae.forked), each
    exactly as it would be here.
    """
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if x_NI.ndim != 2 or x_NI.shape[1] != model.n_in:
        raise ValueError(f"collect_site: expected x [N, {model.n_in}], got {tuple(x_NI.shape)}")
    device = model.W_in_IH.device

    @torch.no_grad()  # here rather than on collect_site: a forked worker runs this alone
    def one_chunk(i):
        h_BH = model.hidden(pixels_to_float(x_NI[i:i + chunk].to(device)))
        y_BO = model.head(h_BH)
        return (h_BH if site == "hidden" else y_BO).cpu(), y_BO.cpu()

    parts = map_forked(one_chunk, range(0, x_NI.shape[0], chunk), workers)
    return torch.cat([a for a, _ in parts]), torch.cat([y for _, y in parts])


def normalization_stats(acts_ND: np.ndarray, min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over examples (float64 accumulation, population std).

    Dimensions that (almost) never vary on train, std < `min_std` (ReLU units dead on train), get
    std 1 instead: clamping to a tiny std would blow up the rare val/test example that does
    activate them (seen at the hidden site: one such unit made the val normalized MSE ~1e4).
    """
    a_ND = np.asarray(acts_ND, dtype=np.float64)
    mean_D = a_ND.mean(axis=0)
    std_D = a_ND.std(axis=0)
    std_D = np.where(std_D < min_std, 1.0, std_D)
    return mean_D.astype(np.float32), std_D.astype(np.float32)


# --- reading the collect stage's folder --------------------------------------------------------
# {split}_acts.npy (raw site activations), {split}_logits.npy, {split}_labels.npy, mean_D.npy,
# std_D.npy, info.json (site, d, normalize): one reader for every stage downstream of collect.


def _require(paths) -> None:
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: not found; run `dvc repro collect`")


def load_space(collected_dir) -> tuple[dict, InputSpace]:
    """(info, space): info.json (site, width d, normalize flag) and the SAE's input space built from
    the train split's per-dimension mean and std (float32) and that flag."""
    d = Path(collected_dir)
    _require([d / "info.json", d / "mean_D.npy", d / "std_D.npy"])
    info = json.loads((d / "info.json").read_text())
    mean_D = torch.from_numpy(np.load(d / "mean_D.npy").astype(np.float32))
    std_D = torch.from_numpy(np.load(d / "std_D.npy").astype(np.float32))
    if mean_D.shape != (info["d"],) or std_D.shape != (info["d"],):
        raise DataError(f"{d}: mean/std of shape {tuple(mean_D.shape)}, {tuple(std_D.shape)} do not match d = {info['d']}")
    return info, InputSpace(mean_D, std_D, bool(info["normalize"]))


def open_split(collected_dir, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(acts_ND, logits_NO, labels_N) of one split, memory-mapped (mmap_mode="r"), shape-checked
    against each other and against info.json's width d."""
    d = Path(collected_dir)
    paths = [d / f"{split}_acts.npy", d / f"{split}_logits.npy", d / f"{split}_labels.npy"]
    _require([d / "info.json", *paths])
    width = json.loads((d / "info.json").read_text())["d"]
    acts_ND, logits_NO, labels_N = (np.load(p, mmap_mode="r") for p in paths)
    n = labels_N.shape[0]
    if (acts_ND.ndim != 2 or acts_ND.shape != (n, width) or logits_NO.ndim != 2 or logits_NO.shape[0] != n
            or labels_N.ndim != 1):
        raise DataError(f"{d}/{split}_*.npy: expected acts [N, {width}], logits [N, O], labels [N] with one N, "
                        f"got {acts_ND.shape}, {logits_NO.shape}, {labels_N.shape}")
    return acts_ND, logits_NO, labels_N


def load_z(collected_dir, split: str, space: InputSpace) -> torch.Tensor:
    """The SAE's input z_ND (float32) of one split, read into memory."""
    return space.to_z(load_collected(collected_dir, split)[0])


def load_collected(collected_dir, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y_ND float32, logits_NO float32, labels_N int64) of one split, read into memory: the raw
    site activations (not normalized), the FFN's logits and the labels."""
    acts_ND, logits_NO, labels_N = open_split(collected_dir, split)
    return (torch.from_numpy(np.array(acts_ND, dtype=np.float32)),
            torch.from_numpy(np.array(logits_NO, dtype=np.float32)),
            torch.from_numpy(np.array(labels_N, dtype=np.int64)))
