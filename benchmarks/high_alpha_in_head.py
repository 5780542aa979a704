"""High/low alpha learnt by the label head (one more output) against a classifier of its own.

An sVAE's features (encoder and noise features, as a label model reads) of the
embedded library's training stars (the benchmark split) and their four APOGEE labels. Side
by side, interleaved, on the same features and recipe (``--epochs``):

* ``apart``: the label head, then a one-member classifier of the head's recipe on the stars
  with [Fe/H] and [alpha/M] (how label models fitted the class before);
* ``in_head``: the label head with the class as one more output of each member.

Each is timed (best of ``--repeats``) and scored on the 3,963 test stars: robust sigma per
label and high/low-alpha balanced accuracy per [Fe/H] bin. The last line is a JSON object.

    python benchmarks/high_alpha_in_head.py                  # ~4 min on 2 cores
    python benchmarks/high_alpha_in_head.py --model DEMO_OUT/labels/svae --seed 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", help="an sVAE (default: the shipped one), e.g. the demo's "
                                   "labels/svae")
    p.add_argument("--seed", type=int, default=0, help="of the heads' split and members")
    args = p.parse_args()
    from xpsvae import SVAE, benchmark_sets, load_apogee_library
    from xpsvae.evaluation.labels import alpha_classification, label_metrics
    from xpsvae.labels import DEFAULT_LABELS, LabelHead, LabelHeadConfig, label_columns
    from xpsvae.labels.classes import ClassHead, high_alpha
    from xpsvae.labels.features import noise_features, svae_features
    library = load_apogee_library()
    svae = SVAE.load(args.model) if args.model else SVAE.pretrained()
    train, test = benchmark_sets(library)
    x, x_test = (np.hstack([svae_features(svae, s), noise_features(s)]) for s in (train, test))
    y, e = label_columns(train.labels, DEFAULT_LABELS)
    y_test = label_columns(test.labels, DEFAULT_LABELS)[0]
    fe, alpha = DEFAULT_LABELS.index("fe_h"), DEFAULT_LABELS.index("alpha_m")
    both = np.isfinite(y[:, fe]) & np.isfinite(y[:, alpha])
    classes = np.where(both, high_alpha(y[:, fe], y[:, alpha]), np.nan)
    config = LabelHeadConfig(epochs=args.epochs, threads=args.threads, seed=args.seed)

    def apart():
        head = LabelHead(config).fit(x, y, e)
        own = ClassHead(LabelHeadConfig(epochs=args.epochs, threads=args.threads, members=1,
                                        seed=args.seed))
        own.fit(x[both], classes[both].astype(bool))
        return head, own.classify(x_test)

    def in_head():
        head = LabelHead(config).fit(x, y, e, classes)
        return head, head.class_probability(x_test) > head.class_prior

    seconds = {"apart": [], "in_head": []}
    scores = {}
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        for name, fn in (("apart", apart), ("in_head", in_head)):
            start = time.perf_counter()
            head, guess = fn()
            seconds[name].append(time.perf_counter() - start)
            mean = head.predict(x_test)[0]
            classed = alpha_classification(y_test[:, fe], y_test[:, alpha], {name: guess})
            scores[name] = {
                "robust_sigma": {n: label_metrics(mean[:, j], y_test[:, j])["robust_sigma"]
                                 for j, n in enumerate(DEFAULT_LABELS)},
                "balanced_accuracy": {b: v[name] for b, v in classed["bins"].items()},
                "balanced_accuracy_all_bins": classed["all_bins"][name]}
    best = {k: min(v) for k, v in seconds.items()}
    for k, v in best.items():
        print(f"{k}: {v:.1f} s best of {args.repeats}; {scores[k]}")
    print(json.dumps({"stars": len(x), "epochs": args.epochs, "threads": args.threads,
                      "seed": args.seed, "model": args.model or "shipped",
                      "seconds_best": best, "ratio_apart_over_in_head":
                      best["apart"] / best["in_head"], "scores": scores}))


if __name__ == "__main__":
    main()
