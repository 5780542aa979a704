"""The learning-rate rule for larger batches, measured: quality and time per batch size.

Trains the default (``fast``) recipe on the benchmark split of the embedded
library at several batch sizes, the rate following the batch by the rule of
``--lr-scaling`` (default ``sqrt``: lr * sqrt(batch / 256)), and scores each
model on the held-out test stars. One line per batch size, then a JSON object.

    python benchmarks/batch_size_rule.py --batch-sizes 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xpsvae import SVAE, TrainConfig, benchmark_sets, load_apogee_library
from xpsvae.evaluation.metrics import evaluate_svae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-sizes", default="256,1024,4096")
    p.add_argument("--lr-scaling", default="sqrt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60, help="epochs at every batch size")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    results = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        config = TrainConfig(batch_size=batch, lr_scaling=args.lr_scaling, device=args.device,
                             threads=args.threads, epochs=args.epochs)
        start = time.perf_counter()
        model = SVAE(train_config=config).fit(train, progress=False)
        seconds = time.perf_counter() - start
        test_block = evaluate_svae(model, test, device=args.device)["test"]
        row = {"batch_size": batch, "lr": round(config.scaled_lr, 6),
               "epochs": args.epochs, "mean_nll": round(test_block["mean_nll"], 1),
               "std_r": round(test_block["std_r"], 3),
               "frac_abs_r_gt_5": round(test_block["frac_abs_r_gt_5"], 5),
               "train_seconds": round(seconds, 1)}
        print(row, flush=True)
        results.append(row)
    print(json.dumps({"lr_scaling": args.lr_scaling, "device": args.device, "results": results}))


if __name__ == "__main__":
    main()
