"""Encoding with labels: one pass of the sVAE for the catalogue and the flag, against two.

A catalogue with labels (``xpsvae encode ... --labels``) needs the sVAE's score of each
star twice: for its own columns and for the label model's out-of-distribution flag.
``encoded_table(model, stars, label_model=...)`` scores once and hands the scores on.
This runs both ways side by side on the 4,022 test stars of the embedded library, with
a label model of the shipped sVAE, and checks that the tables are equal. One run; the
last line is a JSON object.

    python benchmarks/encode_with_labels.py
    python benchmarks/encode_with_labels.py --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from side_by_side import interleaved  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from xpsvae import SVAE, benchmark_split, load_apogee_library
    from xpsvae.catalog import encoded_table, with_labels
    from xpsvae.labels import LabelHeadConfig, LabelModel
    torch.set_num_threads(args.threads)
    library = load_apogee_library()
    train_idx, test_idx = benchmark_split(len(library))
    model = SVAE.pretrained()
    label_model = LabelModel.fit(model, library.subset(train_idx[:8000]),
                                 config=LabelHeadConfig(epochs=10, threads=args.threads))
    stars = library.subset(test_idx)

    def two_passes():
        return with_labels(encoded_table(model, stars), label_model.predict(stars))

    def one_pass():
        return encoded_table(model, stars, label_model=label_model)

    assert two_passes().equals(one_pass())
    seconds, _ = interleaved({"two_passes": two_passes, "one_pass": one_pass}, args.repeats)
    best = {k: min(v) for k, v in seconds.items()}
    for k, v in best.items():
        print(f"{k}: {v:.3f} s best of {args.repeats}, {len(stars) / v:,.0f} stars/s")
    print(json.dumps({"stars": len(stars), "threads": args.threads,
                      "seconds_best": best, "speedup": best["two_passes"] / best["one_pass"],
                      "tables_equal": True,
                      "seconds_all": {k: np.round(v, 4).tolist() for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
