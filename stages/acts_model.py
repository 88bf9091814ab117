"""acts_model: the patch transformer (mnist_sae.vit) trained on the prepared MNIST train split.

    python -m stages.acts_model PREP_DIR MODEL_PT METRICS_JSON

Only for acts.source transformer; for a user's cache (npy:, raw:) it writes a checkpoint that
says so ({"trained": false}) and trains nothing. The checkpoint is {"trained", "vit"}
(ViT.from_checkpoint(load_torch(path)["vit"])); the metrics are train loss per epoch and test
accuracy and CE of the clean model.
"""

import argparse

import torch

from mnist_sae import metrics
from mnist_sae.acts import parse_source
from mnist_sae.vit import ViT, predict_logits, train_vit
from stages._acts_params import start_acts_stage
from stages._common import load_prepared, run, save_torch, write_json


def main():
    parser = argparse.ArgumentParser()
    for name in ("prep_dir", "model_pt", "metrics_json"):
        parser.add_argument(name)
    args = parser.parse_args()
    p, device = start_acts_stage(lambda p: p.model.seed)
    if parse_source(p.source).kind != "transformer":
        save_torch(args.model_pt, {"trained": False})
        write_json(args.metrics_json, {"trained": False, "source": p.source, "device": device})
        print(f"acts.source {p.source}: no model to train")
        return
    x_NI, labels_N = (torch.from_numpy(a) for a in load_prepared(args.prep_dir, "train"))
    x_test_NI, y_test_N = (torch.from_numpy(a) for a in load_prepared(args.prep_dir, "test"))
    gen = torch.Generator().manual_seed(p.model.seed)
    model = ViT(p.model.config(), generator=gen).to(device)
    history = train_vit(model, x_NI.to(device), labels_N.to(device), p.model.settings(), gen)
    model = model.cpu().eval()
    logits_NO = predict_logits(model, x_test_NI)
    out = {"trained": True, "train_loss_per_epoch": history.loss_per_epoch, "steps": history.steps,
           "test_acc": metrics.accuracy(logits_NO, y_test_N), "test_ce": metrics.cross_entropy(logits_NO, y_test_N),
           "device": device}
    save_torch(args.model_pt, {"trained": True, "vit": model.to_checkpoint()})
    write_json(args.metrics_json, out)
    print(f"transformer: test acc {out['test_acc']:.4f}, CE {out['test_ce']:.4f}, {history.steps} steps")


if __name__ == "__main__":
    run(main)
