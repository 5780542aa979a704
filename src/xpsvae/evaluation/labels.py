"""How well labels are known: a label model and its baselines on the held-out stars.

For each label and each sub-population (``test``; ``giants``, log g < 3.5;
``dwarfs``; ``metal_poor``, [Fe/H] < -1; ``cool``, Teff < 4000 K):
``robust_sigma`` (1.4826 x the median absolute deviation of predicted - survey),
``rmse``, ``bias`` (median residual), and, where the model gives an
uncertainty, ``std_z`` and the shares of ``|z|`` within 1, 2 and 3, with
``z = (predicted - survey) / sqrt(sigma^2 + sigma_survey^2)``, with how well the stars
pin std z down (:func:`std_z_spread`); where it gives the central 68% interval,
``coverage_interval``, the share within it.

Baselines on the same split: the same head on the standardised spectrum (a
supervised MLP), on a 6-component PCA of it, the Cannon's test step, and
[alpha/M] from [Fe/H] alone (how much of the alpha information is real).

High and low alpha: a star is high-alpha above the line
``[alpha/M] = 0.10 - 0.10 [Fe/H]`` clipped to [0.06, 0.22]
(:func:`xpsvae.labels.classes.high_alpha`), a line through the gap between
the two sequences of the APOGEE disc. Balanced accuracy is given in [Fe/H]
bins for the label model's class output (``high_alpha_prob`` beyond the
training share of high-alpha stars), for its predicted labels set against
the line, and for a classifier of the same recipe fitted on the survey's
labels alone: [Fe/H], and Teff, log g and [Fe/H].
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..io.spectra import SpectraSet
from ..labels import LabelEnsemble, LabelHead, LabelHeadConfig, LabelModel, label_columns
from ..labels.calibration import residuals, within_interval
from ..labels.classes import HIGH_ALPHA_BOUNDARY, HIGH_ALPHA_COLUMN, ClassHead, high_alpha
from ..labels.features import side_columns
from ..labels.model import EXTRAPOLATED
from ..svae import SVAE

#: Sub-populations of the label blocks: (column, "<" or ">=", cut).
SUBSETS = {"giants": ("logg", "<", 3.5), "dwarfs": ("logg", ">=", 3.5),
           "metal_poor": ("fe_h", "<", -1.0), "cool": ("teff", "<", 4000.0)}
#: The demo's side columns: 2MASS J-H and J-K, and Gaia BP-RP.
DEMO_SIDE = ("j-h", "j-k", "gaiaedr3_phot_bp_mean_mag-gaiaedr3_phot_rp_mean_mag")
#: [Fe/H] bins of the high/low-alpha accuracy.
FE_H_BINS = (-1.0, -0.5, 0.0, 0.5)
#: Where the giants' RMSE is split, to say where its tail lies (``by_fe_h``): the edge of
#: the high/low-alpha bins between the thick disc's metallicities and the thin disc's.
TAIL_FE_H = -0.5
#: Gaia G magnitude columns a table may hold (the archive's name, the library's), the first
#: found; the edges of ``by_magnitude``'s bins, and where it splits bright from faint.
G_MAG_COLUMNS = ("phot_g_mean_mag", "gaiaedr3_phot_g_mean_mag")
G_EDGES = (11.0, 12.0, 13.0, 14.0)
G_CUT = 13.0
#: Hidden widths and batch of the baselines that see [Fe/H] alone: a function of one number
#: needs no wider network, and larger batches fit it as well in a sixth of the time (on the
#: benchmark split: [alpha/M] from [Fe/H] 0.0635 dex at 256 stars a batch, 0.0631 at 2048;
#: balanced accuracy 0.724 and 0.727). The demo's time is spent where it tells more.
ONE_INPUT_HIDDEN = (64, 64)
ONE_INPUT_BATCH = 2048
#: Bootstrap resamples behind ``std_z_interval``, and their seed. 1,000 put the 5th and
#: 95th percentiles within ~0.02 of where 20,000 do (the demo's test stars, three seeds).
STD_Z_RESAMPLES = 1000
STD_Z_SEED = 0


def label_metrics(predicted: np.ndarray, truth: np.ndarray, sigma: Optional[np.ndarray] = None,
                  truth_err: Optional[np.ndarray] = None,
                  interval: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> dict:
    """The figures of one label on one set of stars (module docstring); with the predicted
    central 68% ``interval`` (lower, upper), ``coverage_interval``: the share of the stars
    within it, the survey's error added in quadrature to its half-width."""
    r, z = residuals(predicted, truth, sigma, truth_err)
    ok = np.isfinite(r)
    r = r[ok]
    if not len(r):
        return {"n_stars": 0}
    out = {"n_stars": int(len(r)),
           "robust_sigma": float(1.4826 * np.median(np.abs(r - np.median(r)))),
           "rmse": float(np.sqrt(np.mean(r ** 2))), "bias": float(np.median(r))}
    if z is not None:
        z = z[ok]
        out.update({"std_z": float(np.std(z)),
                    **{f"coverage_{k}sigma": float(np.mean(np.abs(z) < k)) for k in (1, 2, 3)},
                    **std_z_spread(z)})
    if interval is not None:
        inside = within_interval(truth, *interval, truth_err)[ok]
        out["coverage_interval"] = float(np.mean(inside))
    return out


