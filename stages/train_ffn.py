"""train_ffn: one point (hidden, lr) of the FFN sweep; DVC's matrix stage runs one per grid point.

    python -m stages.train_ffn --hidden H --lr LR PREP_DIR OUT_DIR TIMING_JSON

OUT_DIR gets model.pt (config + state dict) and point.json (deterministic: no timings);
TIMING_JSON gets the wall-clock seconds, kept apart so the cached outputs are bit-reproducible.
"""

import argparse
import math
import time
from dataclasses import dataclass, field

import torch

from mnist_sae.ffn import FFN
from mnist_sae.train import train_ffn
from stages._common import (NON_EMPTY_POSITIVE, NON_NEGATIVE, POSITIVE, ParamError, atomic_path, choice, load_device, load_params,
                            load_prepared, read_params_file, run, setup_torch, write_json)


@dataclass(frozen=True)
class SweepParams:
    hidden: list[int] = field(metadata=NON_EMPTY_POSITIVE)  # hidden widths
    lr: list[float] = field(metadata=NON_EMPTY_POSITIVE)  # Adam learning rates


@dataclass(frozen=True)
class FFNParams:
    type: str = field(metadata=choice("relu", "geglu"))  # hidden nonlinearity
    batch_size: int = field(metadata=POSITIVE)  # examples per Adam step (8 in the original notebooks)
    epochs: int = field(metadata=POSITIVE)  # passes over the train split
    seed: int = field(metadata=NON_NEGATIVE)  # init and batch-order seed (the same for every grid point)
    sweep: SweepParams  # the grid train_ffn's matrix runs over


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("prep_dir")
    parser.add_argument("out_dir")
    parser.add_argument("timing_json")
    args = parser.parse_args()
    raw = read_params_file()
    p = load_params(FFNParams, "ffn", raw)
    device = load_device(raw)
    if args.hidden <= 0 or not (args.lr > 0 and math.isfinite(args.lr)):
        raise ParamError(f"ffn.sweep point hidden={args.hidden}, lr={args.lr}: allowed hidden > 0 and lr > 0")

    setup_torch(p.seed)
    x_NI, y_N = load_prepared(args.prep_dir, "train")
    gen = torch.Generator().manual_seed(p.seed)
    model = FFN(args.hidden, p.type, generator=gen).to(device)
    start = time.perf_counter()
    history = train_ffn(model, torch.from_numpy(x_NI), torch.from_numpy(y_N), lr=args.lr, epochs=p.epochs,
                        batch_size=p.batch_size, generator=gen)
    seconds = time.perf_counter() - start

    point = {"hidden": args.hidden, "lr": args.lr, "type": p.type, "diverged": history.diverged,
             "steps": history.steps, "train_loss_per_epoch": [x if math.isfinite(x) else None for x in history.loss_per_epoch]}
    with atomic_path(args.out_dir) as tmp:
        tmp.mkdir()
        torch.save({"config": model.config(), "state": {k: v.cpu() for k, v in model.state_dict().items()}},
                   tmp / "model.pt")
        write_json(tmp / "point.json", point)
    write_json(args.timing_json, {"train_seconds": seconds, "steps_per_second": history.steps / seconds,
                                  "device": device})


if __name__ == "__main__":
    run(main)
