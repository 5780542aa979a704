"""Does the out-of-distribution flag catch the stars no labelled star is like? The label
model's flag (a Gaussian about the labelled stars' latents, and the anomaly score) against
a flag from the labelled stars' density: the distance to the k-th nearest labelled star.

On the benchmark split of the embedded APOGEE library, one unsupervised sVAE is trained on
the training stars' spectra (the default recipe, or ``--model DIR``). For each draw, as in
``label_learning_curve.py``, ``--size`` labelled stars are drawn from the training stars
with all four labels (so none is above ~7,000 K: APOGEE gives those no [Fe/H]), and the
label model is fitted on them with the side columns J-H, J-K and BP-RP. On the 3,963 test
stars, for each flag: the share flagged, the share of hot (APOGEE Teff > 7,000 K) and cool
(< 4,000 K) stars flagged, and per label the median |z| of flagged and unflagged stars.

The neighbour flag: the Euclidean distance, in the latent whitened by the labelled stars'
covariance (the label model's Mahalanobis metric), from a star's latent mean to its k-th
nearest labelled star's; flagged beyond the 99th percentile of the labelled stars' own
distances (each to the others), or where the spectrum is partial (no anomaly score). The
same is measured in the head's input features and in the standardised spectrum (each
standardised by the labelled stars). Also, for the hot test stars: the median APOGEE Teff
and Gaia BP-RP of their k nearest labelled stars in the latent, beside their own. One JSON
line per draw, the whole result last.

    python benchmarks/ood_neighbours.py                      # ~2 min on 2 cores
    python benchmarks/ood_neighbours.py --model DIR --seeds 1   # ~10 s
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.spatial import cKDTree

from xpsvae import SVAE, TrainConfig, load_apogee_library
from xpsvae.evaluation.labels import DEMO_SIDE
from xpsvae.io.library import benchmark_sets
from xpsvae.labels import LabelHeadConfig, LabelModel, label_columns
from xpsvae.labels.features import svae_features

LABELS = ("teff", "logg", "fe_h", "alpha_m")
QUANTILE = 0.99


def neighbour_flag(reference: np.ndarray, stars: np.ndarray, k: int, whiten: str):
    """(flag, k nearest labelled stars' rows) of ``stars`` against ``reference``."""
    reference, stars = (np.asarray(a, dtype=np.float64) for a in (reference, stars))
    mean = reference.mean(axis=0)
    if whiten == "covariance":  # |(x - m) L|^2 = (x - m)^T precision (x - m)
        chol = np.linalg.cholesky(np.linalg.inv(np.cov(reference, rowvar=False)))
    else:  # each column by its spread (features, spectra: too many columns for a covariance)
        chol = np.diag(1 / (reference.std(axis=0) + 1e-12))
    whitened = (reference - mean) @ chol
    tree = cKDTree(whitened)
    own = tree.query(whitened, k=[k + 1])[0][:, 0]  # itself left out
    distance, rows = tree.query((stars - mean) @ chol, k=k)
    return distance[:, -1] > np.quantile(own, QUANTILE), rows


def flag_entry(flag: np.ndarray, z: dict, teff: np.ndarray) -> dict:
    entry = {"share_flagged": round(float(flag.mean()), 4),
             "hot_flagged": round(float(flag[teff > 7000].mean()), 3),
             "cool_flagged": round(float(flag[teff < 4000].mean()), 3)}
    for name, a in z.items():
        ok = np.isfinite(a)
        entry[f"{name}_median_abs_z"] = [round(float(np.median(a[ok & f])), 2)
                                         if (ok & f).any() else None for f in (flag, ~flag)]
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an unsupervised sVAE trained on the split's training stars")
    p.add_argument("--size", type=int, default=1000, help="labelled stars per draw")
    p.add_argument("--seeds", type=int, default=3, help="draws")
    p.add_argument("--k", type=int, default=10, help="the neighbour flag's k")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    model = SVAE.load(args.model) if args.model else \
        SVAE(train_config=TrainConfig(threads=args.threads)).fit(train, progress=False)
    y, _ = label_columns(train.labels, LABELS)
    every = np.flatnonzero(np.isfinite(y).all(axis=1))  # the draws of label_learning_curve
    truth, error = label_columns(test.labels, LABELS)
    teff = truth[:, 0]
    colour = lambda s: np.asarray(s.labels["gaiaedr3_phot_bp_mean_mag"], float) - \
        np.asarray(s.labels["gaiaedr3_phot_rp_mean_mag"], float)  # noqa: E731
    scores = model.score(test)
    spaces = {"latent": (lambda s: model.score(s)["latent_mean"], "covariance"),
              "features": (lambda s: svae_features(model, s), "columns"),
              "spectrum": (lambda s: model.standardizer.transform(s.values), "columns")}
    # the test stars' side of each space does not change from draw to draw
    tested = {"latent": scores["latent_mean"], "features": svae_features(model, test),
              "spectrum": model.standardizer.transform(test.values)}
    results = []
    for seed in range(args.seeds):
        rows = np.random.default_rng(seed).choice(every, args.size, replace=False)
        labelled = train.subset(rows)
        labels = LabelModel.fit(model, labelled, LABELS, DEMO_SIDE,
                                LabelHeadConfig(seed=seed, threads=args.threads), holes=False)
        predicted = labels.predict(test, scores=scores)
        z = {n: np.abs(predicted[n].to_numpy() - truth[:, j]) /
             np.sqrt(predicted[f"{n}_err"].to_numpy() ** 2 + np.nan_to_num(error[:, j]) ** 2)
             for j, n in enumerate(LABELS)}
        hot = teff > 7000
        entry = {"seed": seed, "n_labelled": args.size,
                 "max_labelled_teff": round(float(labelled.labels["teff"].max())),
                 "hot_within_2sigma_teff": round(float((z["teff"][hot] < 2).mean()), 3),
                 "gaussian_flag": flag_entry(predicted["labels_ood"].to_numpy(), z, teff)}
        for space, (values, whiten) in spaces.items():
            flag, near = neighbour_flag(values(labelled), tested[space], args.k, whiten)
            entry[f"neighbour_flag_{space}"] = flag_entry(flag | (scores["n_observed"] <
                                                                  test.n_inputs), z, teff)
            if space == "latent":
                near_teff = np.asarray(labelled.labels["teff"], float)[near]
                entry["hot_stars"] = {
                    "teff": round(float(np.median(teff[hot]))),
                    "neighbours_teff": round(float(np.median(near_teff[hot]))),
                    "bp_rp": round(float(np.nanmedian(colour(test)[hot])), 2),
                    "neighbours_bp_rp": round(float(np.nanmedian(colour(labelled)[near][hot])),
                                              2)}
        print(json.dumps(entry), flush=True)
        results.append(entry)
    print(json.dumps({"benchmark": "ood_neighbours", "k": args.k, "quantile": QUANTILE,
                      "results": results}))


if __name__ == "__main__":
    main()
