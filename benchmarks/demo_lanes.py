"""The whole demo with its two lanes side by side, against one after the other, in one run.

``xpsvae demo`` runs its unsupervised work (the sVAE, the Cannon, the paper's
recipe and the baselines on them) and its labelled work (the semi-supervised
sVAE, its label model and the other baselines) in two processes, the cores
shared between them (``--lanes 2``, the default on a CPU), or one after the
other in one process at all the cores (``--lanes 1``). This script runs the
demo both ways in alternating order (``--repeats`` pairs), each in a fresh
process, and checks that the two give the same figures.

The last line is a JSON object: each way's wall times, the ratio of the
medians (one lane over two), and whether the labels' figures agree.

    python benchmarks/demo_lanes.py                    # the full demo, twice (~11 min)
    python benchmarks/demo_lanes.py --max-stars 8000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def demo_seconds(out: str, max_stars: int, *options: str) -> float:
    """The wall seconds of ``xpsvae demo --out OUT OPTIONS...`` in a fresh process."""
    command = [sys.executable, "-m", "xpsvae", "--quiet", "demo", "--out", out, *options]
    if max_stars:
        command += ["--max-stars", str(max_stars)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _label_figures(out: str) -> dict:
    labels = json.load(open(os.path.join(out, "metrics.json")))["labels"]
    return {name: block["test"]["robust_sigma"]
            for name, block in labels["svae_label_model"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-stars", type=int, default=0, help="the first N library stars")
    p.add_argument("--repeats", type=int, default=1, help="pairs of runs")
    args = p.parse_args()
    seconds = {1: [], 2: []}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for lanes in ((2, 1) if repeat % 2 else (1, 2)):
                out = os.path.join(tmp, f"lanes{lanes}_{repeat}")
                seconds[lanes].append(demo_seconds(out, args.max_stars, "--lanes", str(lanes)))
                figures[lanes] = _label_figures(out)
                print(f"lanes {lanes}: {seconds[lanes][-1]:.1f} s", flush=True)
    one, two = (float(np.median(seconds[k])) for k in (1, 2))
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "max_stars": args.max_stars,
                      "seconds_one_lane": seconds[1], "seconds_two_lanes": seconds[2],
                      "one_over_two": one / two, "label_robust_sigma": figures[2],
                      "same_figures": figures[1] == figures[2]}))


if __name__ == "__main__":
    main()
