"""The shared start of the calibrate and train_sae stages: params, torch and the site's inputs.

Apart from stages/_sae_params.py so that the `sae:` params load without torch (check_params).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mnist_sae.collect import load_space, load_z
from mnist_sae.space import InputSpace
from stages._common import ParamError, load_device, read_params_file, setup_torch
from stages._sae_params import SAEParams, load_sae_params


def check_site(p: SAEParams, info: dict) -> None:
    """Cross-checks against the collected data (known only once the stage has read info.json)."""
    if p.kl_coef > 0 and info["site"] != "logits":
        raise ParamError(f"sae.kl_coef = {p.kl_coef}: the KL term needs collect.site = logits (got {info['site']!r}); set 0.0")


class SAEStageInputs(NamedTuple):
    p: SAEParams
    device: str
    z_train_ND: torch.Tensor
    z_val_ND: torch.Tensor
    info: dict
    space: InputSpace  # z <-> y (the KL term's logits are space.to_y(z))


def start_sae_stage(collected_dir) -> SAEStageInputs:
    """The shared start of calibrate and train_sae: params validated (before any work), torch set
    up, the site's train and val inputs loaded and checked against the params."""
    raw = read_params_file()
    p = load_sae_params(raw)
    device = load_device(raw)
    setup_torch(p.seed)
    # the SAE's matmuls are tiny (D, F <= a few hundred, batch 8): one thread is fastest, and
    # a second one only adds synchronisation (measured ~1 ms vs ~7 ms per step on a busy 2-core box)
    torch.set_num_threads(1)
    info, space = load_space(collected_dir)
    check_site(p, info)
    return SAEStageInputs(p, device, load_z(collected_dir, "train", space), load_z(collected_dir, "val", space), info, space)