def std_z_spread(z: np.ndarray) -> dict:
    """How well a set of stars pins its std z down: ``std_z_interval``, the central 90% of
    std z over :data:`STD_Z_RESAMPLES` bootstrap resamples of the stars (seeded, so the
    same on every run), and ``largest_abs_z`` with ``largest_z_variance_share``, the share
    of the sum of z^2 that star carries. With residuals as heavy-tailed as the labels'
    (a hot star taken for an F star lies at |z| ~ 35), one star can hold a quarter of z's
    variance, and std z moves by more than the goal's ±0.1 from one draw of test stars to
    another."""
    if len(z) < 2:
        return {}
    squares = z ** 2
    rng = np.random.default_rng(STD_Z_SEED)
    draws = np.empty(STD_Z_RESAMPLES)
    for start in range(0, STD_Z_RESAMPLES, 100):  # 100 resamples at a time: bounded memory
        rows = rng.integers(0, len(z), size=(min(100, STD_Z_RESAMPLES - start), len(z)))
        draws[start:start + len(rows)] = np.std(z[rows], axis=1)
    return {"std_z_interval": [float(v) for v in np.percentile(draws, [5, 95])],
            "largest_abs_z": float(np.sqrt(squares.max())),
            "largest_z_variance_share": float(squares.max() / squares.sum())
            if squares.sum() > 0 else 0.0}


def _columns(predicted: pd.DataFrame, truth: pd.DataFrame, name: str) -> tuple:
    """(predicted, survey value, predicted sigma or None, survey error or None) of one
    label: the arguments of :func:`residuals` and :func:`label_metrics`, in their order."""
    return (np.asarray(predicted[name], np.float64), np.asarray(truth[name], np.float64),
            np.asarray(predicted[f"{name}_err"], np.float64) if f"{name}_err" in predicted
            else None,
            np.asarray(truth[f"{name}_err"], np.float64) if f"{name}_err" in truth else None)


def subset_masks(table: pd.DataFrame) -> Dict[str, np.ndarray]:
    """``test`` (every star) and the sub-populations of :data:`SUBSETS`, by survey labels."""
    masks = {"test": np.ones(len(table), dtype=bool)}
    for name, (column, op, cut) in SUBSETS.items():
        if column in table:
            values = np.asarray(table[column], dtype=np.float64)
            masks[name] = np.isfinite(values) & ((values < cut) if op == "<" else (values >= cut))
    return masks


def rmse_by_fe_h(predicted: np.ndarray, truth: np.ndarray, fe_h: np.ndarray) -> dict:
    """The RMSE of the stars below :data:`TAIL_FE_H` (survey [Fe/H]) and at or above it,
    how many each, and the share of the squared error the stars below carry ({} where
    either side has none)."""
    square = (predicted - truth) ** 2
    known = np.isfinite(square) & np.isfinite(fe_h)
    below, above = known & (fe_h < TAIL_FE_H), known & (fe_h >= TAIL_FE_H)
    if not below.any() or not above.any():
        return {}
    return {"fe_h_cut": TAIL_FE_H,
            "n_below": int(below.sum()), "rmse_below": float(np.sqrt(square[below].mean())),
            "n_above": int(above.sum()), "rmse_above": float(np.sqrt(square[above].mean())),
            "share_of_squared_error_below": float(square[below].sum() / square[known].sum())}


