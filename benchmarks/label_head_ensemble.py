"""A label head's ensemble trained side by side (one batched pass) against one member at a time.

The features of the shipped sVAE for the embedded library's training stars (the
benchmark split) and their four APOGEE labels; the head's recipe (two layers of 256,
``--epochs``). ``train_members`` trains ``--members`` MLPs at once, stacked under
``torch.func.vmap``. The one-at-a-time way is the plain loop the head had before
(:func:`one_member`, here): each member alone, its batches drawn from one shuffle an
epoch. Both run here, interleaved, and give the same members up to float rounding: the
last epoch's mean losses are printed side by side. The last line is a JSON object.

    python benchmarks/label_head_ensemble.py
    python benchmarks/label_head_ensemble.py --members 4 --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from side_by_side import interleaved  # noqa: E402


def one_member(config, k, n_out, loss, x, *targets):
    """Member ``k`` trained alone: the same seeds, batches, gradient bound and (fused)
    AdamW steps as in ``train_members``, in a plain loop over one ``nn.Sequential``."""
    import torch

    from xpsvae.labels.members import mlp
    from xpsvae.model.runtime import fused_optimizer
    c = config
    generator = torch.Generator().manual_seed(c.seed + 7919 * k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed + 7919 * k)
        member = mlp(x.shape[1], c.hidden, n_out)
    optimizer = fused_optimizer(partial(torch.optim.AdamW, lr=c.lr, weight_decay=c.weight_decay),
                                list(member.parameters()))
    steps_per_epoch = -(-len(x) // c.batch_size)
    total, step = steps_per_epoch * c.epochs, 0
    for _ in range(c.epochs):
        order = torch.randperm(len(x), generator=generator)
        shuffled = [t[order] for t in (x,) + targets]
        loss_sum = 0.0
        for start in range(0, len(x), c.batch_size):
            batch = [t[start:start + c.batch_size] for t in shuffled]
            for group in optimizer.param_groups:
                group["lr"] = c.lr * 0.5 * (1 + np.cos(np.pi * step / total))
            value = loss(member(batch[0]), *batch[1:])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(member.parameters(), c.grad_clip)
            optimizer.step()
            loss_sum += float(value.detach())
            step += 1
    return loss_sum / steps_per_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", default="256,256")
    args = p.parse_args()
    import torch

    from xpsvae import SVAE, benchmark_split, load_apogee_library
    from xpsvae.labels import DEFAULT_LABELS, LabelHeadConfig, label_columns
    from xpsvae.labels.features import svae_features
    from xpsvae.labels.head import _loss, feature_statistics, standardise
    from xpsvae.labels.members import train_members
    torch.set_num_threads(args.threads)
    library = load_apogee_library()
    train = library.subset(benchmark_split(len(library))[0])
    features = svae_features(SVAE.pretrained(), train)
    x = torch.from_numpy(standardise(features, *feature_statistics(features)))
    y, e = label_columns(train.labels, DEFAULT_LABELS)
    has = np.isfinite(y)
    mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    ys = torch.from_numpy(np.where(has, (y - mean) / std, 0.0).astype(np.float32))
    var = torch.from_numpy((np.nan_to_num(e) / std).astype(np.float32) ** 2)
    config = LabelHeadConfig(hidden=tuple(int(h) for h in args.hidden.split(",")),
                             epochs=args.epochs, threads=args.threads)
    n_out = 2 * y.shape[1]
    loss = partial(_loss, dof=config.dof)  # the head's own likelihood

    def together():
        history = []
        train_members(config, args.members, n_out, loss, x, ys, var,
                      torch.from_numpy(has), history=history)
        return [h["train_loss"] for h in history[-args.members:]]

    def one_at_a_time():
        return [one_member(config, k, n_out, loss, x, ys, var, torch.from_numpy(has))
                for k in range(args.members)]

    seconds, losses = interleaved({"one_at_a_time": one_at_a_time, "together": together}, args.repeats)
    best = {k: min(v) for k, v in seconds.items()}
    for k, v in best.items():
        print(f"{k}: {v:.2f} s best of {args.repeats}; last epoch's losses "
              f"{np.round(losses[k], 4).tolist()}")
    print(json.dumps({"stars": len(x), "members": args.members, "epochs": args.epochs,
                      "hidden": list(config.hidden), "threads": args.threads,
                      "seconds_best": best, "speedup": best["one_at_a_time"] / best["together"],
                      "last_epoch_losses": losses}))


if __name__ == "__main__":
    main()
