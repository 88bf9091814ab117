"""Run the chosen FFN over a split and keep what the SAE studies: logits or hidden activations."""

from __future__ import annotations

import numpy as np
import torch

from mnist_sae.ffn import FFN, pixels_to_float

SITES = ("logits", "hidden")


@torch.no_grad()
def collect_site(model: FFN, x_NI: torch.Tensor, site: str, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts_ND, logits_NO): the site's activations (D = O for logits, H for hidden) and logits.

    x_NI are uint8 pixels; each chunk is scaled to [0, 1] on the fly.
    """
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if x_NI.ndim != 2 or x_NI.shape[1] != model.n_in:
        raise ValueError(f"collect_site: expected x [N, {model.n_in}], got {tuple(x_NI.shape)}")
    device = model.W_in_IH.device
    acts, logits = [], []
    for i in range(0, x_NI.shape[0], chunk):
        h_BH = model.hidden(pixels_to_float(x_NI[i:i + chunk].to(device)))
        y_BO = model.head(h_BH)
        acts.append((h_BH if site == "hidden" else y_BO).cpu())
        logits.append(y_BO.cpu())
    return torch.cat(acts), torch.cat(logits)


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