def label_blocks(predicted: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str]) -> dict:
    """{label: {subset: label_metrics}} of a prediction table against the survey's labels;
    the giants' block also splits its RMSE at [Fe/H] = :data:`TAIL_FE_H` (``by_fe_h``)."""
    masks = subset_masks(truth)
    fe_h = np.asarray(truth["fe_h"], np.float64) if "fe_h" in truth else None
    out = {}
    for name in labels:
        if name not in predicted or name not in truth:
            continue
        p, t, s, e = _columns(predicted, truth, name)
        bounds = (np.asarray(predicted[f"{name}_lower"], np.float64),
                  np.asarray(predicted[f"{name}_upper"], np.float64)) \
            if f"{name}_lower" in predicted else None
        out[name] = {subset: label_metrics(p[m], t[m], None if s is None else s[m],
                                           None if e is None else e[m],
                                           None if bounds is None else
                                           (bounds[0][m], bounds[1][m]))
                     for subset, m in masks.items()}
        if fe_h is not None and "giants" in masks:
            m = masks["giants"]
            out[name]["giants"]["by_fe_h"] = rmse_by_fe_h(p[m], t[m], fe_h[m])
    return out


def magnitude_block(predicted: pd.DataFrame, truth: pd.DataFrame,
                    labels: Sequence[str]) -> dict:
    """How well each label is known by Gaia G magnitude (the spectra's signal-to-noise):
    ``label_metrics`` without sigma (``n_stars``, ``robust_sigma``, ``rmse``, ``bias``) per
    bin of :data:`G_EDGES`, and for the stars brighter and fainter than :data:`G_CUT`; {}
    where the table has no G column (:data:`G_MAG_COLUMNS`)."""
    column = next((c for c in G_MAG_COLUMNS if c in truth), None)
    if column is None:
        return {}
    g = np.asarray(truth[column], np.float64)
    edges = (-np.inf, *G_EDGES, np.inf)
    names = [f"G < {G_EDGES[0]:g}"] + [f"{lo:g}–{hi:g}" for lo, hi in
                                        zip(G_EDGES[:-1], G_EDGES[1:])] + [f"G ≥ {G_EDGES[-1]:g}"]
    masks = {bin_name: (g >= lo) & (g < hi)
             for bin_name, lo, hi in zip(names, edges[:-1], edges[1:])}
    masks.update(bright=g < G_CUT, faint=g >= G_CUT)
    out = {"column": column, "cut": G_CUT, "bins": names, "labels": {}}
    for name in (n for n in labels if n in predicted and n in truth):
        p, t = np.asarray(predicted[name], np.float64), np.asarray(truth[name], np.float64)
        cells = {key: label_metrics(p[m], t[m]) for key, m in masks.items()}
        out["labels"][name] = {"bins": {b: cells[b] for b in names},
                               "bright": cells["bright"], "faint": cells["faint"]}
    return out


def balanced_accuracy(truth: np.ndarray, guess: np.ndarray) -> float:
    """The mean of the recalls of the two classes (NaN where a class is absent)."""
    recalls = [np.mean(guess[truth == c] == c) for c in (True, False) if (truth == c).any()]
    return float(np.mean(recalls)) if len(recalls) == 2 else float("nan")


