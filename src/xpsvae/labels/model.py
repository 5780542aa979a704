"""Stellar labels from an sVAE: :class:`LabelModel`, the sVAE and a label head together.

It trains on the stars that have a label and predicts for every star:
``teff``, ``logg``, ``fe_h``, ``alpha_m`` (or any label columns), each with
``<label>_err``, the head's calibrated uncertainty, ``<label>_lower`` and
``<label>_upper``, the central 68% interval (fitted apart, since the residuals'
tails are heavier than a Gaussian's: :mod:`xpsvae.labels.head`), and
``<label>_extrapolated``, True where a star's predicted labels lie outside the survey's
range among the stars that label was learnt from (say, [Fe/H] for a star predicted
hotter than any star that had a survey [Fe/H]: APOGEE gives none above ~6,900 K), and
``labels_ood``, a flag where the model is guessing. Where the labels include ``fe_h`` and
``alpha_m``, also ``high_alpha_prob``, the probability that the star is on
the high-alpha sequence (:mod:`xpsvae.labels.classes`). A star is flagged
when its anomaly score (the sVAE's NLL per measured input) or its latent's
Mahalanobis distance from the training stars' latents is beyond that of 99%
of the training stars: its spectrum is unlike those the labels were learnt
from. (With pseudo-labels, :mod:`xpsvae.labels.pseudo`, the training stars
here are those a survey labelled.) A partial spectrum (any input unmeasured)
is flagged too: the model fills its holes, and its labels rest on that
filling. Its ``_err`` holds what the filling may have got wrong, measured when
the model is fitted (:mod:`xpsvae.labels.holes`; docs/labels.md measures how
honest that makes it).

A label model's folder holds the sVAE it reads (``svae/``, copied, so the
folder stands alone), ``head.safetensors`` and ``head.json`` (the labels,
side columns, thresholds of the flag, ``label_ranges`` and the share of high-alpha stars).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..core.errors import ModelFileError, SpectraError
from ..core.files import BUILTIN_LABEL_MODEL_DIR, BUILTIN_MODEL, model_folder
from ..core.files import LABEL_HEAD_CONFIG as HEAD_CONFIG
from ..core.files import LABEL_HEAD_WEIGHTS as HEAD_WEIGHTS
from ..core.files import LABEL_SVAE_FOLDER as SVAE_FOLDER
from ..io.spectra import SpectraSet
from ..model.supervision import calibration_marks, label_columns
from ..svae import SVAE
from .classes import (
    HIGH_ALPHA_BOUNDARY,
    HIGH_ALPHA_COLUMN,
    MIN_CLASS_STARS,
    ClassHead,
    HeadClass,
    high_alpha,
)
from .features import noise_features, side_columns, svae_features, tuned_inputs
from .head import LabelHead, LabelHeadConfig, head_files
from .holes import HOLE_STARS, MIN_HOLE_STARS, HoleCost
from .pseudo import surveyed
from .validation import learnt_by, validation_share

#: The labels the embedded APOGEE library holds, each with ``<label>_err``.
DEFAULT_LABELS = ("teff", "logg", "fe_h", "alpha_m")
#: Suffix of the column that says a label was extrapolated (:func:`outside`).
EXTRAPOLATED = "_extrapolated"
#: Share of the training stars inside the out-of-distribution thresholds.
OOD_QUANTILE = 0.99
#: Prefix of a high/low-alpha classifier's arrays in the weights file (label models written
#: when the classifier was an ensemble of its own).
_CLASS_PREFIX = "high_alpha."
#: The weights file's arrays of :attr:`LabelModel.fitted`.
_FITTED_IDS, _FITTED_VALIDATION = "fitted_source_id", "fitted_validation"


class LabelModel:
    """An sVAE and a label head on its features (:mod:`xpsvae.labels.features`).

    Example:
        >>> from xpsvae import SVAE, load_apogee_library
        >>> from xpsvae.labels import LabelModel
        >>> stars = load_apogee_library()
        >>> labels = LabelModel.fit(SVAE.pretrained(), stars)
        >>> table = labels.predict(stars)      # teff, teff_err, ..., labels_ood
    """

    def __init__(self, svae: SVAE, head: LabelHead, labels: Sequence[str],
                 side: Sequence[str] = (), ood: Optional[Dict[str, object]] = None,
                 classifier: Optional[ClassHead] = None,
                 holes: Optional[HoleCost] = None, noise: bool = True,
                 ranges: Optional[Dict[str, Dict[str, List[float]]]] = None):
        self.svae, self.head = svae, head
        # high_alpha_prob: the class the head learnt, or (label models from before) a
        # classifier of its own
        self.classifier = HeadClass(head) if head.class_prior is not None else classifier
        self.labels, self.side = list(labels), list(side)
        self.ood = ood or {}
        self.holes = holes
        self.noise = noise  # the head reads noise_features (label models from before: not)
        #: {label: {label: [min, max]}}: each label's survey range among the stars that had
        #: the first (label_ranges; label models from before: None, no _extrapolated columns)
        self.ranges = ranges
        #: (source_id, validation) of the stars it was fitted on, ``validation`` True for
        #: those held out to calibrate: which stars may calibrate an ensemble of it
        #: (:meth:`xpsvae.labels.LabelEnsemble.calibrate`). None: not recorded (before).
        self.fitted: Optional[Tuple[np.ndarray, np.ndarray]] = None
        #: what it was fitted on: the table, its stars with a label, and per label how many
        self.data: Dict[str, object] = {}

    @classmethod
    def fit(cls, svae: SVAE, spectra: SpectraSet, labels: Sequence[str] = DEFAULT_LABELS,
            side: Sequence[str] = (), config: Optional[LabelHeadConfig] = None,
            device: str = "cpu", holes: bool = True) -> "LabelModel":
        """Fit a head on the stars of ``spectra`` that have at least one of ``labels``.

        Args:
            svae: a trained sVAE (its weights are not changed).
            spectra: stars with label columns, and ``<label>_err`` columns where
                the survey gives errors (taken as 0 where absent). Labels marked in
                ``<label>_pseudo`` columns (:func:`xpsvae.labels.pseudo.pseudo_labels`)
                only train; the validation share is its ``label_calibration`` stars,
                or, without that column, drawn from the other stars; never a star whose
                labels the sVAE learnt (:mod:`xpsvae.labels.validation`).
            labels: label columns to learn.
            side: optional side columns (``j-h``: a difference of two columns).
            config: the head's recipe.
            device: where the sVAE runs.
            holes: measure what a partial spectrum's holes cost its labels
                (:mod:`xpsvae.labels.holes`; a few passes of the sVAE more). Without it, a
                partial star is still flagged, but its sigma is the head's alone.
        """
        source = spectra.accounting.source if spectra.accounting else "the stars given"
        table = spectra.labels if spectra.labels is not None else pd.DataFrame(index=range(0))
        missing = [name for name in labels if name not in table]
        if missing:
            raise SpectraError(f"{source}: no label column {missing[0]!r}; columns present: "
                               f"{sorted(table.columns)[:20]}")
        y, y_err = label_columns(table, labels)
        labelled = np.isfinite(y).any(axis=1) & spectra.observed.all(axis=1)
        if labelled.sum() < 50:
            raise SpectraError(f"{source}: {int(labelled.sum())} complete stars have one of "
                               f"{list(labels)}; a label model needs at least 50")
        stars = spectra.subset(np.flatnonzero(labelled))
        # pseudo-labels (xpsvae.labels.pseudo) train; survey labels alone calibrate
        survey = surveyed(table, labels, len(table), source)[labelled]
        calibrating = calibration_marks(table, source)
        config = config or LabelHeadConfig()
        tuned = config.tunes_encoder  # the head reads the spectrum, and tunes the encoder
        features = cls._features(svae, stars, side, source, device, noise=True, tuned=tuned)
        classes = None
        if {"fe_h", "alpha_m"} <= set(labels) and config.high_alpha:
            fe_h, alpha_m = (y[labelled, list(labels).index(n)] for n in ("fe_h", "alpha_m"))
            both = np.isfinite(fe_h) & np.isfinite(alpha_m) & survey
            truth = high_alpha(fe_h[both], alpha_m[both])
            if min(truth.sum(), (~truth).sum()) >= MIN_CLASS_STARS:
                classes = np.where(both, high_alpha(fe_h, alpha_m), np.nan)
            else:
                warnings.warn(f"{source}: no high_alpha_prob: {int(truth.sum())} high-alpha and "
                              f"{int((~truth).sum())} low-alpha stars have [Fe/H] and "
                              f"[alpha/M]; the classifier needs {MIN_CLASS_STARS} of each",
                              stacklevel=2)
        head = LabelHead(config)
        val = validation_share(head, stars, survey, None if calibrating is None
                               else calibrating[labelled], learnt_by(svae, stars), source)
        head.fit(features, y[labelled], y_err[labelled], classes, val,
                 encoder=svae.network.encoder if tuned else None)
        # the flag says "unlike the stars a survey labelled": pseudo-labels do not widen it
        ood_stars = stars if survey.all() else stars.subset(np.flatnonzero(survey))
        model = cls(svae, head, labels, side, _ood_thresholds(svae, ood_stars, device),
                    noise=True, ranges=label_ranges(y[labelled][survey], labels))
        model.fitted = (stars.source_id.copy(), np.asarray(val, dtype=bool))
        model.data = {"source": source, "n_stars": len(stars), "n_with_label": {
            name: int(np.isfinite(y[labelled, j]).sum()) for j, name in enumerate(labels)}}
        if not survey.all():
            model.data["n_pseudo_labelled"] = int((~survey).sum())
            model.data["n_calibration"] = int(val.sum())
        if holes:
            measured = np.flatnonzero(val)[:HOLE_STARS]
            if len(measured) < MIN_HOLE_STARS:
                warnings.warn(f"{source}: partial spectra's errors are not widened for their "
                              f"holes: {len(measured)} validation stars, where measuring "
                              f"that takes {MIN_HOLE_STARS}; fit on more labelled stars",
                              stacklevel=2)
            model.holes = HoleCost.measure(
                lambda holed: head.predict(cls._features(svae, holed, side, source, device,
                                                         noise=True, tuned=tuned)),
                stars.subset(measured), y[labelled][measured], y_err[labelled][measured])
        return model

    @staticmethod
    def _features(svae: SVAE, spectra: SpectraSet, side: Sequence[str], source: str,
                  device: str, noise: bool, tuned: bool = False) -> np.ndarray:
        # a tuned head (xpsvae.labels.tuned) runs its own copy of the encoder on the spectrum
        features = (tuned_inputs if tuned else svae_features)(svae, spectra, device)
        if noise:
            features = np.hstack([features, noise_features(spectra)])
        if not side:
            return features
        if spectra.labels is None:
            raise SpectraError(f"{source}: side columns {list(side)} asked for, but the table "
                               "has no columns besides the spectra")
        return np.hstack([features, side_columns(spectra.labels, side, source,
                                                 spectra.input_row)])

    def features(self, spectra: SpectraSet, device: str = "cpu") -> np.ndarray:
        """What the head reads of each star: the sVAE's features (the sVAE-standardised
        spectrum, for a head that tunes the encoder), the spectrum's noise (where the model
        reads it) and the side columns, (n, n_features) float."""
        source = spectra.accounting.source if spectra.accounting else "the stars given"
        return self._features(self.svae, spectra, self.side, source, device, self.noise,
                              tuned=self.head.config.tunes_encoder)

    def predict(self, spectra: SpectraSet, device: str = "cpu",
                scores: Optional[Dict[str, np.ndarray]] = None) -> pd.DataFrame:
        """Per star: ``source_id``, ``input_row``, each label, its ``_err`` (sigma), its
        central 68% interval ``_lower`` to ``_upper`` and ``_extrapolated`` (label models
        from before: neither), ``high_alpha_prob`` where the model has the classifier, and
        ``labels_ood``.

        ``scores``: this sVAE's :meth:`SVAE.score` of the same stars, where the caller has
        it already (the flag needs it; a catalogue saves a pass of the sVAE)."""
        features = self.features(spectra, device)
        # the head's class (high_alpha_prob) from the same pass of its ensemble
        mean, sigma, probability = self.head.predict_with_class(features)
        missing = ~(spectra.observed & np.isfinite(spectra.errors))
        if self.holes is not None and missing.any():
            sigma = np.sqrt(sigma ** 2 + self.holes.variance(missing))
        out = {"source_id": spectra.source_id, "input_row": spectra.input_row}
        k = self.head.interval_factor(mean)
        for j, name in enumerate(self.labels):
            out[name], out[f"{name}_err"] = mean[:, j], sigma[:, j]
            if k is not None:  # the central 68% interval (xpsvae.labels.calibration)
                out[f"{name}_lower"] = mean[:, j] - k[:, j] * sigma[:, j]
                out[f"{name}_upper"] = mean[:, j] + k[:, j] * sigma[:, j]
            if self.ranges is not None:
                out[f"{name}{EXTRAPOLATED}"] = outside(mean, self.labels, self.ranges[name])
        if self.classifier is not None:
            out[HIGH_ALPHA_COLUMN] = probability if probability is not None else \
                self.classifier.probability(features)  # a classifier of its own
        out["labels_ood"] = self.out_of_distribution(spectra, device, scores)
        return pd.DataFrame(out)

    @property
    def high_alpha_prior(self) -> Optional[float]:
        """Call a star high-alpha where ``high_alpha_prob`` exceeds this, the training
        stars' share of the class (None without the class)."""
        return None if self.classifier is None else float(self.classifier.prior)

    def columns(self) -> List[str]:
        """The columns :meth:`predict` adds to ``source_id`` and ``input_row``."""
        suffixes = ("", "_err") + (() if self.head.interval is None
                                   else ("_lower", "_upper")) + \
            (() if self.ranges is None else (EXTRAPOLATED,))
        return [f"{name}{suffix}" for name in self.labels for suffix in suffixes] + \
            ([HIGH_ALPHA_COLUMN] if self.classifier is not None else []) + ["labels_ood"]

    def out_of_distribution(self, spectra: SpectraSet, device: str = "cpu",
                            scores: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        """Per star, whether its anomaly score or its latent's Mahalanobis distance is
        beyond :data:`OOD_QUANTILE` of the training stars', or its spectrum is partial
        (module docstring; ``scores``: as for :meth:`predict`)."""
        if scores is None:
            scores = self.svae.score(spectra, device=device)
        distance = _mahalanobis(scores["latent_mean"], np.asarray(self.ood["latent_mean"]),
                                np.asarray(self.ood["latent_precision"]))
        return (scores["anomaly_score"] > self.ood["anomaly_score"]) | \
            (distance > self.ood["latent_distance"]) | \
            (scores["n_observed"] < spectra.n_inputs)

    # ------------------------------------------------------------------ files
    def save(self, directory: str) -> None:
        """The folder: ``svae/`` (the sVAE, copied), ``head.safetensors``, ``head.json``."""
        self.svae.save(os.path.join(directory, SVAE_FOLDER))
        meta = {"labels": self.labels, "side": self.side, "ood": self.ood, "data": self.data,
                "noise_features": self.noise}
        if self.ranges is not None:
            meta["label_ranges"] = self.ranges
        if self.holes is not None:
            meta["hole_variance"] = self.holes.to_json()
        extra = {}
        if isinstance(self.classifier, ClassHead):
            meta["high_alpha"] = self.classifier.meta()
            extra = self.classifier.arrays(_CLASS_PREFIX)
        elif self.classifier is not None:
            # the class the head learnt: its prior is the head's own (class_prior), kept once
            meta["high_alpha"] = {"boundary": HIGH_ALPHA_BOUNDARY}
        if self.fitted is not None:
            extra[_FITTED_IDS] = np.asarray(self.fitted[0], dtype=np.int64)
            extra[_FITTED_VALIDATION] = np.asarray(self.fitted[1], dtype=np.uint8)
        self.head.save(directory, meta, extra)

    @classmethod
    def pretrained(cls) -> "LabelModel":
        """The label model shipped with the package: Teff, log g, [Fe/H] and [alpha/M] from
        the spectrum alone, learnt from every labelled star of the embedded APOGEE library
        (docs/pretrained.md says how well, and where not to trust it)."""
        return cls.load(BUILTIN_MODEL)

    @classmethod
    def load(cls, directory: str) -> "LabelModel":
        """A folder :meth:`save` wrote, or ``builtin``: the shipped label model."""
        directory = model_folder(directory, BUILTIN_LABEL_MODEL_DIR)
        head_files(directory)  # a folder that is no label model is told so first
        svae = SVAE.load(os.path.join(directory, SVAE_FOLDER))
        head, meta, arrays = LabelHead.load(directory, svae.network.encoder)
        classifier = ClassHead.from_arrays(meta["high_alpha"], arrays, _CLASS_PREFIX) \
            if "config" in meta.get("high_alpha", {}) else None  # one of its own
        holes = HoleCost.from_json(meta["hole_variance"], len(meta["labels"]),
                                   f"{os.path.join(directory, HEAD_CONFIG)}: hole_variance") \
            if "hole_variance" in meta else None
        ranges = _ranges_from_json(meta["label_ranges"], meta["labels"],
                                   os.path.join(directory, HEAD_CONFIG)) \
            if "label_ranges" in meta else None
        model = cls(svae, head, meta["labels"], meta.get("side", []), meta["ood"], classifier,
                    holes, bool(meta.get("noise_features", False)), ranges)
        model.data = meta.get("data", {})  # label models from before: not recorded
        if _FITTED_IDS in arrays and _FITTED_VALIDATION in arrays:
            ids, val = arrays[_FITTED_IDS], arrays[_FITTED_VALIDATION]
            if ids.shape != val.shape or ids.ndim != 1:
                raise ModelFileError(f"{os.path.join(directory, HEAD_WEIGHTS)}: "
                                     f"{_FITTED_IDS} and {_FITTED_VALIDATION} must be two "
                                     f"arrays of one length; got {ids.shape} and {val.shape}; "
                                     "fit the label model again, or copy it whole")
            model.fitted = (ids.astype(np.int64), val.astype(bool))
        return model


def label_ranges(y: np.ndarray, labels: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """{label: {other label: [min, max]}}: the survey's range of each label (of ``y``,
    (n, L), NaN where a star lacks one) among the stars that have the first and it."""
    out = {}
    for j, name in enumerate(labels):
        out[name] = {}
        for i, other in enumerate(labels):
            both = np.isfinite(y[:, j]) & np.isfinite(y[:, i])
            if both.any():
                out[name][other] = [float(y[both, i].min()), float(y[both, i].max())]
    return out


def outside(predicted: np.ndarray, labels: Sequence[str],
            ranges: Dict[str, List[float]]) -> np.ndarray:
    """(n,) bool: whether any predicted label (``predicted``, (n, L)) lies outside its
    range in ``ranges`` (one label's entry of :func:`label_ranges`)."""
    out = np.zeros(len(predicted), dtype=bool)
    for i, other in enumerate(labels):
        if other in ranges:
            lo, hi = ranges[other]
            out |= (predicted[:, i] < lo) | (predicted[:, i] > hi)
    return out


def _ranges_from_json(ranges: object, labels: Sequence[str], path: str
                      ) -> Dict[str, Dict[str, List[float]]]:
    """head.json's ``label_ranges``, checked: every label, each range two ordered numbers."""
    fix = "; fit the label model again (xpsvae labels fit)"
    if not isinstance(ranges, dict) or set(ranges) != set(labels):
        raise ModelFileError(f"{path}: label_ranges must name each of {list(labels)}{fix}")
    for name, entry in ranges.items():
        for other, bounds in (entry.items() if isinstance(entry, dict) else [(None, None)]):
            if other not in labels or not (isinstance(bounds, list) and len(bounds) == 2 and
                                           all(isinstance(b, (int, float)) for b in bounds)
                                           and bounds[0] <= bounds[1]):
                raise ModelFileError(f"{path}: label_ranges[{name!r}] must map labels to "
                                     f"[min, max]; got {other!r}: {bounds!r}{fix}")
    return {name: {other: [float(b) for b in bounds] for other, bounds in entry.items()}
            for name, entry in ranges.items()}


def _ood_thresholds(svae: SVAE, stars: SpectraSet, device: str) -> Dict[str, object]:
    scores = svae.score(stars, device=device)
    latent = scores["latent_mean"].astype(np.float64)
    mean = latent.mean(axis=0)
    precision = np.linalg.inv(np.cov(latent, rowvar=False))
    distance = _mahalanobis(latent, mean, precision)
    return {"quantile": OOD_QUANTILE,
            "anomaly_score": float(np.quantile(scores["anomaly_score"], OOD_QUANTILE)),
            "latent_distance": float(np.quantile(distance, OOD_QUANTILE)),
            "latent_mean": mean.tolist(), "latent_precision": precision.tolist()}


def _mahalanobis(latent: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(latent, dtype=np.float64) - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", d, precision, d))
