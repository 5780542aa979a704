"""The label model with its members tuning a copy of the sVAE's encoder, against the same head
on the frozen features, side by side on one sVAE.

On the benchmark split of the embedded APOGEE library: the demo's semi-supervised sVAE (the
default recipe with the four labels, label weight 50, 60 epochs), or ``--model``, an sVAE of
that recipe trained on the split's training stars already. The demo's label model (side
columns J-H, J-K and BP-RP, 4 members) is fitted on it twice from the same seed: on the
frozen features, and with ``encoder_lr`` (``labels fit --tune-encoder``). Scored on the
3,963 test stars: per label, robust sigma (1.4826 x MAD), std z and the share within 1, 2
and 3 sigma; the RMSE of [alpha/M] on giants; the high/low-alpha balanced accuracy in the
two judged [Fe/H] bins; std z in each sub-population (giants, dwarfs, metal-poor, cool);
the fitting time of each, and the ratios, tuned over frozen. The last line is a JSON
object.

    python benchmarks/label_tuned_encoder.py                    # ~8 min on 2 cores
    python benchmarks/label_tuned_encoder.py --model SPLIT_SVAE --encoder-lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from xpsvae import SVAE, TrainConfig, load_apogee_library
from xpsvae.evaluation.labels import DEMO_SIDE, headline, score_label_model
from xpsvae.io.library import benchmark_sets
from xpsvae.labels import DEFAULT_LABELS, LabelHeadConfig, LabelModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an sVAE of the demo's recipe trained on the split already")
    p.add_argument("--encoder-lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="the sVAE's and the heads' seed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    train, test = benchmark_sets(load_apogee_library())
    if args.model:
        svae = SVAE.load(args.model)
    else:
        config = TrainConfig.preset("fast", seed=args.seed, threads=args.threads)
        svae = SVAE(train_config=config).fit(train, labels=DEFAULT_LABELS, progress=False)
    frozen = LabelHeadConfig(seed=args.seed, threads=args.threads)
    results = {}
    for name, config in (("frozen", frozen),
                         ("tuned", replace(frozen, encoder_lr=args.encoder_lr))):
        start = time.perf_counter()
        model = LabelModel.fit(svae, train, DEFAULT_LABELS, DEMO_SIDE, config)
        seconds = time.perf_counter() - start
        block = score_label_model(model, test)[0]
        results[name] = {"fit_seconds": round(seconds, 1), **headline(block),
                         "std_z_by_subset": {label: {sub: round(cell["std_z"], 3)
                                                     for sub, cell in cells.items()
                                                     if "std_z" in cell}
                                             for label, cells in
                                             block["svae_label_model"].items()}}
        print(json.dumps({name: results[name]}), flush=True)
    ratio = {name: round(results["tuned"][name]["robust_sigma"]
                         / results["frozen"][name]["robust_sigma"], 4) for name in DEFAULT_LABELS}
    ratio["alpha_m_rmse_giants"] = round(results["tuned"]["alpha_m_rmse_giants"]
                                         / results["frozen"]["alpha_m_rmse_giants"], 4)
    ratio["fit_seconds"] = round(results["tuned"]["fit_seconds"]
                                 / results["frozen"]["fit_seconds"], 2)
    print(json.dumps({"benchmark": "label_tuned_encoder", "encoder_lr": args.encoder_lr,
                      "seed": args.seed, "epochs": svae.train_config.epochs,
                      "side_columns": list(DEMO_SIDE), "results": results,
                      "tuned_over_frozen": ratio}))


if __name__ == "__main__":
    main()
