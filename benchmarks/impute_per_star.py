"""Filling partial spectra: each star stopping when its own holes settle, against the
whole batch iterating until its slowest star settles, side by side.

The shipped model fills the holes of real library spectra (the benchmark split's test
stars) in two batches, each as the model's encoder meets them (one chunk):

* ``catalogue``: 2,000 stars of which 5% are partial: a third without BP (every
  sample where BP's flux enters), a third with 10% of the samples missing at random,
  a third without the reddest 15%;
* ``hole_shapes``: the shapes a label model measures (xpsvae.labels.holes): each of
  10 blocks of inputs alone and the first or last 2-9 blocks, 100 stars each.

For each, the seconds per fill (best of ``--repeats``), the speed-up, the rounds the
stars took, and the largest difference between the two fills (standardised units;
the stopping rule allows 1e-4 per round).

    python benchmarks/impute_per_star.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from xpsvae import SVAE, load_apogee_library
from xpsvae.flux import XPSampler
from xpsvae.io.library import benchmark_split
from xpsvae.labels.holes import block_edges
from xpsvae.model.partial import IMPUTE_ROUNDS, IMPUTE_TOLERANCE, impute


def whole_batch(network, x: torch.Tensor, observed: torch.Tensor) -> tuple:
    """The fill before: every star iterates until the whole batch has settled."""
    filled = torch.where(observed, x, torch.zeros((), dtype=x.dtype))
    for k in range(IMPUTE_ROUNDS):
        new = torch.where(observed, x, network.decode(network.encode(filled)[0]))
        settled = bool((new - filled).abs().max() < IMPUTE_TOLERANCE)
        filled = new
        if settled:
            break
    return filled, k + 1


def batches(model: SVAE, stars) -> dict:
    rng = np.random.default_rng(0)
    x = model.standardizer.transform(stars.values).astype(np.float32)
    n, d = x.shape
    out = {}
    hidden = np.zeros((2000, d), dtype=bool)
    partial = rng.choice(2000, 100, replace=False)
    bp = XPSampler().merge["bp"] > 0
    for k, row in enumerate(partial):
        hidden[row] = bp if k % 3 == 0 else (rng.random(d) < 0.1 if k % 3 == 1 else
                                             np.arange(d) >= d - int(0.15 * d))
    out["catalogue"] = (x[:2000], hidden)
    edges = block_edges(d)
    shapes = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    shapes += [(0, hi) for hi in edges[2:-1]] + [(lo, d) for lo in edges[-3:0:-1]]
    holes = np.zeros((100 * len(shapes), d), dtype=bool)
    for k, (lo, hi) in enumerate(shapes):
        holes[100 * k:100 * (k + 1), lo:hi] = True
    out["hole_shapes"] = (np.tile(x[:100], (len(shapes), 1)), holes)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = SVAE.pretrained()
    model.network.eval()
    library = load_apogee_library()
    _, test_idx = benchmark_split(len(library))
    results = {}
    for name, (x, hidden) in batches(model, library.subset(test_idx)).items():
        t = torch.from_numpy(np.where(hidden, np.nan, x).astype(np.float32))
        observed = torch.from_numpy(~hidden)
        seconds = {"whole_batch": [], "per_star": []}
        with torch.no_grad():
            for _ in range(args.repeats):
                start = time.perf_counter()
                before, rounds = whole_batch(model.network, t, observed)
                seconds["whole_batch"].append(time.perf_counter() - start)
                start = time.perf_counter()
                after = impute(model.network, t, observed)
                seconds["per_star"].append(time.perf_counter() - start)
        best = {k: min(v) for k, v in seconds.items()}
        results[name] = {"stars": len(x), "partial": int(hidden.any(axis=1).sum()),
                         "whole_batch_rounds": rounds,
                         "seconds": {k: round(v, 3) for k, v in best.items()},
                         "speedup": round(best["whole_batch"] / best["per_star"], 2),
                         "max_difference": float((after - before).abs().max())}
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps({"benchmark": "impute_per_star", "threads": args.threads,
                      "results": results}))


if __name__ == "__main__":
    main()
