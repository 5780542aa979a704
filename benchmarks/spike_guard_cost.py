"""What the bound on gradient spikes costs a training run: the same short run with it
(``spike_clip`` 5, the default) and without (0), taking turns, on library stars.

The bound computes each step's gradient norm and scales the gradients (by exactly 1
where no spike), a few small kernels on a network of ~100k weights. The last line is a
JSON object; ``ratio`` is the best time with the bound over the best without.

    python benchmarks/spike_guard_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from side_by_side import interleaved  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stars", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import numpy as np

    from xpsvae import SVAE, TrainConfig, load_apogee_library
    stars = load_apogee_library().subset(np.arange(args.stars))

    def run(spike_clip: float):
        config = TrainConfig(epochs=args.epochs, calibrate_epochs=0, threads=args.threads,
                             device="cpu", spike_clip=spike_clip)
        return lambda: SVAE(train_config=config).fit(stars, progress=False).history
    seconds, histories = interleaved({"bounded": run(5.0), "unbounded": run(0.0)},
                                     args.repeats)
    best = {name: min(s) for name, s in seconds.items()}
    steps = sum(h.get("bounded_steps", 0) for h in histories["bounded"])
    for name, s in seconds.items():
        print(f"{name:10s} best {best[name]:.2f} s of {', '.join(f'{t:.2f}' for t in s)}")
    print(json.dumps({"benchmark": "spike_guard_cost", "stars": args.stars,
                      "epochs": args.epochs, "threads": args.threads,
                      "seconds": seconds, "bounded_steps": steps,
                      "ratio": best["bounded"] / best["unbounded"]}))


if __name__ == "__main__":
    main()