def alpha_classification(fe_h_true: np.ndarray, alpha_true: np.ndarray,
                         guesses: Dict[str, np.ndarray]) -> dict:
    """Balanced accuracy of high/low alpha per [Fe/H] bin (by the survey's [Fe/H]) of each
    guess (``{name: bool per star}``), and over all the bins."""
    ok = np.isfinite(fe_h_true) & np.isfinite(alpha_true)
    truth = high_alpha(fe_h_true, alpha_true)
    out = {"boundary": HIGH_ALPHA_BOUNDARY, "bins": {}}
    for lo, hi in zip(FE_H_BINS[:-1], FE_H_BINS[1:]):
        m = ok & (fe_h_true >= lo) & (fe_h_true < hi)
        out["bins"][f"{lo:+.1f}..{hi:+.1f}"] = {
            "n_stars": int(m.sum()), "n_high_alpha": int((truth & m).sum()),
            **{name: balanced_accuracy(truth[m], guess[m]) for name, guess in guesses.items()}}
    m = ok & (fe_h_true >= FE_H_BINS[0]) & (fe_h_true < FE_H_BINS[-1])
    out["all_bins"] = {name: balanced_accuracy(truth[m], guess[m])
                       for name, guess in guesses.items()}
    return out


def model_guesses(label_model: Union[LabelModel, LabelEnsemble],
                  predicted: pd.DataFrame) -> Dict[str, np.ndarray]:
    """High-alpha or not per star from a label model's (or ensemble's) prediction: by its
    class (where it has one), and by its predicted [Fe/H] and [alpha/M] set against the
    line."""
    guesses = {}
    if label_model.high_alpha_prior is not None:
        guesses["label_model"] = predicted[HIGH_ALPHA_COLUMN].to_numpy() \
            > label_model.high_alpha_prior
    guesses["label_model_labels"] = high_alpha(predicted["fe_h"], predicted["alpha_m"])
    return guesses


def _head_block(config: LabelHeadConfig) -> dict:
    """The head's recipe, as the ``labels`` block and the report give it."""
    return {"members": config.members, "epochs": config.epochs,
            "hidden": list(config.hidden), "dof": config.dof, "encoder_lr": config.encoder_lr}


def _one_input(config: LabelHeadConfig) -> LabelHeadConfig:
    """The recipe of a baseline that sees one number (:data:`ONE_INPUT_HIDDEN`)."""
    return replace(config, hidden=ONE_INPUT_HIDDEN, batch_size=ONE_INPUT_BATCH)


def _head_baseline(train_x, test_x, y, e, labels, config) -> pd.DataFrame:
    """The head (one member) fitted on ``train_x`` and its prediction for ``test_x``."""
    head = LabelHead(config).fit(train_x, y, e)
    mean, sigma = head.predict(test_x)
    return pd.DataFrame({**{n: mean[:, j] for j, n in enumerate(labels)},
                         **{f"{n}_err": sigma[:, j] for j, n in enumerate(labels)}})


#: The baselines' blocks in the order the report lists them.
BASELINES = ("head_on_unsupervised_svae", "mlp_spectrum", "pca6_head", "cannon",
             "alpha_from_fe_h")
#: Who guesses high or low alpha, in the order the report lists them.
GUESSERS = ("label_model", "unsupervised_svae", "label_model_labels", "fe_h_alone",
            "teff_logg_fe_h_alone")


def fit_label_model(model: SVAE, train: SpectraSet, test: SpectraSet, labels: Sequence[str],
                    side: Sequence[str], config: LabelHeadConfig) -> tuple:
    """A label model fitted on ``train`` and scored on ``test``: (``labels`` block without
    baselines, the label model, its prediction for ``test``)."""
    start = time.perf_counter()
    label_model = LabelModel.fit(model, train, labels, side, config)
    fitted = time.perf_counter() - start
    predicted = label_model.predict(test)
    out = {"labels": list(labels), "side_columns": list(side),
           "head": {**_head_block(config), "fit_seconds": fitted,
                    "sigma_scale": dict(zip(labels, label_model.head.sigma_scale.tolist()))},
           "svae_label_model": label_blocks(predicted, test.labels, labels),
           "ood": _ood_block(predicted, test.labels, labels),
           "extrapolated": _extrapolated_block(predicted, test.labels, labels),
           "by_magnitude": magnitude_block(predicted, test.labels, labels)}
    return out, label_model, predicted


