"""Evaluation of an SAE on an activation cache, with no classifier head needed.

Per split: metrics.reconstruction (MSE, normalized MSE, explained variance, cosine, L2 ratio,
relative reconstruction bias, L0, dead and dense fractions) and metrics.core_metrics (SAEBench's
core set, under "core"), overall and per layer when the cache has a layer column. With the
transformer: spliced fidelity (mnist_sae.vit.spliced_logits), the SAE's reconstruction fed back at
each layer at every token, and the test split's per-layer core metrics gain the CE / KL scores
against zero ablation of the residual at that layer. Probes: logistic regression on SAE
codes vs raw activations, per layer, same rows and budget, with per-class precision / recall / F1.
Feature usage: each latent's firings by layer, by token and by label on the test split. With a
planted source (the cache carries the truth): the ground-truth metrics of mnist_sae.truth (MMCS,
MCC, recovered fraction, uniqueness, mean precision / recall / F1 of firing) on the test split.

Streaming: no split is read whole. score_split makes two passes over a split's rows in chunks
from the memmap (the rows' means, then the SAE), accumulating float64 sums (RowSums) from which
the metrics are formed as in mnist_sae.metrics; the probes, usage counts and ground truth visit
the same chunks. Memory is one chunk (plus per-row index arrays and, for the truth, two booleans of
firing per row and matched pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from mnist_sae import metrics, truth
from mnist_sae.acts import Cache, Truth
from mnist_sae.acts_fit import checkpoint_space
from mnist_sae.baselines import fit_probe
from mnist_sae.evaluate import CORE_NOTE, core_table
from mnist_sae.sae import SAE, reconstruct
from mnist_sae.space import InputSpace


@dataclass(frozen=True)
class EvalSettings:
    dense_threshold: float  # a latent is dense when active on more than this share of the rows
    probe_token: int | None  # probes read this token's rows; None = all
    probe_n_train: int  # train rows per probe (seeded subsample), the same for codes and raw
    probe_C: float  # inverse L2 strength of the logistic probes
    probe_max_iter: int  # lbfgs iterations
    seed: int  # probe subsample and fit
    chunk_rows: int  # rows per chunk of every pass over a split (memory)


# --- streaming: a split is read from the memmap one chunk of rows at a time ---------------------------


class Chunk(NamedTuple):
    """One chunk of a split's scored rows: their positions among those rows, the cache rows, x
    (source units), z (standardized), the reconstructions and the codes."""
    pos_B: np.ndarray
    rows_B: np.ndarray
    x_BD: torch.Tensor
    z_BD: torch.Tensor
    z_hat_BD: torch.Tensor
    x_hat_BD: torch.Tensor
    a_BF: torch.Tensor


def recon_chunks(cache: Cache, rows_N: np.ndarray, sae: SAE, space: InputSpace, chunk: int):
    """The SAE on rows_N, `chunk` rows at a time (memory: one chunk, whatever the split's size).
    reconstruct runs in pieces of 4096 rows, so a chunk that is a multiple of 4096 gives every row
    the bits of one pass over the whole split."""
    for i, x_BD in cache.acts.chunks(rows_N, chunk):
        x_BD = torch.from_numpy(x_BD)
        z_BD = space.to_z(x_BD)
        z_hat_BD, a_BF = (t.cpu() for t in reconstruct(sae, z_BD))  # the SAE may sit on CUDA
        yield Chunk(np.arange(i, i + len(x_BD)), rows_N[i:i + len(x_BD)], x_BD, z_BD, z_hat_BD,
                    space.to_y(z_hat_BD), a_BF)


def _groups(group_N: np.ndarray | None, groups: list[int], start: int, n: int):
    """("all", None), then (g, bool mask of rows start..start+n in group g) for each g."""
    yield "all", None
    for g in groups:
        yield g, torch.from_numpy(group_N[start:start + n] == g)


def group_means(cache: Cache, rows_N: np.ndarray, group_N: np.ndarray | None, groups: list[int], chunk: int) -> dict:
    """{"all": mean_D of rows_N, g: mean_D of the rows with group_N == g}, float64, summed chunk by
    chunk (NaN for a group without rows): the first pass of score_split."""
    sum_D = {g: torch.zeros(cache.acts.d, dtype=torch.float64) for g in ["all", *groups]}
    n = dict.fromkeys(sum_D, 0)
    for i, x_BD in cache.acts.chunks(rows_N, chunk):
        x_BD = torch.from_numpy(x_BD).double()
        for g, keep_B in _groups(group_N, groups, i, len(x_BD)):
            x_gD = x_BD if keep_B is None else x_BD[keep_B]
            sum_D[g] += x_gD.sum(0)
            n[g] += len(x_gD)
    return {g: s_D / n[g] for g, s_D in sum_D.items()}


class RowSums:
    """metrics.reconstruction and the row part of metrics.core_metrics over chunks of rows: float64
    sums of the same per-row terms, then the same divisions. One chunk gives those functions'
    numbers bit for bit; more chunks change only the float64 summation order (tests/test_acts.py
    checks both). Explained variance is about the rows' own mean, mean_D (float64: group_means);
    the centred relative bias about centre_D (the train mean)."""

    KEYS = ("sse", "sst", "mse", "mse_norm", "cos", "l2", "l2_rows", "bias_num", "bias_den", "raw_bias_num",
            "raw_bias_den", "l0", "l1")

    def __init__(self, mean_D: torch.Tensor, centre_D: torch.Tensor):
        self.mean_D, self.centre_D = mean_D, centre_D
        self.n, self.fired_F = 0, None
        self.sum = {k: torch.zeros((), dtype=torch.float64) for k in self.KEYS}

    def add(self, x_BD: torch.Tensor, z_BD: torch.Tensor, z_hat_BD: torch.Tensor, x_hat_BD: torch.Tensor,
            a_BF: torch.Tensor) -> None:
        x, x_hat = x_BD.double(), x_hat_BD.double()
        norm_B, norm_hat_B = x.norm(dim=1), x_hat.norm(dim=1)
        xc, xc_hat = (x_BD - self.centre_D).double(), (x_hat_BD - self.centre_D).double()
        terms = {"sse": (x - x_hat).pow(2).sum(), "sst": (x - self.mean_D).pow(2).sum(),
                 "mse": metrics.mse_per_example(x_BD, x_hat_BD).sum(),
                 "mse_norm": metrics.mse_per_example(z_BD, z_hat_BD).sum(),
                 "cos": ((x * x_hat).sum(dim=1) / (norm_B * norm_hat_B).clamp(min=1e-12)).sum(),
                 "l2": (norm_hat_B[norm_B > 0] / norm_B[norm_B > 0]).sum(), "l2_rows": (norm_B > 0).sum(),
                 "bias_num": xc_hat.pow(2).sum(), "bias_den": (xc_hat * xc).sum(),
                 "raw_bias_num": x_hat.pow(2).sum(), "raw_bias_den": (x_hat * x).sum(),
                 "l0": metrics.l0_per_example(a_BF).double().sum(), "l1": a_BF.double().abs().sum(dim=1).sum()}
        for k, v in terms.items():
            self.sum[k] += v
        fired_F = (a_BF != 0).sum(0)
        self.fired_F = fired_F if self.fired_F is None else self.fired_F + fired_F
        self.n += len(x_BD)

    def scores(self, dense_threshold: float) -> dict:
        """metrics.reconstruction's dict plus "core" (core_metrics' reconstruction and sparsity keys)."""
        s, n = {k: v.item() if k == "l2_rows" else v for k, v in self.sum.items()}, self.n
        freq_F = self.fired_F.double() / n  # metrics.latent_frequency
        ev = (1.0 - s["sse"] / s["sst"]).item()
        shared = {"mse": (s["mse"] / n).item(), "explained_variance": ev, "cosine_similarity": (s["cos"] / n).item(),
                  "l2_ratio": (s["l2"] / s["l2_rows"]).item(), "l0": (s["l0"] / n).item()}
        core = {**shared, "relative_reconstruction_bias": (s["raw_bias_num"] / s["raw_bias_den"]).item(),
                "l1": (s["l1"] / n).item(), "alive_fraction": metrics.alive_fraction(freq_F),
                "freq_over_1_percent": metrics.dense_fraction(freq_F, 0.01),
                "freq_over_10_percent": metrics.dense_fraction(freq_F, 0.1)}
        return {**shared, "mse_norm": (s["mse_norm"] / n).item(),
                "relative_reconstruction_bias": (s["bias_num"] / s["bias_den"]).item(),
                "dead_fraction": metrics.dead_fraction(freq_F),
                "dense_fraction": metrics.dense_fraction(freq_F, dense_threshold), "core": core}


def score_split(cache: Cache, rows_N: np.ndarray, sae: SAE, space: InputSpace,
                layers: list[int], dense_threshold: float, chunk: int, visitors=()) -> dict:
    """RowSums.scores of the SAE on rows_N, and "per_layer" ({layer: the same on that layer's rows};
    empty without layers), in two passes over the memmap (the rows' means, then the SAE): memory
    is one chunk. Each visitor is called with every Chunk (usage counts, probes, truth)."""
    layer_N = cache.meta["layer"][rows_N] if layers else None
    sums = {g: RowSums(m_D, space.y_mean_D) for g, m_D in group_means(cache, rows_N, layer_N, layers, chunk).items()}
    for ch in recon_chunks(cache, rows_N, sae, space, chunk):
        for g, keep_B in _groups(layer_N, layers, int(ch.pos_B[0]), len(ch.pos_B)):
            sums[g].add(*(t if keep_B is None else t[keep_B] for t in ch[2:]))
        for visit in visitors:
            visit(ch)
    return sums.pop("all").scores(dense_threshold) | {"per_layer": {str(l): s.scores(dense_threshold)
                                                                      for l, s in sums.items()}}


def core_downstream(**head) -> dict:
    """metrics.core_metrics' downstream keys (CE / KL scores against zero ablation) from
    labels_E and the logits alone, for rows scored by RowSums: core_metrics is called on one zero
    row and only metrics.CORE_DOWNSTREAM_KEYS are kept, so the scores keep their one definition."""
    zero_1D = torch.zeros(1, 1)
    core = metrics.core_metrics(zero_1D, zero_1D, **head)
    return {k: core[k] for k in metrics.CORE_DOWNSTREAM_KEYS}


def scored_rows(rows_N: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """rows_N, or a seeded subsample of max_rows of them (in order) when there are more: what
    acts_eval scores of a split (a budget of time; memory is one chunk either way)."""
    keep_N = row_subsample(len(rows_N), max_rows, seed)
    return rows_N if keep_N is None else rows_N[keep_N]


def row_subsample(n: int, max_rows: int, seed: int) -> np.ndarray | None:
    """A bool mask over n rows keeping a seeded uniform subsample of max_rows of them (in order),
    or None when all n fit."""
    if n <= max_rows:
        return None
    keep_N = np.zeros(n, dtype=bool)
    keep_N[np.random.default_rng(seed).choice(n, max_rows, replace=False)] = True
    return keep_N


class CacheScores(NamedTuple):
    splits: dict  # {split: score_split's dict}
    probes: dict  # {layer: {"codes" | "raw": metrics.per_class_prf}}; {} without labels
    probe_rows: int  # train rows per probe
    columns: dict  # {name: the test rows' values} of the usage columns (layer, token, label where present)
    usage: dict  # feature_usage of the test split
    truth: dict | None  # TruthFiring.scores of the test split (planted caches)


def score_cache(cache: Cache, rows: dict[str, np.ndarray], sae: SAE, space: InputSpace,
                layers: list[int], s: EvalSettings) -> CacheScores:
    """score_split of train, val and test (rows: each split's scored rows), streamed; the train
    pass keeps the probes' rows, the probes are fitted, and the test pass feeds the probes, the
    usage counts and (planted) the ground truth."""
    probes = Probes(cache, rows, layers, s) if cache.labels_R is not None else None
    columns = {k: cache.meta[k][rows["test"]] for k in ("layer", "token") if k in cache.meta}
    if cache.labels_R is not None:
        columns["label"] = cache.labels_R[rows["test"]]
    usage = UsageCounts(columns)
    true = None if cache.truth is None else TruthFiring(sae, space, cache.truth)
    score = partial(score_split, cache, sae=sae, space=space, layers=layers,
                    dense_threshold=s.dense_threshold, chunk=s.chunk_rows)
    splits = {"train": score(rows_N=rows["train"], visitors=[probes.gather] if probes else [])}
    splits["val"] = score(rows_N=rows["val"])
    if probes:
        probes.fit()
    splits["test"] = score(rows_N=rows["test"], visitors=[v for v in (usage, true, probes and probes.predict) if v])
    return CacheScores(splits, probes.scores() if probes else {}, probes.n_train if probes else 0, columns,
                       usage.usage, true and true.scores())


# --- with the transformer: the reconstruction spliced back into the model ------------------------------


def sae_replacer(sae: SAE, space: InputSpace):
    """r_BSD -> the SAE's reconstruction of every token's residual, in the residual's units."""

    def replace(r_BSD: torch.Tensor) -> torch.Tensor:
        z_hat_ND = reconstruct(sae, space.to_z(r_BSD.reshape(-1, r_BSD.shape[-1])))[0].cpu()
        return space.to_y(z_hat_ND).reshape(r_BSD.shape)
    return replace


def splice_summary(clean_NO: torch.Tensor, spliced_NO: torch.Tensor, ablated_NO: torch.Tensor, labels_N: torch.Tensor) -> dict:
    """Accuracy and CE of the clean and spliced model, the drop, KL(clean || spliced) and CE
    recovered against mean ablation (metrics.ce_recovered)."""
    out = {"acc_clean": metrics.accuracy(clean_NO, labels_N), "acc_spliced": metrics.accuracy(spliced_NO, labels_N),
           "ce_clean": metrics.cross_entropy(clean_NO, labels_N), "ce_spliced": metrics.cross_entropy(spliced_NO, labels_N),
           "ce_ablated": metrics.cross_entropy(ablated_NO, labels_N), "kl": metrics.kl_divergence(clean_NO, spliced_NO),
           "agreement": metrics.agreement(clean_NO, spliced_NO)}
    out["acc_drop_pp"] = 100.0 * (out["acc_clean"] - out["acc_spliced"])
    out["ce_increase"] = out["ce_spliced"] - out["ce_clean"]
    out["ce_recovered"] = metrics.ce_recovered(out["ce_clean"], out["ce_spliced"], out["ce_ablated"])
    return out


def token_means(cache: Cache, rows_N: np.ndarray, layers: list[int], n_tokens: int) -> dict[int, torch.Tensor]:
    """{layer: mean_SD}, the mean residual per token of the given rows at that layer (float32): the
    mean ablation. One (layer, token) holds one row per example, so each is read on its own (at
    most the prepared test split's images), not the split."""
    layer_N, token_N = cache.meta["layer"][rows_N], cache.meta["token"][rows_N]
    return {l: torch.stack([torch.from_numpy(cache.load_rows(rows_N[(layer_N == l) & (token_N == t)])).mean(0)
                            for t in range(n_tokens)]) for l in layers}


def splice_layers(model, sae: SAE, space: InputSpace, x_EI: torch.Tensor, labels_E: torch.Tensor,
                  mean_LSD: dict[int, torch.Tensor], layers: list[int]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({layer: splice_summary}, {layer: spliced_head}) for images x_EI: the SAE's reconstruction
    spliced in after each layer at every token, the mean ablation (mean_LSD[layer], token_means of
    the train rows) and the zero ablation (the residual after that layer set to 0, SAEBench's).
    spliced_head holds core_metrics' keyword arguments: labels_E, logits_{clean,sae,zero}_EO."""
    from mnist_sae.vit import spliced_logits

    out, heads = {}, {}
    for l in layers:
        clean_NO, spliced_NO = spliced_logits(model, x_EI, l, sae_replacer(sae, space))
        _, ablated_NO = spliced_logits(model, x_EI, l, lambda r_BSD: mean_LSD[l].expand_as(r_BSD))
        _, zero_NO = spliced_logits(model, x_EI, l, torch.zeros_like)
        out[str(l)] = splice_summary(clean_NO, spliced_NO, ablated_NO, labels_E)
        heads[str(l)] = {"labels_E": labels_E, "logits_clean_EO": clean_NO, "logits_sae_EO": spliced_NO,
                         "logits_zero_EO": zero_NO}
    return out, heads


def score_layer_saes(layer_ckpts: dict, cache: Cache, rows_N: np.ndarray, dense_threshold: float, chunk: int,
                     device: str = "cpu", splice=None) -> dict:
    """{layer: {"test": metrics.reconstruction's keys, "spliced": splice(...)}} of the per-layer SAEs
    of acts_sae ({layer: checkpoint}), each on its own layer's rows of rows_N (the scored test rows);
    splice(sae, space, layer) -> splice_summary, or None without a head."""
    out = {}
    for l, c in sorted(layer_ckpts.items()):
        sae = SAE.from_checkpoint(c["sae"]).eval().to(device)
        rows_l = rows_N[cache.meta["layer"][rows_N] == int(l)]
        space = checkpoint_space(c)
        test = score_split(cache, rows_l, sae, space, [], dense_threshold, chunk)
        out[l] = {"test": {k: v for k, v in test.items() if k not in ("core", "per_layer")}}
        if splice is not None:
            out[l]["spliced"] = splice(sae, space, int(l))
    return out


# --- visitors of a streamed split: ground truth, probes, feature usage ----------------------------------


class TruthFiring:
    """mnist_sae.truth's metrics of the SAE's dictionary against a planted cache's features on the
    rows it is shown (add: a Chunk's rows and codes). The SAE reads z = (x - mean) / std, so
    x_hat = mean + std * (b_dec + a @ W_dec): latent f's atom in the cache's units is std_D * w_f
    (elementwise, space.to_y_delta), and that is what is compared with the true directions (comparing w_f itself
    would bend every direction by the per-dimension scaling). Kept per row: whether each matched
    latent and its feature fire (2 bytes per row and pair, the rows at most acts.eval.max_rows)."""

    def __init__(self, sae: SAE, space: InputSpace, true: Truth, threshold: float = truth.RECOVERED_COSINE):
        self.W_dec_FD = space.to_y_delta(sae.W_dec_GFD[0].detach().cpu()).double().numpy()
        self.true, self.threshold = true, threshold
        self.f_P, self.t_P = truth.hungarian_match(truth.abs_cosines(self.W_dec_FD, true.W_true_TD))
        self.live_F = np.zeros(len(self.W_dec_FD), dtype=bool)
        self.on, self.true_on = [], []

    def add(self, rows_B: np.ndarray, a_BF: torch.Tensor) -> None:
        a_BF = a_BF.numpy()
        self.live_F |= (a_BF != 0).any(0)
        self.on.append(a_BF[:, self.f_P] != 0)
        self.true_on.append(self.true.codes(rows_B)[:, self.t_P] != 0)

    def __call__(self, ch: Chunk) -> None:
        self.add(ch.rows_B, ch.a_BF)

    def scores(self) -> dict:
        # one "row" whose non-zeros are the live latents: truth_scores counts uniqueness over them
        out = truth.truth_scores(self.W_dec_FD, self.true.W_true_TD, self.live_F[None, :], threshold=self.threshold)
        pairs_P = np.arange(len(self.f_P))
        prf = truth.firing_prf(np.concatenate(self.on), np.concatenate(self.true_on), pairs_P, pairs_P)
        out.update({k[:-2]: float(v.mean()) for k, v in prf.items()})
        return {**out, "recovered_cosine": self.threshold, "n_features": int(self.true.W_true_TD.shape[0])}


def probe_rows(cache: Cache, rows_N: np.ndarray, layer: int | None, token: int | None) -> np.ndarray:
    """Positions (into rows_N, rows of the cache) of the rows of one layer (None: all) and token
    (None: all)."""
    keep_N = np.ones(len(rows_N), dtype=bool)
    if layer is not None:
        keep_N &= cache.meta["layer"][rows_N] == layer
    if token is not None:
        keep_N &= cache.meta["token"][rows_N] == token
    return np.flatnonzero(keep_N)


def _in_chunk(pos_P: np.ndarray, ch: Chunk) -> np.ndarray:
    """Indices into the chunk of the sorted positions pos_P that fall in it."""
    lo, hi = np.searchsorted(pos_P, [ch.pos_B[0], ch.pos_B[-1] + 1])
    return pos_P[lo:hi] - ch.pos_B[0]


class Probes:
    """Logistic probes on SAE codes vs raw activations per layer (None: one over all rows), same
    rows and budget for both (baselines.fit_probe): `gather` visits the train split's chunks and
    keeps the probe rows' features (a seeded subsample of probe_n_train rows per layer), `fit`,
    then `predict` visits the test split's chunks; `scores` = metrics.per_class_prf per layer."""

    FEATURES = ("codes", "raw")

    def __init__(self, cache: Cache, rows: dict[str, np.ndarray], layers: list[int], s: EvalSettings):
        self.s, self.n_classes = s, int(cache.labels_R.max()) + 1
        rng = np.random.default_rng(s.seed)
        self.pos, self.y = {"train": {}, "test": {}}, {"train": {}, "test": {}}
        for l in layers or [None]:
            key = "all" if l is None else str(l)
            tr = probe_rows(cache, rows["train"], l, s.probe_token)
            self.pos["train"][key] = np.sort(rng.permutation(tr)[:s.probe_n_train])
            self.pos["test"][key] = probe_rows(cache, rows["test"], l, s.probe_token)
            for split in self.y:
                self.y[split][key] = cache.labels_R[rows[split][self.pos[split][key]]]
        self.kept = {k: {name: [] for name in self.FEATURES} for k in self.pos["train"]}  # train features
        self.pred = {k: {name: [] for name in self.FEATURES} for k in self.pos["test"]}
        self.probes = None

    @staticmethod
    def _features(ch: Chunk, i_P: np.ndarray) -> dict[str, np.ndarray]:
        return {"codes": ch.a_BF[i_P].numpy(), "raw": ch.x_BD[i_P].numpy()}

    def gather(self, ch: Chunk) -> None:
        for key, pos_P in self.pos["train"].items():
            for name, f in self._features(ch, _in_chunk(pos_P, ch)).items():
                self.kept[key][name].append(f)

    def fit(self) -> None:
        s = self.s
        self.probes = {key: {name: fit_probe(np.concatenate(parts), self.y["train"][key], C=s.probe_C,
                                             max_iter=s.probe_max_iter, seed=s.seed) for name, parts in by.items()}
                       for key, by in self.kept.items()}

    def predict(self, ch: Chunk) -> None:
        for key, pos_P in self.pos["test"].items():
            i_P = _in_chunk(pos_P, ch)
            if len(i_P):
                for name, f in self._features(ch, i_P).items():
                    self.pred[key][name].append(self.probes[key][name].predict(np.asarray(f, dtype=np.float64)))

    @property
    def n_train(self) -> int:
        """Train rows of the last layer's probe (the same budget for every layer)."""
        return len(list(self.pos["train"].values())[-1])

    def scores(self) -> dict:
        return {key: {name: metrics.per_class_prf(self.y["test"][key], np.concatenate(parts), self.n_classes)
                      for name, parts in by.items()} for key, by in self.pred.items()}


def feature_usage(a_NF: torch.Tensor, columns: dict[str, np.ndarray], sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """{"count_F": rows each latent fires on, name_FV: firings of latent f on rows with column
    value v, for each named integer column (layer, token, label...)}, float64; V = sizes[name]
    (default the column's max + 1)."""
    fired_NF = (a_NF != 0).double()
    out = {"count_F": fired_NF.sum(0).numpy()}
    for name, col_N in columns.items():
        n_values = sizes[name] if sizes else int(col_N.max()) + 1
        onehot_NV = torch.nn.functional.one_hot(torch.from_numpy(col_N).long(), n_values).double()
        out[name] = (fired_NF.T @ onehot_NV).numpy()
    return out


class UsageCounts:
    """feature_usage summed over a split's chunks (counts: exact in float64, whatever the chunks);
    columns_N are over the split's scored rows."""

    def __init__(self, columns_N: dict[str, np.ndarray]):
        self.columns_N = columns_N
        self.sizes = {name: int(c.max()) + 1 for name, c in columns_N.items()}
        self.usage = None

    def __call__(self, ch: Chunk) -> None:
        u = feature_usage(ch.a_BF, {name: c[ch.pos_B] for name, c in self.columns_N.items()}, self.sizes)
        self.usage = u if self.usage is None else {k: self.usage[k] + v for k, v in u.items()}


def usage_table(usage: dict[str, np.ndarray], n_rows: int, top: int) -> list[dict]:
    """The `top` most-used latents: firing rate, and for each column its preferred value and the
    share of the latent's firings there (label purity for the label column)."""
    order_F = np.argsort(-usage["count_F"], kind="stable")[:top]
    rows = []
    for f in order_F:
        if usage["count_F"][f] == 0:
            break
        row = {"latent": int(f), "rate": float(usage["count_F"][f] / n_rows)}
        for name, c_FV in usage.items():
            if name != "count_F":
                v = int(np.argmax(c_FV[f]))
                row[name] = v
                row[f"{name}_share"] = float(c_FV[f, v] / c_FV[f].sum())
        rows.append(row)
    return rows


def usage_shares(usage: dict[str, np.ndarray], latents: list[int], name: str) -> list[dict]:
    """Long-form rows {latent, name, share, count} for a heat map latent x value of column `name`:
    share = firings of latent f on rows with that value / all firings of f (0 for a latent that
    never fires). Latents keep the given order (most used first); a column the cache lacks gives
    one value "all" (share 1 where the latent fires)."""
    c_FV = usage[name][latents] if name in usage else usage["count_F"][latents][:, None]
    values = [str(v) for v in range(c_FV.shape[1])] if name in usage else ["all"]
    share_FV = c_FV / np.maximum(c_FV.sum(1, keepdims=True), 1)
    return [{"latent": str(f), name: v, "share": float(share_FV[i, j]), "count": int(c_FV[i, j])}
            for i, f in enumerate(latents) for j, v in enumerate(values)]


USAGE_MAPS = ("layer", "token", "label")  # the heat maps of dvc.yaml's top-level plots acts_usage_by_*


def write_plot_csvs(folder, test: dict, spliced: dict, usage: dict[str, np.ndarray], latents: list[int]) -> None:
    """folder/per_layer.csv (test EV, L0 and spliced drop per layer) and usage_<column>.csv for
    each of USAGE_MAPS (usage_shares rows, drawn by the vega template .dvc/plots/heatmap.json)."""
    import csv
    from pathlib import Path

    folder = Path(folder)
    with open(folder / "per_layer.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer", "explained_variance", "l0", "acc_drop_pp"])
        for l, m in (test["per_layer"] or {"all": test}).items():
            w.writerow([l, f"{m['explained_variance']:.6f}", f"{m['l0']:.4f}",
                        f"{spliced[l]['acc_drop_pp']:.4f}" if l in spliced else ""])
    for name in USAGE_MAPS:
        with open(folder / f"usage_{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["latent", name, "share", "count"], lineterminator="\n")
            w.writeheader()
            for row in usage_shares(usage, latents, name):
                w.writerow({**row, "share": f"{row['share']:.6f}"})


def usage_figure(usage: dict[str, np.ndarray], latents: list[int], columns: list[str]):
    """Heat maps latent x value (share of the latent's firings), one panel per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not columns:  # no layer, token or label column (a planted cache): the firing rates alone
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(latents) + 2))
        ax.barh(range(len(latents)), usage["count_F"][latents] / max(usage["count_F"].sum(), 1))
        ax.set_yticks(range(len(latents)), [str(f) for f in latents], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("share of all firings")
        ax.set_ylabel("latent (most used first)")
        fig.tight_layout()
        return fig
    fig, axes = plt.subplots(1, len(columns), figsize=(min(12.0, 4.0 * len(columns)), 0.25 * len(latents) + 2), squeeze=False)
    for ax, name in zip(axes[0], columns):
        c_FV = usage[name][latents]
        share_FV = c_FV / np.maximum(c_FV.sum(1, keepdims=True), 1)
        im = ax.imshow(share_FV, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(latents)), [str(f) for f in latents], fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("latent (most used first)")
        ax.set_title(f"share of firings by {name}")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


# --- the report -------------------------------------------------------------------------------------


def _f(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def markdown_report(out: dict, usage_rows: list[dict]) -> str:
    """metrics/ACTS.md from the acts_eval results dict (see stages/acts_eval.py)."""
    lines = [f"# Activation cache SAE: {out['source']}", "",
             f"Cache: {out['cache']['n_rows']} rows x {out['cache']['d']} ({out['cache']['kind']}), split by example: "
             + ", ".join(f"{k} {v} rows" for k, v in out["cache"]["split_rows"].items()) + ". "
             + ("Scored on seeded subsamples of at most acts.eval.max_rows rows: "
                + ", ".join(f"{k} {v}" for k, v in out["rows_scored"].items()) + ". "
                if out["rows_scored"] != out["cache"]["split_rows"] else "")
             + f"SAE: {out['sae']['arch']}, {out['sae']['n_latents']} latents, lambda {out['sae']['lambda']:.4g} "
             f"({out['sae']['lambda_source']}).", "",
             "## Reconstruction (no head needed)", "",
             "| split | layer | MSE | norm. MSE | expl. var. | cosine | L2 ratio | rel. bias | L0 | dead | dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, m in out["splits"].items():
        for layer, r in [("all", m)] + sorted(m.get("per_layer", {}).items()):
            lines.append(f"| {split} | {layer} | {r['mse']:.4g} | {r['mse_norm']:.4f} | {r['explained_variance']:.4f} | "
                         f"{r['cosine_similarity']:.4f} | {r['l2_ratio']:.4f} | {r['relative_reconstruction_bias']:.4f} | "
                         f"{r['l0']:.2f} | {r['dead_fraction']:.3f} | {r['dense_fraction']:.3f} |")
    lines += ["", "Explained variance is 1 - SSE/SST about the split's mean (SAEBench); dead: never fires on the "
              "whole split; dense: fires on more than the dense threshold of its rows.", ""]
    core_rows = {f"{split} / {layer}": r["core"] for split, m in out["splits"].items()
                 for layer, r in [("all", m)] + sorted(m.get("per_layer", {}).items()) if "core" in r}
    if core_rows:
        lines += ["## Core metrics (SAEBench)", "", core_table(core_rows, "split / layer"), "",
                  "In the source's units; rel. bias uncentred (SAEBench's; the table above centres it on the train "
                  "mean). " + CORE_NOTE + (" CE / KL scores: test examples, the residual after that layer replaced "
                                            "by the SAE's reconstruction (sae) or by zeros (zero) at every token."
                                            if out.get("spliced") else " No head: no CE / KL scores."), ""]
    if out.get("spliced"):
        lines += ["## Spliced fidelity (test examples)", "",
                  "The SAE's reconstruction replaces the residual after that layer at every token; the rest of the "
                  "transformer runs on it. CE recovered is against mean ablation (train mean per token).", "",
                  "| layer | acc clean | acc spliced | drop (pp) | CE clean | CE spliced | KL | CE recovered |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer, s in sorted(out["spliced"].items()):
            lines.append(f"| {layer} | {s['acc_clean']:.4f} | {s['acc_spliced']:.4f} | {s['acc_drop_pp']:.2f} | "
                         f"{s['ce_clean']:.4f} | {s['ce_spliced']:.4f} | {s['kl']:.4f} | {_f(s['ce_recovered'])} |")
        lines.append("")
    if out.get("truth"):
        t = out["truth"]
        lines += ["## Ground truth (planted source, test split)", "",
                  f"The SAE's {out['sae']['n_latents']} atoms (decoder rows mapped back to the cache's units) against the "
                  f"{t['n_features']} planted directions (mnist_sae/truth.py): MCC is the mean |cos| of the Hungarian "
                  f"matching, MMCS the mean best |cos| per true feature, recovered the share of true features matched "
                  f"at |cos| >= {t['recovered_cosine']}, F1 of \"latent fires\" vs \"feature fires\" per matched pair.",
                  "", "| MCC | MMCS | recovered | uniqueness | precision | recall | F1 |", "|---|---|---|---|---|---|---|",
                  f"| {t['mcc']:.4f} | {t['mmcs']:.4f} | {t['recovered']:.4f} | {t['uniqueness']:.4f} | "
                  f"{t['precision']:.4f} | {t['recall']:.4f} | {t['f1']:.4f} |", ""]
    if out.get("per_layer_saes"):
        lines += ["## One SAE per layer vs one SAE over all layers (test split)", "",
                  "Per layer: the all-layer SAE on that layer's rows, and an SAE of the same settings trained on that "
                  "layer's rows only (its own standardization; with L layers it sees 1/L of the rows, so 1/L of the "
                  "steps at the same epochs). Dead: never fires on that layer's test rows.", "",
                  "| layer | SAE | expl. var. | norm. MSE* | L0 | dead | spliced drop (pp) | CE recovered |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer, own in sorted(out["per_layer_saes"].items()):
            for name, m, sp in (("all layers", out["splits"]["test"]["per_layer"][layer], out["spliced"].get(layer)),
                                (f"layer {layer} only", own["test"], own.get("spliced"))):
                lines.append(f"| {layer} | {name} | {m['explained_variance']:.4f} | {m['mse_norm']:.4f} | {m['l0']:.2f} | "
                             f"{m['dead_fraction']:.3f} | {_f(sp and sp['acc_drop_pp'], '.2f')} | "
                             f"{_f(sp and sp['ce_recovered'])} |")
        lines += ["", "*normalized MSE is in each SAE's own standardized units: compare the two SAEs by explained variance.", ""]
    if out.get("probes"):
        lines += ["## Probes: SAE codes vs raw activations (test split)", "",
                  f"Logistic regression (lbfgs, standardized features) on the same {out['probe_rows']} train rows for "
                  f"both, token {out['probe_token'] if out['probe_token'] is not None else 'all'}.", "",
                  "| layer | features | accuracy | macro precision | macro recall | macro F1 |", "|---|---|---|---|---|---|"]
        for layer, by in sorted(out["probes"].items()):
            for name, r in by.items():
                lines.append(f"| {layer} | {name} | {r['accuracy']:.4f} | {r['macro_precision']:.4f} | "
                             f"{r['macro_recall']:.4f} | {r['macro_f1']:.4f} |")
        layer, by = sorted(out["probes"].items())[-1]
        lines += ["", f"Per class, layer {layer}:", "",
                  "| class | support | P codes | R codes | F1 codes | P raw | R raw | F1 raw |",
                  "|---|---|---|---|---|---|---|---|"]
        c, r = by["codes"], by["raw"]
        for k in range(len(c["support"])):
            lines.append(f"| {k} | {c['support'][k]} | {c['precision'][k]:.3f} | {c['recall'][k]:.3f} | {c['f1'][k]:.3f} | "
                         f"{r['precision'][k]:.3f} | {r['recall'][k]:.3f} | {r['f1'][k]:.3f} |")
        lines.append("")
    if usage_rows:
        cols = [k for k in usage_rows[0] if k not in ("latent", "rate")]
        lines += ["## Most-used latents (test split)", "",
                  "Rate: share of rows the latent fires on; for each column its most common value and the share of "
                  "the latent's firings there (for label: its label purity).", "",
                  "| " + " | ".join(["latent", "rate"] + cols) + " |", "|---|---|" + "---|" * len(cols)]
        for row in usage_rows:
            lines.append("| " + " | ".join([str(row["latent"]), f"{row['rate']:.4f}"] +
                                           [f"{row[k]:.3f}" if k.endswith("_share") else str(row[k]) for k in cols]) + " |")
        lines.append("")
    return "\n".join(lines)
