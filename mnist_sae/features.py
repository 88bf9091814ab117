"""Feature analysis: what each latent of a trained SAE responds to and what it does to the logits.

For latent f on one split of N examples, with codes a_NF = encode(z_ND) (a >= 0; active = a != 0,
the hard gate that L0 counts):

    firing rate       r_f = (1/N) sum_n 1[a_nf != 0]
    mean activation   m_f = sum_n a_nf / sum_n 1[a_nf != 0]          (over the examples it fires on)
    label histogram   c_fC = #{n : a_nf != 0, label_n = C};  mode_f = argmax_C c_fC,
                      purity_f = max_C c_fC / sum_C c_fC
    top-k examples    the K active examples with the largest a_nf (fewer if f fires less often)
    logit effect      e_fO = change of the raw logits when a_f goes from 0 to m_f (logit_effects)
    input pattern     g_fI = (1/K) sum_k d u_f / d x |x = x_k over the top-k examples, I = 28 x 28
                      (input_patterns), u_f the SAE pre-activation of latent f
    hypothesis        one line of words made from those numbers (hypothesis)

A latent is live when it fires at least once on the split analysed. The SAE is anything with the
interface of mnist_sae.sae.SAE with G = 1: pre_acts(z_BD) -> u_GBF, encode(z_BD) -> a_GBF and a
decoder W_dec_GFD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mnist_sae import metrics
from mnist_sae.ffn import FFN, pixels_to_float
from mnist_sae.space import InputSpace

N_CLASSES = 10
SIDE = 28


def site_fn(ffn: FFN, site: str, space: InputSpace):
    """x_BI (floats in [0, 1]) -> z_BD, the SAE's input: the FFN's logits (site "logits") or
    hidden activations (site "hidden") y, mapped by space.to_z. Differentiable, so d z / d x flows
    through the FFN."""
    if site not in ("logits", "hidden"):
        raise ValueError(f"site must be 'logits' or 'hidden', got {site!r}")

    def fn(x_BI: torch.Tensor) -> torch.Tensor:
        return space.to_z(ffn(x_BI) if site == "logits" else ffn.hidden(x_BI))

    return fn


@dataclass
class LatentStats:
    """Streaming statistics of the codes a_NF over one split (see the module docstring)."""
    n_examples: int
    n_active_F: torch.Tensor      # int64, examples each latent fires on
    sum_act_F: torch.Tensor       # float64, sum of a_nf over all n (inactive ones add 0)
    max_act_F: torch.Tensor       # float32, largest activation (0 if never active)
    label_counts_FC: torch.Tensor  # int64, labels of the examples each latent fires on
    top_idx_FK: torch.Tensor      # int64, example indices of the top-k activations, -1 = none
    top_act_FK: torch.Tensor      # float32, their activations (0 where the index is -1)

    @property
    def firing_rate_F(self) -> torch.Tensor:
        return self.n_active_F.double() / max(self.n_examples, 1)

    @property
    def mean_act_F(self) -> torch.Tensor:
        """m_f: mean activation over the examples where latent f fires (0 for dead latents)."""
        return (self.sum_act_F / self.n_active_F.clamp(min=1).double()).float()

    @property
    def live_F(self) -> torch.Tensor:
        return self.n_active_F > 0


@torch.no_grad()
def latent_stats(sae, y_ND, labels_N: torch.Tensor, top_n: int, space: InputSpace,
                 chunk: int = 4096) -> LatentStats:
    """Encode z = space.to_z(y) in chunks and accumulate firing
    counts, activation sums, label histograms and the top-k activating examples of every latent
    (ties broken by the lower example index). y_ND: raw site activations, a tensor or an array
    (a memmap is read one chunk at a time, so a wide hidden site never sits in memory whole)."""
    n = y_ND.shape[0]
    if labels_N.shape != (n,):
        raise ValueError(f"latent_stats: labels {tuple(labels_N.shape)} do not match acts {tuple(y_ND.shape)}")
    if top_n < 1:
        raise ValueError(f"latent_stats: top_n must be >= 1, got {top_n}")
    W_dec_FD = sae.W_dec_GFD[0]
    n_latents, device = W_dec_FD.shape[0], W_dec_FD.device
    n_active_F = torch.zeros(n_latents, dtype=torch.int64, device=device)
    sum_act_F = torch.zeros(n_latents, dtype=torch.float64, device=device)
    max_act_F = torch.zeros(n_latents, device=device)
    counts_FC = torch.zeros(n_latents, N_CLASSES, dtype=torch.int64, device=device)
    top_act_FK = torch.zeros(n_latents, 0, device=device)
    top_idx_FK = torch.zeros(n_latents, 0, dtype=torch.int64, device=device)
    for start in range(0, n, chunk):
        rows = y_ND[start:start + chunk]
        rows = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.array(rows, dtype=np.float32))
        z_BD = space.to_z(rows.to(device=device, dtype=torch.float32))
        a_BF = sae.encode(z_BD)[0]
        active_BF = a_BF != 0
        n_active_F += active_BF.sum(0)
        sum_act_F += a_BF.sum(0, dtype=torch.float64)
        max_act_F = torch.maximum(max_act_F, a_BF.max(0).values)
        onehot_BC = torch.nn.functional.one_hot(labels_N[start:start + chunk].long().to(device), N_CLASSES)
        # counts <= N fit exactly in float64; int matmul is not supported on every device
        counts_FC += (active_BF.double().T @ onehot_BC.double()).round().long()
        # merge the running top-k with this chunk's candidates; a stable descending sort keeps
        # the earlier (lower-index) example first among equal activations, so results are exact
        idx_BF = torch.arange(start, start + a_BF.shape[0], device=device)[:, None].expand_as(a_BF)
        cand_act_FK = torch.cat([top_act_FK, a_BF.T], dim=1)
        cand_idx_FK = torch.cat([top_idx_FK, idx_BF.T], dim=1)
        order_FK = torch.sort(cand_act_FK, dim=1, descending=True, stable=True).indices[:, :top_n]
        top_act_FK = cand_act_FK.gather(1, order_FK)
        top_idx_FK = cand_idx_FK.gather(1, order_FK)
    top_idx_FK = torch.where(top_act_FK != 0, top_idx_FK, torch.full_like(top_idx_FK, -1))
    top_act_FK = torch.where(top_idx_FK >= 0, top_act_FK, torch.zeros_like(top_act_FK))
    return LatentStats(n, n_active_F.cpu(), sum_act_F.cpu(), max_act_F.cpu(), counts_FC.cpu(),
                       top_idx_FK.cpu(), top_act_FK.cpu())


@torch.no_grad()
def logit_effects(W_dec_FD: torch.Tensor, mean_act_F: torch.Tensor, space: InputSpace,
                  ffn: FFN | None = None) -> torch.Tensor:
    """e_FO: how the raw logits change when latent f goes from 0 to its mean active value m_f.

    The decoder is affine, z_hat = a @ W_dec + b_dec, so this change is m_f W_dec[f] whatever the
    other latents are (no background code to choose). Back in raw units (space.to_y_delta: times
    std when normalized, the mean cancels in a difference):  delta_y_fD = m_f W_dec[f] * std.
      logit site:   e_fO = delta_y_fO, the decoder row mapped back to raw logits.
      hidden site:  the FFN head is affine too (logits = h @ W_out_HO + b_out_O), so
                    e_fO = head(delta_h_fH) - head(0) = delta_h_fH @ W_out_HO, exactly.
    Pass ffn for the hidden site, None for the logit site.
    """
    delta_FD = space.to_y_delta(mean_act_F[:, None] * W_dec_FD)
    if ffn is None:
        return delta_FD
    return ffn.head(delta_FD) - ffn.head(torch.zeros_like(delta_FD[:1]))


def input_patterns(sae, fn, x_NI: np.ndarray | torch.Tensor, top_idx_FK: torch.Tensor,
                   latents_L: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """g_LI = mean over the top-k examples x_k of latent f of d u_f(x) / d x at x = x_k, for each
    latent f in latents_L; u_f = pre_acts(fn(x))_f, fn = site_fn(...), x = uint8 pixels / 255.
    Latents without active examples get zeros.

    All (latent, example) pairs go through the network as one batch of rows, in chunks: the rows
    are independent, so one backward of sum_rows u_{f(row)}(x_row) gives every row its own
    gradient, which index_add then averages per latent (one backward per chunk, not per latent).
    """
    device = sae.W_dec_GFD.device
    idx_LK = top_idx_FK[latents_L]
    lat_R, col_R = torch.nonzero(idx_LK >= 0, as_tuple=True)  # R: (latent, example) pairs
    ex_R = idx_LK[lat_R, col_R]
    grad_LI = torch.zeros(len(latents_L), SIDE * SIDE, dtype=torch.float64)
    for start in range(0, len(ex_R), chunk):
        rows = ex_R[start:start + chunk].numpy()
        x_BI = pixels_to_float(torch.as_tensor(np.asarray(x_NI[rows]))).to(device).requires_grad_(True)
        lat_B = lat_R[start:start + chunk]
        u_BF = sae.pre_acts(fn(x_BI))[0]
        u_B = u_BF.gather(1, latents_L[lat_B][:, None].to(device))[:, 0]
        (g_BI,) = torch.autograd.grad(u_B.sum(), x_BI)
        # summed on the CPU in float64: deterministic on every device
        grad_LI.index_add_(0, lat_B, g_BI.double().cpu())
    count_L = (idx_LK >= 0).sum(1).clamp(min=1)
    return (grad_LI / count_L[:, None]).float()


def _amount(v: float) -> str:
    """3.14 -> "3.1", 4.0 -> "4.0", 0.0183 -> "0.018": one decimal, two significant digits below 1."""
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"


def hypothesis(label_counts_C, effect_O, firing_rate: float) -> str:
    """One line from the numbers, e.g. "fires on 6s (94%); raises logit 6 by 3.1".

    Label part: purity >= 80% -> "fires on 6s (94%)"; two classes >= 80% together -> "fires on 6s
    (60%) and 5s (30%)"; otherwise "polysemantic: ..." with the three largest classes. Prefixed
    "dense" when it fires on more than 30% of examples, "rare" under 10 examples.
    Effect part: the largest raise and the largest drop of a logit, each named when it is at least
    a quarter of the largest |effect|; a latent that only lowers logits reads "inhibitory: ...".
    """
    counts = np.asarray(label_counts_C, dtype=np.int64)
    effect = np.asarray(effect_O, dtype=np.float64)
    total = int(counts.sum())
    if total == 0:
        return "dead on this split"
    order = np.argsort(-counts, kind="stable")
    share = counts[order] / total
    if share[0] >= 0.8:
        what = f"fires on {order[0]}s ({share[0]:.0%})"
    elif share[0] + share[1] >= 0.8:
        what = f"fires on {order[0]}s ({share[0]:.0%}) and {order[1]}s ({share[1]:.0%})"
    else:
        what = "polysemantic: " + ", ".join(f"{c}s {s:.0%}" for c, s in zip(order[:3], share[:3]) if s > 0)
    if firing_rate > 0.3:
        what = f"dense ({firing_rate:.0%} of examples), {what}"
    elif total < 10:
        what = f"rare ({total} example{'s' if total > 1 else ''}), {what}"

    scale = float(np.abs(effect).max()) if effect.size else 0.0
    up, down = int(np.argmax(effect)), int(np.argmin(effect))
    raises = effect[up] > 0 and effect[up] >= 0.25 * scale
    lowers = effect[down] < 0 and -effect[down] >= 0.25 * scale
    if scale < 1e-6:
        does = "no effect on the logits"
    elif raises and lowers:
        does = f"raises logit {up} by {_amount(effect[up])}, lowers logit {down} by {_amount(-effect[down])}"
    elif raises:
        does = f"raises logit {up} by {_amount(effect[up])}"
    else:
        does = f"inhibitory: lowers logit {down} by {_amount(-effect[down])}"
    return f"{what}; {does}"


def _round(v: float, digits: int = 3) -> float:
    return float(f"{v:.{digits}g}")


def build_report(stats: LatentStats, effect_FO: torch.Tensor, pattern_LI: torch.Tensor,
                 latents_L: torch.Tensor, labels_N) -> list[dict]:
    """One record per latent in latents_L (the live ones), sorted by firing rate (descending;
    ties by latent index). Keys: latent, firing_rate, n_active, mean_activation, max_activation,
    label_counts, mode, purity, top_n [{index, activation, label}], logit_effect [O],
    input_pattern [28][28] (3 significant digits), hypothesis."""
    labels_N = np.asarray(labels_N)
    purity_F = metrics.label_purity(stats.label_counts_FC)
    records = []
    for row, f in enumerate(latents_L.tolist()):
        counts = stats.label_counts_FC[f]
        top = [{"index": int(i), "activation": float(a), "label": int(labels_N[i])}
               for i, a in zip(stats.top_idx_FK[f].tolist(), stats.top_act_FK[f].tolist()) if i >= 0]
        rate = float(stats.firing_rate_F[f])
        records.append({
            "latent": f,
            "firing_rate": rate,
            "n_active": int(stats.n_active_F[f]),
            "mean_activation": float(stats.mean_act_F[f]),
            "max_activation": float(stats.max_act_F[f]),
            "label_counts": [int(c) for c in counts],
            "mode": int(counts.argmax()),
            "purity": float(purity_F[f]),
            "top_n": top,
            "logit_effect": [float(e) for e in effect_FO[f]],
            "input_pattern": [[_round(v) for v in r] for r in pattern_LI[row].view(SIDE, SIDE).tolist()],
            "hypothesis": hypothesis(counts.numpy(), effect_FO[f].numpy(), rate),
        })
    records.sort(key=lambda r: (-r["n_active"], r["latent"]))
    return records


def summary(stats: LatentStats) -> dict:
    """Small numbers for `dvc metrics`: live latents on the split, label purity (metrics.label_purity)
    averaged over live latents, pooled over all firings, and the number of latents >= 80% pure."""
    purity_F = metrics.label_purity(stats.label_counts_FC)
    return {
        "n_latents": int(len(purity_F)),
        "n_live": int(stats.live_F.sum()),
        # None (JSON null) rather than NaN when nothing fires: NaN is not JSON
        "mean_purity": metrics.live_mean(purity_F) if stats.live_F.any() else None,
        "pooled_purity": metrics.pooled_label_purity(stats.label_counts_FC) if stats.live_F.any() else None,
        "n_pure_80": int((purity_F[stats.live_F] >= 0.8).sum()),
    }


def analyse(sae, ffn: FFN, site: str, y_ND, x_NI, labels_N, top_n: int,
            space: InputSpace) -> tuple[list[dict], dict]:
    """(records, summary): build_report for every live latent of `sae` (G = 1) on one split and
    its summary numbers.

    y_ND: the split's raw site activations (tensor, array or memmap); x_NI: the same examples'
    uint8 pixels [N, 784]; labels_N: their labels; space: the SAE reads z = space.to_z(y).
    sae and ffn live on the same device.
    """
    n, d = y_ND.shape
    if sae.W_dec_GFD.shape[0] != 1:
        raise ValueError(f"analyse: expected a single SAE (G = 1), got G = {sae.W_dec_GFD.shape[0]}; use sae.select(g)")
    W_dec_FD = sae.W_dec_GFD[0]
    device = W_dec_FD.device
    if W_dec_FD.shape[1] != d:
        raise ValueError(f"analyse: SAE input width {W_dec_FD.shape[1]} != site width {d}")
    if tuple(x_NI.shape) != (n, SIDE * SIDE) or len(labels_N) != n:
        raise ValueError(f"analyse: expected pixels [{n}, {SIDE * SIDE}] and {n} labels, "
                         f"got {tuple(x_NI.shape)} and {len(labels_N)}")
    labels_N = torch.from_numpy(np.array(labels_N, dtype=np.int64))
    space = space.to(device)
    stats = latent_stats(sae, y_ND, labels_N, top_n, space)
    latents_L = torch.nonzero(stats.live_F).flatten()
    with torch.no_grad():
        effect_FO = logit_effects(W_dec_FD, stats.mean_act_F.to(device), space,
                                  ffn if site == "hidden" else None).cpu()
    pattern_LI = input_patterns(sae, site_fn(ffn, site, space), x_NI, stats.top_idx_FK, latents_L)
    return build_report(stats, effect_FO, pattern_LI, latents_L, labels_N.numpy()), summary(stats)
