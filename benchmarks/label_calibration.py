"""A label model's sigma factor and 68% interval that follow the star, against one number per
label, on the same head.

A label model (``--labels``: the demo's, ``DEMO_OUT/labels``, whose head is fitted on the
benchmark split's training stars) is read back; its ensemble's raw mean and sigma are
computed for its validation share and for the 3,963 test stars. On them, side by side:

* ``one_number``: sigma's factor and the interval's k one number per label (label models
  before ``xpsvae.labels.calibration``);
* ``follows_star``: the factor and k of ``xpsvae.labels.calibration``, as the head fits them.

Each is scored on the test stars, per label and sub-population (test, giants, dwarfs,
metal-poor, cool): std z, the share within 1 sigma, and the share within the interval;
and ``mean_abs_ln_std_z``, |ln std z| averaged over the label and sub-population cells.
Then ``--draws`` random draws of each of ``--sizes`` validation stars: how many stars
the factor that follows the star needs before it beats one number. The last line is a
JSON object.

    python benchmarks/label_calibration.py --labels DEMO_OUT/labels    # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", required=True, help="a label model fitted on the benchmark "
                                                   "split's training stars (DEMO_OUT/labels)")
    p.add_argument("--sizes", default="120,200,400,1000")
    p.add_argument("--draws", type=int, default=10)
    args = p.parse_args()
    import torch

    from xpsvae import benchmark_sets, load_apogee_library
    from xpsvae.evaluation.labels import label_metrics, subset_masks
    from xpsvae.labels import LabelModel, label_columns
    from xpsvae.labels.calibration import IntervalScale, SigmaScale
    model = LabelModel.load(args.labels)
    head = model.head
    train, test = benchmark_sets(load_apogee_library())

    def standardised(stars):
        """The head's raw mean and sigma, the labels and their errors, standardised."""
        y, err = label_columns(stars.labels, model.labels)
        keep = np.isfinite(y).any(axis=1) & stars.observed.all(axis=1)
        stars = stars.subset(np.flatnonzero(keep))
        features = model.features(stars)
        x = torch.from_numpy(head._standardised(features))
        mean, sigma = head._mixture(head._outputs(x))
        return (mean, sigma, (y[keep] - head.label_mean) / head.label_std,
                np.nan_to_num(err[keep] / head.label_std), stars)

    *fit_on, _ = standardised(train)
    val = head.validation(len(fit_on[0]))  # the share the head was calibrated on
    fit_on = [a[val] for a in fit_on]
    mean, sigma, y, err, test_stars = standardised(test)
    masks = subset_masks(test_stars.labels)

    def one_number(m, s, yy, e, has):
        """Factor and k one number per label: fitted with the covariates held at 0."""
        def flat(width):  # residuals and errors in units of sigma, no covariates
            return np.zeros_like(m), np.ones_like(s), (yy - m) / width, e / width, has
        factor = np.exp(SigmaScale.fit(*flat(s)).weights[:, -1])
        k = IntervalScale.fit(*flat(s * factor))
        return (lambda mm, ss: np.broadcast_to(factor, ss.shape),
                lambda mm: np.broadcast_to(np.exp(k.weights[:, -1]), mm.shape))

    def follows(m, s, yy, e, has):
        scale = SigmaScale.fit(m, s, yy, e, has)
        return scale, IntervalScale.fit(m, s * scale(m, s), yy, e, has)

    def score(factor, k):
        """The figures ``xpsvae evaluate`` gives (label_metrics), per label and subset."""
        s = sigma * factor(mean, sigma)
        half = k(mean) * s
        cells, logs = {}, []
        for j, name in enumerate(model.labels):
            for subset, rows in masks.items():
                m = label_metrics(mean[rows, j], y[rows, j], s[rows, j], err[rows, j],
                                  (mean[rows, j] - half[rows, j], mean[rows, j] + half[rows, j]))
                if m["n_stars"] < 30:
                    continue
                cells[f"{name}/{subset}"] = {"std_z": m["std_z"],
                                             "within_1sigma": m["coverage_1sigma"],
                                             "in_interval": m["coverage_interval"]}
                logs.append(abs(np.log(m["std_z"])))
        return {"mean_abs_ln_std_z": float(np.mean(logs)), "cells": cells}

    has = np.isfinite(fit_on[2])
    fitted = [fit_on[0], fit_on[1], np.nan_to_num(fit_on[2]), fit_on[3], has]
    out = {"labels": args.labels, "validation_stars": int(len(fit_on[0])),
           "one_number": score(*one_number(*fitted)), "follows_star": score(*follows(*fitted))}
    print(f"{'label/subset':22s} {'std z: one, follows':>20s} {'within 1σ':>14s} "
          f"{'interval':>14s}")
    for cell, a in out["one_number"]["cells"].items():
        b = out["follows_star"]["cells"][cell]
        print(f"{cell:22s} {a['std_z']:9.2f} {b['std_z']:9.2f} {100 * a['within_1sigma']:6.1f} "
              f"{100 * b['within_1sigma']:6.1f} {100 * a['in_interval']:6.1f} "
              f"{100 * b['in_interval']:6.1f}")
    print("mean |ln std z|: one number {:.3f}, follows the star {:.3f}".format(
        out["one_number"]["mean_abs_ln_std_z"], out["follows_star"]["mean_abs_ln_std_z"]))
    rng = np.random.default_rng(0)
    out["draws"] = {}
    for size in (int(v) for v in args.sizes.split(",")):
        got = {"one_number": [], "follows_star": []}
        for _ in range(args.draws):
            rows = rng.choice(len(fit_on[0]), size, replace=False)
            drawn = [a[rows] for a in fitted]
            got["one_number"].append(score(*one_number(*drawn))["mean_abs_ln_std_z"])
            # fitted without the stars-per-weight rule, to see what the rule guards against
            got["follows_star"].append(score(_local(drawn), np.ones_like)["mean_abs_ln_std_z"])
        out["draws"][size] = {k: [float(np.min(v)), float(np.mean(v)), float(np.max(v))]
                              for k, v in got.items()}
        print(f"{size} validation stars, mean |ln std z| (min, mean, max of {args.draws}): "
              + "; ".join(f"{k} " + ", ".join(f"{x:.3f}" for x in v)
                          for k, v in out["draws"][size].items()))
    print(json.dumps(out))


def _local(drawn):
    """sigma's factor fitted on the covariates, however few the stars."""
    from xpsvae.labels import calibration
    rule = calibration.STARS_PER_WEIGHT
    calibration.STARS_PER_WEIGHT = 0
    try:
        return calibration.SigmaScale.fit(*drawn)
    finally:
        calibration.STARS_PER_WEIGHT = rule


if __name__ == "__main__":
    main()
