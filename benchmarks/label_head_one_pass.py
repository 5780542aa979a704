"""The label head's labels and high_alpha_prob from one pass of its ensemble, against two.

A label head that learnt the high-alpha class beside the labels has one output more
per member. ``LabelHead.predict`` and ``LabelHead.class_probability`` each run the
ensemble; ``LabelHead.predict_with_class``, which ``LabelModel.predict`` calls, runs it
once for both. This times both ways side by side on the features of 20,000 stars of the
embedded library read by the shipped label model, and checks that the outputs agree to
float32's rounding (the same operations; a threaded matrix product need not sum in the
same order twice). The last line is a JSON object.

    python benchmarks/label_head_one_pass.py
    python benchmarks/label_head_one_pass.py --stars 40000 --repeats 7
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
    p.add_argument("--stars", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from xpsvae import load_apogee_library
    from xpsvae.labels import LabelModel
    from xpsvae.labels.features import noise_features, svae_features
    model = LabelModel.pretrained()
    stars = load_apogee_library().subset(np.arange(args.stars))
    features = np.hstack([svae_features(model.svae, stars), noise_features(stars)])
    head = model.head

    def two_passes():
        return (*head.predict(features), head.class_probability(features))

    def one_pass():
        return head.predict_with_class(features)

    # float32 through two layers of 256: ~16 eps of the largest term, 1e-5 relative covers it
    assert all(np.allclose(a, b, rtol=1e-5, atol=0) for a, b in zip(two_passes(), one_pass()))
    seconds, _ = interleaved({"two_passes": two_passes, "one_pass": one_pass}, args.repeats)
    best = {k: min(v) for k, v in seconds.items()}
    for k, v in best.items():
        print(f"{k}: {v:.3f} s best of {args.repeats}, {args.stars / v:,.0f} stars/s")
    print(json.dumps({"stars": args.stars, "members": head.config.members,
                      "seconds_best": best, "speedup": best["two_passes"] / best["one_pass"],
                      "outputs_agree": True,
                      "seconds_all": {k: np.round(v, 4).tolist() for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
