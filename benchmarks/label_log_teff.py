"""A label head that learns ln Teff, against the one that learns Teff, on the same features.

A label model (``--labels``: the demo's, ``DEMO_OUT/labels``, fitted on the benchmark
split's training stars) gives the sVAE, the side columns and the head's recipe. For each
seed of ``--seeds``, two heads are fitted on the same features of the same labelled
training stars, as ``LabelModel.fit`` fits them (validation share, high-alpha class):

* ``teff``: Teff in kelvin, as the package does;
* ``ln_teff``: ln Teff, with the survey's error divided by Teff. Its Teff is exp of the
  head's mean, its ``teff_err`` Teff times the head's sigma (to first order), its 68%
  interval exp(mean -+ k sigma), never below 0 K.

Each is scored on the 3,963 test stars (robust sigma, RMSE, std z, the share within
1 sigma and within the 68% interval, per sub-population), with how many test stars get a
Teff interval reaching below 0 K. Then the test stars of the first seed's ``teff`` head
farthest off in Teff (largest |z|), with APOGEE's Teff, the K-band extinction it targeted
with (``ak_targ``) and Gaia BP-RP: what those stars are. The last line is a JSON object.

    python benchmarks/label_log_teff.py --labels DEMO_OUT/labels   # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", required=True, help="a label model fitted on the benchmark "
                                                   "split's training stars (DEMO_OUT/labels)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--worst", type=int, default=8, help="how many far-off stars to list")
    args = p.parse_args()
    import pandas as pd

    from xpsvae import benchmark_sets, load_apogee_library
    from xpsvae.evaluation.labels import label_blocks, residuals
    from xpsvae.labels import LabelHead, LabelModel, label_columns
    from xpsvae.labels.classes import high_alpha
    model = LabelModel.load(args.labels)
    labels = model.labels
    train, test = benchmark_sets(load_apogee_library())
    y, err = label_columns(train.labels, labels)
    keep = np.isfinite(y).any(axis=1) & train.observed.all(axis=1)
    y, err = y[keep], err[keep]

    def features(stars):
        return model.features(stars)

    x_train, x_test = features(train.subset(np.flatnonzero(keep))), features(test)
    classes = None
    if {"fe_h", "alpha_m"} <= set(labels) and model.head.class_prior is not None:
        fe_h, alpha_m = (y[:, labels.index(n)] for n in ("fe_h", "alpha_m"))
        classes = np.where(np.isfinite(fe_h) & np.isfinite(alpha_m),
                           high_alpha(fe_h, alpha_m), np.nan)
    j = labels.index("teff")
    rows, results, first = [], {}, None
    for seed in (int(s) for s in args.seeds.split(",")):
        for form in ("teff", "ln_teff"):
            y_fit, err_fit = y.copy(), err.copy()
            if form == "ln_teff":
                err_fit[:, j] = err[:, j] / y[:, j]
                y_fit[:, j] = np.log(y[:, j])
            head = LabelHead(replace(model.head.config, seed=seed))
            head.fit(x_train, y_fit, err_fit, classes)
            mean, sigma = head.predict(x_test)
            k = head.interval_factor(mean)
            lower, upper = mean - k * sigma, mean + k * sigma
            if form == "ln_teff":
                mu, s = mean[:, j].copy(), sigma[:, j].copy()
                mean[:, j], sigma[:, j] = np.exp(mu), np.exp(mu) * s
                with np.errstate(over="ignore"):  # an upper bound past 1e308 K reads inf
                    lower[:, j], upper[:, j] = np.exp(mu - k[:, j] * s), np.exp(mu + k[:, j] * s)
            table = pd.DataFrame({**{n: mean[:, i] for i, n in enumerate(labels)},
                                  **{f"{n}_err": sigma[:, i] for i, n in enumerate(labels)},
                                  **{f"{n}_lower": lower[:, i] for i, n in enumerate(labels)},
                                  **{f"{n}_upper": upper[:, i] for i, n in enumerate(labels)}})
            blocks = label_blocks(table, test.labels, labels)
            below_zero = int((table["teff_lower"] < 0).sum())
            results[f"{form}_seed{seed}"] = {"blocks": blocks, "teff_lower_below_0": below_zero}
            for name in labels:
                for subset, b in blocks[name].items():
                    rows.append(f"{form:8s} {seed}  {name:8s}{subset:11s} "
                                f"{b['robust_sigma']:9.4g} {b['rmse']:9.4g} {b['std_z']:6.3f} "
                                f"{b['coverage_1sigma']:6.3f} {b['coverage_interval']:6.3f}")
            rows.append(f"{form:8s} {seed}  test stars with teff_lower < 0 K: {below_zero}")
            if first is None:
                first = table
    print("form   seed  label   subset      robust_sigma   rmse   std_z  in_1sigma  "
          "in_interval")
    print("\n".join(rows))
    # the stars farthest off in Teff, by the first seed's head in kelvin
    z = residuals(first["teff"], test.labels["teff"], first["teff_err"],
                  test.labels.get("teff_err"))[1]
    order = np.argsort(-np.nan_to_num(np.abs(z)))[:args.worst]
    t = test.labels
    bp_rp = (t["gaiaedr3_phot_bp_mean_mag"] - t["gaiaedr3_phot_rp_mean_mag"]).to_numpy()
    worst = [{"apogee_teff": float(t["teff"].iloc[i]), "predicted_teff": float(first["teff"][i]),
              "teff_err": float(first["teff_err"][i]), "z": float(z[i]),
              "ak_targ": float(t["ak_targ"].iloc[i]), "bp_rp": float(bp_rp[i]),
              "share_of_z_variance": float(z[i] ** 2 / np.nansum(z ** 2))} for i in order]
    print("farthest off in Teff (first seed, Teff in kelvin):")
    for w in worst:
        print("  " + "  ".join(f"{key} {value:.4g}" for key, value in w.items()))
    hot = t["teff"].to_numpy() > 12000
    print(f"test stars above 12,000 K: median ak_targ {np.nanmedian(t['ak_targ'][hot]):.3f}, "
          f"median BP-RP {np.nanmedian(bp_rp[hot]):.3f}")
    print(json.dumps({"labels": args.labels, "seeds": args.seeds, "results": results,
                      "worst_teff": worst}))


if __name__ == "__main__":
    main()
