"""How well the shipped label model's recipe knows each label, on stars it has not seen.

The shipped label model (``LabelModel.pretrained()``) has seen every labelled
library star, so it has no held-out figures of its own. This fits the same
recipe on the benchmark split's training stars: the shipped sVAE's recipe
(``long``, 1,000 epochs) trained on them, with their labels (or ``--model``, an
sVAE of that recipe already trained on them, as ``--save-model`` keeps one),
then the shipped head recipe (each member tuning a copy of the encoder), no
side columns (``xpsvae.pretrained.build_pretrained_labels``). It scores the 3,963 test
stars as ``xpsvae evaluate --labels`` does: the sVAE's test NLL and std r; per
label and sub-population robust sigma, std z and coverage; the high/low-alpha
balanced accuracy; and the out-of-distribution flag. The last line is a JSON
object.

    python benchmarks/pretrained_labels.py --save-model SPLIT_SVAE   # ~17 min on 2 cores
    python benchmarks/pretrained_labels.py --model SPLIT_SVAE        # ~2 min
    python benchmarks/pretrained_labels.py --model SPLIT_SVAE --encoder-lr 0   # frozen head
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an sVAE of the shipped recipe trained on the benchmark "
                                   "split's training stars (default: train it here)")
    p.add_argument("--save-model", help="keep the sVAE trained here in this folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoder-lr", type=float, default=None,
                   help="the rate the head's members tune their copy of the encoder at "
                        "(docs/labels.md; 0: a head on the frozen features), in place of the "
                        "shipped recipe's")
    args = p.parse_args()
    from xpsvae import SVAE, benchmark_sets, load_apogee_library
    from xpsvae.evaluation.labels import score_label_model
    from xpsvae.evaluation.metrics import evaluate_svae
    from xpsvae.model.recipe import TrainConfig
    from xpsvae.pretrained import RECIPE, SHIPPED_HEAD, SHIPPED_LABELS, build_pretrained_labels
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    start = time.perf_counter()
    svae = SVAE.load(args.model) if args.model else SVAE(
        train_config=TrainConfig.preset(RECIPE, device="cpu", threads=args.threads)).fit(
        train, labels=SHIPPED_LABELS)
    svae_seconds = time.perf_counter() - start
    if args.save_model and not args.model:
        svae.save(args.save_model)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        head = replace(SHIPPED_HEAD, threads=args.threads)
        if args.encoder_lr is not None:
            head = replace(head, encoder_lr=args.encoder_lr)
        model = build_pretrained_labels(folder, threads=args.threads, svae=svae, stars=train,
                                        config=head)
        fit_seconds = time.perf_counter() - start
    block, _ = score_label_model(model, test)
    generative = evaluate_svae(svae, test)["test"]
    print("sVAE on the test stars: " + ", ".join(
        f"{k} {generative[k]:.4g}" for k in ("mean_nll", "std_r", "frac_abs_r_gt_5",
                                            "median_scatter_over_error") if k in generative))
    print(f"{'label':8s} {'subset':11s} {'robust σ':>9s} {'std z':>6s} {'1σ/2σ/3σ':>15s}")
    for name in model.labels:
        for subset, m in block["svae_label_model"][name].items():
            cover = "/".join(f"{100 * m[f'coverage_{k}sigma']:.0f}" for k in (1, 2, 3))
            print(f"{name:8s} {subset:11s} {m['robust_sigma']:9.4g} {m['std_z']:6.2f} "
                  f"{cover:>15s}")
    if "alpha_classes" in block:
        bins = block["alpha_classes"]["bins"]
        print("high/low alpha balanced accuracy: " + ", ".join(
            f"{b} {v['label_model']:.3f}" for b, v in bins.items()))
    print(json.dumps({"benchmark": "pretrained_labels", "svae_seconds": svae_seconds,
                      "trained_here": not args.model, "label_fit_seconds": fit_seconds,
                      "svae_test": generative, **block}))


if __name__ == "__main__":
    main()
