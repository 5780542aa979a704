"""Label models on sVAEs of several seeds, each alone and together (``xpsvae labels combine``).

On the benchmark split of the embedded APOGEE library, for each seed of ``--seeds``: the
demo's semi-supervised sVAE (the ``fast`` recipe with the four labels, ``--epochs``, that
seed, its validation split drawn from ``--split-seed``, default 0, so that every member
holds out the same stars) is trained on the training stars and the demo's label model
(side columns J-H, J-K and BP-RP, the head's seed the sVAE's, or ``--head-seed``) fitted
on it; the label model calibrates on the stars its sVAE held out. Or, with ``--reuse``,
label models fitted so are read (the demo's ``DEMO_OUT/labels`` is seed 0 at 60 epochs).
Each member alone and the ensemble of all are scored on the 3,963 test stars: per label,
robust sigma (1.4826 x MAD), std z and the share within 1 and 2 sigma and in the 68%
interval; the RMSE of [alpha/M] on giants; the high/low-alpha balanced accuracy per
[Fe/H] bin. With ``--calibrate``, the ensemble is scored a second time with sigma's
factor and the interval's k fitted again for it (``xpsvae labels combine --calibrate``)
on the training stars that no member trained on: the validation share they share. The
last line is a JSON object.

    python benchmarks/label_ensemble.py --reuse DEMO_OUT/labels --seeds 1   # ~3 min, 2 cores
    python benchmarks/label_ensemble.py --seeds 0,1,2 --save ensemble_dir
    python benchmarks/label_ensemble.py --seeds 0,1,2 --calibrate           # ~10 min
"""

from __future__ import annotations

import argparse
import json
import os
import time

from xpsvae import SVAE, TrainConfig, load_apogee_library
from xpsvae.evaluation.labels import DEMO_SIDE, headline, score_label_model
from xpsvae.io.library import benchmark_sets
from xpsvae.labels import DEFAULT_LABELS, LabelEnsemble, LabelHeadConfig, LabelModel


def summary(block: dict) -> dict:
    """The figures printed and kept of one ``labels`` block."""
    scored = block["svae_label_model"]
    out = headline(block, ("robust_sigma", "std_z", "coverage_1sigma", "coverage_2sigma",
                           "coverage_interval"))
    for name in DEFAULT_LABELS:
        out[name]["interval_by_subset"] = {sub: round(m["coverage_interval"], 3)
                                           for sub, m in scored[name].items()
                                           if "coverage_interval" in m}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1", help="a member trained per seed")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--reuse", default="", help="label model folders to take as members too")
    p.add_argument("--save", help="write the ensemble here (xpsvae labels predict reads it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibrate", action="store_true",
                   help="score the ensemble calibrated on the members' validation share too")
    p.add_argument("--head-seed", type=int, help="every head's seed (default: the sVAE's)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="the seed of every sVAE's validation split (default 0, the demo's)")
    args = p.parse_args()
    train, test = benchmark_sets(load_apogee_library())
    members, names = [], []
    for folder in (f for f in args.reuse.split(",") if f):
        members.append(LabelModel.load(folder))
        names.append(os.path.basename(os.path.normpath(folder)))
    for seed in (int(s) for s in args.seeds.split(",") if s):
        config = TrainConfig.preset("fast", epochs=args.epochs, seed=seed,
                                    split_seed=args.split_seed, threads=args.threads)
        start = time.perf_counter()
        model = SVAE(train_config=config).fit(train, labels=DEFAULT_LABELS, progress=False)
        members.append(LabelModel.fit(model, train, DEFAULT_LABELS, DEMO_SIDE,
                                      LabelHeadConfig(seed=seed if args.head_seed is None
                                                      else args.head_seed,
                                                      threads=args.threads)))
        names.append(f"seed {seed}")
        print(f"seed {seed}: sVAE and label model in {time.perf_counter() - start:.0f} s",
              flush=True)
    ensemble = LabelEnsemble(members, names)
    results = {}
    for name, model in [*zip(names, members), ("ensemble", ensemble)]:
        results[name] = summary(score_label_model(model, test)[0])
    if args.calibrate:
        info = ensemble.calibrate(train)
        print(f"calibrated on {info['stars']} training stars no member trained on", flush=True)
        results["ensemble, calibrated"] = summary(score_label_model(ensemble, test)[0])
    if args.save:
        ensemble.save(args.save)
    print(f"{'member':10s} " + " ".join(f"{n:>28s}" for n in DEFAULT_LABELS)
          + "   giants' [a/M] RMSE   high/low alpha")
    for name, r in results.items():
        cells = [f"{r[n]['robust_sigma']:9.4g} z{r[n]['std_z']:5.2f} "
                 f"{r[n]['coverage_1sigma']:5.3f} {r[n]['coverage_interval']:5.3f}"
                 for n in DEFAULT_LABELS]
        print(f"{name:10s} " + " ".join(f"{c:>28s}" for c in cells)
              + f"   {r['alpha_m_rmse_giants']:.4f}   "
              + ", ".join(f"{b} {v:.3f}" for b, v in r["high_low_alpha"].items()))
    print(json.dumps({"benchmark": "label_ensemble", "epochs": args.epochs,
                      "members": names, "split_seed": args.split_seed,
                      "head_seed": args.head_seed, "side_columns": list(DEMO_SIDE),
                      "results": results}))


if __name__ == "__main__":
    main()