def spectrum_baselines(model: SVAE, train: SpectraSet, test: SpectraSet,
                       labels: Sequence[str], side: Sequence[str], config: LabelHeadConfig
                       ) -> Dict[str, dict]:
    """The baselines that see the spectrum (in ``model``'s standardised units), not the
    sVAE: the head as a supervised MLP on the spectrum, and on its 6-component PCA (one
    member each, and no encoder to tune)."""
    y, e = label_columns(train.labels, labels)
    single = replace(config, members=1, encoder_lr=0.0)
    sides = [side_columns(s.labels, side, "library") for s in (train, test)]
    spectra = [model.standardizer.transform(s.values) for s in (train, test)]
    out = {"mlp_spectrum": label_blocks(_head_baseline(
        np.hstack([spectra[0], sides[0]]), np.hstack([spectra[1], sides[1]]), y, e,
        labels, single), test.labels, labels)}
    mean = spectra[0].mean(axis=0)
    basis = np.linalg.svd(spectra[0] - mean, full_matrices=False)[2][:6].T
    out["pca6_head"] = label_blocks(_head_baseline(
        np.hstack([(spectra[0] - mean) @ basis, sides[0]]),
        np.hstack([(spectra[1] - mean) @ basis, sides[1]]), y, e, labels, single),
        test.labels, labels)
    return out


def survey_baselines(train: SpectraSet, test: SpectraSet, labels: Sequence[str],
                     config: LabelHeadConfig) -> tuple:
    """What the survey's labels alone tell, from models of the head's recipe that see no
    spectrum: [alpha/M] from [Fe/H], and high or low alpha from [Fe/H], and from Teff,
    log g and [Fe/H] (how much of the alpha information in the spectrum is real).

    Returns:
        ({"alpha_from_fe_h": blocks}, {guesser: high-alpha or not per test star}); both
        empty unless ``labels`` hold [Fe/H] and [alpha/M].
    """
    if "fe_h" not in labels or "alpha_m" not in labels:
        return {}, {}
    single = replace(config, members=1, encoder_lr=0.0)  # no encoder to tune
    fe = [np.asarray(s.labels["fe_h"], np.float64)[:, None] for s in (train, test)]
    y, e = label_columns(train.labels, ["alpha_m"])
    alpha = _head_baseline(fe[0], np.nan_to_num(fe[1], nan=0.0), y, e, ["alpha_m"],
                           _one_input(single))
    alpha.loc[~np.isfinite(fe[1][:, 0]), "alpha_m"] = np.nan
    blocks = {"alpha_from_fe_h": label_blocks(alpha, test.labels, ["alpha_m"])}
    y_train = label_columns(train.labels, ("teff", "logg", "fe_h", "alpha_m"))[0]
    y_test = label_columns(test.labels, ("teff", "logg", "fe_h"))[0]
    both = np.isfinite(y_train[:, 2]) & np.isfinite(y_train[:, 3])
    truth = high_alpha(y_train[both, 2], y_train[both, 3])
    guesses = {}
    for name, columns in (("fe_h_alone", [2]), ("teff_logg_fe_h_alone", [0, 1, 2])):
        recipe = single if len(columns) > 1 else _one_input(single)
        guesses[name] = ClassHead(recipe).fit(y_train[both][:, columns], truth).classify(
            y_test[:, columns])
    return blocks, guesses


def unsupervised_baselines(unsupervised: Optional[SVAE], cannon, train: SpectraSet,
                           test: SpectraSet, labels: Sequence[str], side: Sequence[str],
                           config: LabelHeadConfig) -> tuple:
    """The baselines built on the unsupervised side of the demo: the same label model on
    the sVAE trained without labels, and the Cannon's test step (either may be None).

    Returns:
        ({baseline: blocks}, {"unsupervised_svae": high-alpha or not per test star} where
        that label model has a class output).
    """
    blocks, guesses = {}, {}
    if unsupervised is not None:
        model = LabelModel.fit(unsupervised, train, labels, side, config,
                               holes=False)  # no partial stars here
        predicted = model.predict(test)
        blocks["head_on_unsupervised_svae"] = label_blocks(predicted, test.labels, labels)
        if model.classifier is not None:
            guesses["unsupervised_svae"] = model_guesses(model, predicted)["label_model"]
    if cannon is not None:
        inferred, _ = cannon.infer_labels(test)
        blocks["cannon"] = label_blocks(pd.DataFrame(
            inferred, columns=list(cannon.label_names)), test.labels, labels)
    return blocks, guesses


