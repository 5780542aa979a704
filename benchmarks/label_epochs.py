"""Labels and the generative model against the sVAE's training length.

On the benchmark split of the embedded APOGEE library, for each number of epochs in
``--epochs``: the demo's semi-supervised sVAE (the default recipe with the four labels,
label weight 50, or ``--label-weight``; its cosine schedule stretched over those epochs,
then its 10 epochs calibrating the scatter) is trained on the training stars, and the demo's label model
(side columns J-H, J-K and BP-RP) is fitted on it. Scored on the 3,963 test stars: the
sVAE's mean NLL and std r; per label, robust sigma (1.4826 x MAD), std z and the share
within 1, 2 and 3 sigma; the RMSE of [alpha/M] on giants (log g < 3.5); and the high/low-
alpha balanced accuracy per [Fe/H] bin. One JSON line per length, the whole result last.

    python benchmarks/label_epochs.py                          # ~20 min on 2 cores
    python benchmarks/label_epochs.py --epochs 60,1000 --seed 1
    python benchmarks/label_epochs.py --model SPLIT_SVAE        # an sVAE trained already
    python benchmarks/label_epochs.py --epochs 60 --label-weight 100 --seed 1

``--model`` takes an sVAE of this recipe already trained on the split's training stars,
as ``benchmarks/pretrained_labels.py --save-model`` keeps one (1,000 epochs, seed 0), and
scores the label model on it alone.
"""

from __future__ import annotations

import argparse
import json
import time

from xpsvae import SVAE, TrainConfig, load_apogee_library
from xpsvae.evaluation.labels import DEMO_SIDE, headline, score_label_model
from xpsvae.evaluation.metrics import evaluate_svae
from xpsvae.io.library import benchmark_sets
from xpsvae.labels import DEFAULT_LABELS, LabelHeadConfig, LabelModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="60,180,400,1000")
    p.add_argument("--seed", type=int, default=0, help="the sVAE's and the head's seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", help="score an sVAE trained already (its epochs: its own)")
    p.add_argument("--label-weight", type=float, default=TrainConfig.label_weight,
                   help="the weight of the sVAE's label term (docs/labels-measured.md, "
                        "\"The label weight\")")
    args = p.parse_args()
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    results = []
    lengths = [None] if args.model else [int(e) for e in args.epochs.split(",")]
    for epochs in lengths:
        start = time.perf_counter()
        if args.model:
            model = SVAE.load(args.model)
            epochs = model.train_config.epochs
        else:
            config = TrainConfig.preset("fast", epochs=epochs, seed=args.seed,
                                        threads=args.threads, label_weight=args.label_weight)
            model = SVAE(train_config=config).fit(train, labels=DEFAULT_LABELS, progress=False)
        seconds = time.perf_counter() - start
        svae = evaluate_svae(model, test)["test"]
        labels = LabelModel.fit(model, train, DEFAULT_LABELS, DEMO_SIDE,
                                LabelHeadConfig(seed=args.seed, threads=args.threads))
        block, predicted = score_label_model(labels, test)
        entry = {"epochs": epochs, "seed": args.seed,
                 "label_weight": model.train_config.label_weight,
                 "train_seconds": None if args.model else round(seconds, 1),
                 "test_mean_nll": round(svae["mean_nll"], 2), "std_r": round(svae["std_r"], 4),
                 **headline(block)}
        print(json.dumps(entry), flush=True)
        results.append(entry)
    print(json.dumps({"benchmark": "label_epochs", "side_columns": list(DEMO_SIDE),
                      "results": results}))


if __name__ == "__main__":
    main()
