"""The whole demo with its label heads on the sVAEs' frozen features, against tuning a copy
of each encoder (``xpsvae demo --tune-encoder LR``), in one run.

Tuning changes two heads: the label model on the semi-supervised sVAE and the same head
on the unsupervised sVAE (the baseline that shows what learning the labels adds). This
script runs the demo both ways in alternating order (``--repeats`` pairs), each in a fresh
process, and prints for each its wall time, its lanes' seconds, the label model's figures
on the 3,963 test stars (robust sigma, std z, coverage; giants' [alpha/M] RMSE; the
high/low-alpha balanced accuracy per [Fe/H] bin) and the same head's robust sigma on the
unsupervised sVAE. The last line is a JSON object with the ratio of the medians (tuned
over frozen).

    python benchmarks/demo_tuned.py                        # the full demo, twice (~12 min)
    python benchmarks/demo_tuned.py --keep DIR             # and keep both demos' folders
    python benchmarks/demo_tuned.py --max-stars 8000       # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_lanes import demo_seconds  # noqa: E402


def _figures(out: str) -> dict:
    from xpsvae.evaluation.labels import headline  # PyTorch: after the demos, not before
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    block = metrics["labels"]
    unsupervised = block["baselines"]["head_on_unsupervised_svae"]
    return {"lane_seconds": metrics["hardware"]["lane_seconds"], **headline(block),
            "head_on_unsupervised_svae": {name: round(cells["test"]["robust_sigma"], 4)
                                          for name, cells in unsupervised.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder-lr", type=float, default=2e-3)
    p.add_argument("--max-stars", type=int, default=0, help="the first N library stars")
    p.add_argument("--repeats", type=int, default=1, help="pairs of runs")
    p.add_argument("--keep", help="write the demos' folders here (default: a temporary one)")
    args = p.parse_args()
    ways = {"frozen": (), "tuned": ("--tune-encoder", str(args.encoder_lr))}
    seconds = {way: [] for way in ways}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        for repeat in range(args.repeats):
            for way in (("tuned", "frozen") if repeat % 2 else ("frozen", "tuned")):
                out = os.path.join(root, f"{way}_{repeat}")
                seconds[way].append(demo_seconds(out, args.max_stars, "--overwrite",
                                                 *ways[way]))
                figures[way] = _figures(out)
                print(json.dumps({way: {"seconds": round(seconds[way][-1], 1),
                                        **figures[way]}}), flush=True)
    frozen, tuned = (float(np.median(seconds[way])) for way in ("frozen", "tuned"))
    ratio = {name: round(figures["tuned"][name]["robust_sigma"]
                         / figures["frozen"][name]["robust_sigma"], 4)
             for name in figures["frozen"] if isinstance(figures["frozen"][name], dict)
             and "robust_sigma" in figures["frozen"][name]}
    print(json.dumps({"benchmark": "demo_tuned", "encoder_lr": args.encoder_lr,
                      "cpus": len(os.sched_getaffinity(0)), "max_stars": args.max_stars,
                      "seconds_frozen": seconds["frozen"], "seconds_tuned": seconds["tuned"],
                      "tuned_over_frozen_seconds": round(tuned / frozen, 3),
                      "tuned_over_frozen_robust_sigma": ratio, "figures": figures}))


if __name__ == "__main__":
    main()