def with_baselines(block: dict, test: SpectraSet, baselines: Dict[str, dict],
                   guesses: Dict[str, np.ndarray]) -> dict:
    """``block`` (from :func:`fit_label_model`) with the ``baselines`` and, given the
    label model's and the others' high-alpha guesses, ``alpha_classes``, both in the order
    the report lists them (:data:`BASELINES`, :data:`GUESSERS`)."""
    block["baselines"] = {name: baselines[name] for name in BASELINES if name in baselines}
    if guesses and {"fe_h", "alpha_m"} <= set(test.labels.columns):
        block["alpha_classes"] = alpha_classification(
            *(np.asarray(test.labels[n], np.float64) for n in ("fe_h", "alpha_m")),
            {name: guesses[name] for name in GUESSERS if name in guesses})
    return block


def assess_labels(model: SVAE, train: SpectraSet, test: SpectraSet,
                  labels: Sequence[str] = ("teff", "logg", "fe_h", "alpha_m"),
                  side: Sequence[str] = DEMO_SIDE, config: Optional[LabelHeadConfig] = None,
                  cannon=None, unsupervised: Optional[SVAE] = None) -> tuple:
    """Fit a label model on ``train``, score it and the baselines on ``test``, in this
    process (the demo runs the same steps in two: :mod:`xpsvae.evaluation.demo`).

    ``model`` may be a semi-supervised sVAE (fitted with ``labels``); ``unsupervised``,
    the same recipe without them, then gets the same head as a baseline.

    Returns:
        (metrics ``labels`` block, the label model, its prediction for ``test``).
    """
    config = config or LabelHeadConfig()
    block, label_model, predicted = fit_label_model(model, train, test, labels, side, config)
    baselines, guesses = unsupervised_baselines(unsupervised, cannon, train, test, labels,
                                                side, config)
    baselines.update(spectrum_baselines(model, train, test, labels, side, config))
    survey, survey_guesses = survey_baselines(train, test, labels, config)
    baselines.update(survey)
    if survey_guesses:  # [Fe/H] and [alpha/M] among the labels
        guesses.update(model_guesses(label_model, predicted), **survey_guesses)
    else:
        guesses = {}
    return with_baselines(block, test, baselines, guesses), label_model, predicted


def score_label_model(label_model: Union[LabelModel, LabelEnsemble],
                      test: SpectraSet) -> tuple:
    """(``labels`` block, prediction) of a fitted label model (or ensemble: its first
    member's recipe, and how many members) on labelled ``test`` stars."""
    predicted = label_model.predict(test)
    labels = label_model.labels
    first = label_model.members[0] if isinstance(label_model, LabelEnsemble) else label_model
    block = {"labels": labels, "side_columns": first.side,
             "head": _head_block(first.head.config),
             "svae_label_model": label_blocks(predicted, test.labels, labels),
             "ood": _ood_block(predicted, test.labels, labels),
             "extrapolated": _extrapolated_block(predicted, test.labels, labels),
             "by_magnitude": magnitude_block(predicted, test.labels, labels)}
    if isinstance(label_model, LabelEnsemble):
        block["ensemble_members"] = len(label_model.members)
    if {"fe_h", "alpha_m"} <= set(labels) & set(test.labels.columns):
        block["alpha_classes"] = alpha_classification(
            *(np.asarray(test.labels[n], np.float64) for n in ("fe_h", "alpha_m")),
            model_guesses(label_model, predicted))
    return block, predicted


def headline(block: dict, keys: Sequence[str] = ("robust_sigma", "std_z", "coverage_1sigma",
                                                 "coverage_2sigma", "coverage_3sigma")) -> dict:
    """The figures a benchmark prints of a :func:`score_label_model` block, rounded: per label
    its ``keys`` on the test stars, the giants' [alpha/M] RMSE and the high/low-alpha
    balanced accuracy per [Fe/H] bin."""
    scored = block["svae_label_model"]
    out = {"alpha_m_rmse_giants": round(scored["alpha_m"]["giants"]["rmse"], 4),
           "high_low_alpha": {b: round(v["label_model"], 3)
                              for b, v in block["alpha_classes"]["bins"].items()}}
    for name in block["labels"]:
        out[name] = {k: round(scored[name]["test"][k], 4) for k in keys}
    return out


