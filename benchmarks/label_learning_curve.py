"""The semi-supervised claim: labels from the sVAE against supervised models, as the number
of labelled stars grows.

On the benchmark split of the embedded APOGEE library, one sVAE is trained on all the
training stars' spectra (no labels: the default recipe, or ``--model DIR``). Then, for
each number of labelled stars (500, 1k, 2k, 4k, 8k, 16k and all; ``--seeds`` draws of the
labelled stars at the sizes up to 4k), side by side on the same labelled stars:

* ``svae_label_model``: the label head on the sVAE's encoder features (xpsvae.labels);
* ``svae_tuned_label_model`` (with ``--encoder-lr LR``): the same head, each member
  tuning a copy of the sVAE's encoder at that rate on those stars (xpsvae.labels.tuned);
* ``mlp_spectrum``: the same head on the standardised spectrum (a supervised MLP);
* ``cannon``: the Cannon (Teff, log g, [Fe/H]) fitted on those stars, its test step;
* ``svae_joint_label_model`` (with ``--joint``): an sVAE trained semi-supervised, on all the
  training spectra with the labels of those stars alone, and the same head on it;
* with ``--pseudo``, the recipe for few labels (xpsvae.labels.pseudo): ``teacher``, the
  head on the spectrum and the side columns fitted on those stars (``mlp_spectrum`` with
  its own epochs, and the calibration stars as its validation share), labels the other
  training stars; an sVAE trained with all the labels but the calibration stars', and the
  label model on it, calibrated on them (``svae_pseudo_label_model``); and, to show what
  the sVAE adds,
  ``teacher_self_trained``, the teacher fitted again on its own labels of every star;
  with ``--encoder-lr`` too, ``svae_pseudo_tuned_label_model``, the label model on the
  same sVAE tuning its encoder.

Each is scored on the 3,963 test stars: robust sigma (1.4826 x MAD) per label. The side
columns (J-H, J-K, BP-RP) go to both heads; ``--no-side`` leaves them out. One JSON line
per size and seed as it goes, and the whole result last. The pseudo-label model's std z
and 2-sigma coverage per label say whether its sigmas hold with so few survey labels.

    python benchmarks/label_learning_curve.py                 # ~16 min on 2 cores
    python benchmarks/label_learning_curve.py --sizes 1000,4000 --seeds 1
    python benchmarks/label_learning_curve.py --sizes 1000,4000,all --seeds 1 --joint
    python benchmarks/label_learning_curve.py --sizes 1000,4000 --pseudo   # ~40 min
    python benchmarks/label_learning_curve.py --model DEMO/model --sizes 1000,4000 \
        --encoder-lr 2e-3                                      # the head tuning the encoder
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from xpsvae import SVAE, Cannon, TrainConfig, load_apogee_library
from xpsvae.evaluation.labels import DEMO_SIDE, label_metrics
from xpsvae.io.library import benchmark_sets
from xpsvae.labels import LabelHead, LabelHeadConfig, LabelModel, label_columns
from xpsvae.labels.features import side_columns, svae_features, tuned_inputs
from xpsvae.labels.pseudo import CALIBRATION_COLUMN, Teacher, calibration_stars, with_labels

LABELS = ("teff", "logg", "fe_h", "alpha_m")


def robust(predicted: np.ndarray, test, names) -> dict:
    return {n: label_metrics(predicted[:, j], np.asarray(test.labels[n], float))["robust_sigma"]
            for j, n in enumerate(names)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an sVAE trained on the split's training stars")
    p.add_argument("--sizes", default="500,1000,2000,4000,8000,16000,all")
    p.add_argument("--seeds", type=int, default=3, help="draws at the sizes up to 4,000")
    p.add_argument("--no-side", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--joint", action="store_true",
                   help="also train an sVAE semi-supervised on each draw's labels (~35 s each)")
    p.add_argument("--pseudo", action="store_true",
                   help="also the recipe for few labels, pseudo-labels (~3 min each)")
    p.add_argument("--encoder-lr", type=float, default=0.0,
                   help="also the head that tunes a copy of the sVAE's encoder at this rate")
    args = p.parse_args()
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    if args.model:
        model = SVAE.load(args.model)
    else:
        model = SVAE(train_config=TrainConfig(threads=args.threads)).fit(train, progress=False)
    side = () if args.no_side else DEMO_SIDE
    features = {"svae_label_model": [svae_features(model, s) for s in (train, test)],
                "mlp_spectrum": [model.standardizer.transform(s.values) for s in (train, test)]}
    if args.encoder_lr:  # a tuned head reads the sVAE-standardised spectrum
        features["svae_tuned_label_model"] = [tuned_inputs(model, s) for s in (train, test)]
    if side:
        sides = [side_columns(s.labels, side, "library") for s in (train, test)]
        features = {k: [np.hstack([f, c]) for f, c in zip(v, sides)] for k, v in features.items()}
    y, e = label_columns(train.labels, LABELS)
    labelled = np.flatnonzero(np.isfinite(y).all(axis=1))
    results = []
    for size in args.sizes.split(","):
        n = len(labelled) if size == "all" else int(size)
        for seed in range(args.seeds if n <= 4000 else 1):
            rows = np.random.default_rng(seed).choice(labelled, n, replace=False)
            entry = {"n_labelled": n, "seed": seed}
            config = LabelHeadConfig(seed=seed, threads=args.threads,
                                     epochs=max(40, min(400, 40 * 16000 // n)))
            for name, (f_train, f_test) in features.items():
                start = time.perf_counter()
                tuned = name == "svae_tuned_label_model"
                head = LabelHead(replace(config, encoder_lr=args.encoder_lr) if tuned
                                 else config).fit(f_train[rows], y[rows], e[rows],
                                                  encoder=model.network.encoder if tuned
                                                  else None)
                entry[name] = robust(head.predict(f_test)[0], test, LABELS)
                entry[name]["seconds"] = round(time.perf_counter() - start, 1)
            if args.joint:
                start = time.perf_counter()
                only = train.subset(np.arange(len(train)))
                unused = np.setdiff1d(np.arange(len(train)), rows)
                only.labels.loc[unused, list(LABELS)] = np.nan  # these stars' labels unseen
                joint = SVAE(train_config=TrainConfig(threads=args.threads)).fit(
                    only, labels=LABELS, progress=False)
                f = [svae_features(joint, s) for s in (train, test)]
                if side:
                    f = [np.hstack([a, c]) for a, c in zip(f, sides)]
                head = LabelHead(config).fit(f[0][rows], y[rows], e[rows])
                entry["svae_joint_label_model"] = robust(head.predict(f[1])[0], test, LABELS)
                entry["svae_joint_label_model"]["seconds"] = round(time.perf_counter() - start, 1)
            if args.pseudo:
                entry.update(pseudo_entries(train, test, rows, side, config, args.threads,
                                            args.encoder_lr))
            start = time.perf_counter()
            cannon = Cannon(("teff", "logg", "fe_h")).fit(train.subset(rows),
                                                          standardizer=model.standardizer)
            entry["cannon"] = robust(cannon.infer_labels(test)[0], test, cannon.label_names)
            entry["cannon"]["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(entry), flush=True)
            results.append(entry)
    print(json.dumps({"benchmark": "label_learning_curve", "side_columns": list(side),
                      "results": results}))


def pseudo_entries(train, test, rows, side, config, threads, encoder_lr=0.0) -> dict:
    """The teacher, the label model on an sVAE trained with its pseudo-labels (and, given
    ``encoder_lr``, one tuning its encoder), and the teacher trained again on them, all
    from the labels of ``rows`` alone."""
    start = time.perf_counter()
    only = train.subset(np.arange(len(train)))
    unused = np.setdiff1d(np.arange(len(train)), rows)
    only.labels.loc[unused, list(LABELS)] = np.nan  # these stars' labels unseen
    calibration = calibration_stars(only, LABELS, config)
    teacher = Teacher(LABELS, side, config).fit(only, calibration)
    out = {"teacher": robust(teacher.predict(test)[0], test, LABELS)}
    table = teacher.pseudo_labels(only)
    table[CALIBRATION_COLUMN] = calibration  # as pseudo_labels() does
    filled = with_labels(only, table, "pseudo-labels")
    out["teacher"]["seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    svae = SVAE(train_config=TrainConfig(threads=threads, seed=config.seed)).fit(
        filled, labels=LABELS, progress=False)  # without the calibration stars' labels
    head = LabelHeadConfig(seed=config.seed, threads=threads)
    out["svae_pseudo_label_model"] = scored_label_model(svae, filled, test, side, head, start)
    if encoder_lr:
        out["svae_pseudo_tuned_label_model"] = scored_label_model(
            svae, filled, test, side, replace(head, encoder_lr=encoder_lr), time.perf_counter())
    start = time.perf_counter()
    again = Teacher(LABELS, side, LabelHeadConfig(seed=config.seed, threads=threads)).fit(filled)
    out["teacher_self_trained"] = robust(again.predict(test)[0], test, LABELS)
    out["teacher_self_trained"]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def scored_label_model(svae, filled, test, side, head, start) -> dict:
    """A label model on ``svae`` from the pseudo-labelled stars: its robust sigma, and its
    calibration (held out and scaled on survey labels alone), std z and 2-sigma coverage,
    per label; the seconds since ``start``."""
    model = LabelModel.fit(svae, filled, LABELS, side, head, holes=False)
    predicted = model.predict(test)
    out = robust(np.column_stack([predicted[n] for n in LABELS]), test, LABELS)
    for n in LABELS:
        m = label_metrics(np.asarray(predicted[n], float), np.asarray(test.labels[n], float),
                          np.asarray(predicted[f"{n}_err"], float),
                          np.asarray(test.labels[f"{n}_err"], float))
        out[f"{n}_std_z"] = round(m["std_z"], 3)
        out[f"{n}_coverage_2sigma"] = round(m["coverage_2sigma"], 3)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


if __name__ == "__main__":
    main()