def write_label_figures(fig_dir: str, predicted: pd.DataFrame, truth: pd.DataFrame,
                        labels: Sequence[str], unlabelled: Optional[pd.DataFrame] = None
                        ) -> None:
    """``labels_vs_apogee.png``, ``labels_coverage.png`` and, given the prediction for
    stars the survey has no [Fe/H] for, ``labels_kiel_unlabelled.png``."""
    import os

    from .label_figures import plot_coverage, plot_kiel, plot_predicted_vs_survey
    plot_predicted_vs_survey(predicted, truth, labels, os.path.join(fig_dir,
                                                                    "labels_vs_apogee.png"))
    plot_coverage({name: residuals(*_columns(predicted, truth, name))[1] for name in labels},
                  os.path.join(fig_dir, "labels_coverage.png"))
    if unlabelled is not None and len(unlabelled) and {"teff", "logg", "fe_h"} <= set(labels):
        plot_kiel(unlabelled, os.path.join(fig_dir, "labels_kiel_unlabelled.png"),
                  f"{len(unlabelled):,} library stars without APOGEE [Fe/H], as predicted")


def _ood_block(predicted: pd.DataFrame, truth: pd.DataFrame, labels: Sequence[str]) -> dict:
    """How many test stars are flagged, and whether their |z| is larger (it should be), with
    the std z of each group, which says whether a smaller |z| is a sigma that grew, and the
    share of each beyond 3 sigma: whether the flag finds the stars far off their sigma."""
    flagged = predicted["labels_ood"].to_numpy()
    out = {"n_flagged": int(flagged.sum()), "share_flagged": float(flagged.mean())}
    for name in (n for n in labels if n in truth):
        r, signed = residuals(*_columns(predicted, truth, name))
        r, z = np.abs(r), np.abs(signed)
        ok = np.isfinite(z)
        out[name] = {"median_abs_z_flagged": _or_none(np.median, z[ok & flagged]),
                     "median_abs_z_unflagged": float(np.median(z[ok & ~flagged])),
                     "median_abs_residual_flagged": _or_none(np.median, r[ok & flagged]),
                     "median_abs_residual_unflagged": float(np.median(r[ok & ~flagged])),
                     "std_z_flagged": _or_none(np.std, signed[ok & flagged]),
                     "std_z_unflagged": float(np.std(signed[ok & ~flagged])),
                     "share_beyond_3_flagged": _or_none(np.mean, z[ok & flagged] > 3),
                     "share_beyond_3_unflagged": float(np.mean(z[ok & ~flagged] > 3))}
    return out


def _or_none(how, values: np.ndarray) -> Optional[float]:
    """``how(values)`` (a median, a mean) as a float; None where there are no values."""
    return float(how(values)) if len(values) else None


def _extrapolated_block(predicted: pd.DataFrame, truth: pd.DataFrame,
                        labels: Sequence[str]) -> dict:
    """Per label with an ``_extrapolated`` column: the share of the test stars it marks,
    among those the survey gives the label and those it does not, and the median |z| of
    the marked and unmarked stars that have it ({} for a label model from before)."""
    out = {}
    for name in labels:
        column = f"{name}{EXTRAPOLATED}"
        if column not in predicted or name not in truth:
            continue
        marked = predicted[column].to_numpy()
        z = np.abs(residuals(*_columns(predicted, truth, name))[1])
        known = np.isfinite(np.asarray(truth[name], np.float64))
        out[name] = {"n_marked": int(marked.sum()), "share_marked": float(marked.mean()),
                     "share_marked_with_survey_label": _or_none(np.mean, marked[known]),
                     "share_marked_without_survey_label": _or_none(np.mean, marked[~known]),
                     "n_without_survey_label": int((~known).sum()),
                     "median_abs_z_marked": _or_none(np.median, z[known & marked]),
                     "median_abs_z_unmarked": _or_none(np.median, z[known & ~marked])}
    return out
