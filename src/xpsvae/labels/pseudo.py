"""Pseudo-labels: labels for the stars a survey did not observe, to train with few labels.

With a few thousand labelled stars among many more spectra, the sVAE trained
with the labels (``SVAE.fit(..., labels=...)``) sees too few of them for its
latent to learn them, and a label model on it does worse than a supervised MLP
on the same stars (docs/labels.md, "The semi-supervised claim"). Pseudo-labels
close that, in three steps (self-training with a "teacher", as in Lee 2013 and
Xie et al. 2020's noisy student):

1. :func:`pseudo_labels` fits a *teacher*, the label head
   (:mod:`xpsvae.labels.head`) on the standardised spectrum and any side
   columns, on the complete stars that have labels: a supervised MLP. (With
   the noise features that the label model reads as well, it did worse at
   1,000 labels, most in [alpha/M]: 0.053 dex against 0.050.) It predicts
   each label, with its calibrated sigma as the label's error, for every
   complete star that lacks it. A survey label is never replaced; a partial
   spectrum gets none. A tenth of the complete survey-labelled stars (the
   head's ``val_fraction``) are set aside first, the *calibration stars*
   (column ``label_calibration``): they are the teacher's validation share,
   which fits its sigma scale but does not teach it.
2. The sVAE trains with all the labels but the calibration stars'
   (``xpsvae train --labels --label-table``, or ``SVAE.fit`` of the table
   :func:`with_labels` gives: :func:`~xpsvae.model.supervision.label_targets`
   leaves out the stars marked in ``label_calibration``). The teacher's sigma
   enters its label term as a survey error would, so a label the teacher is
   unsure of weighs less.
3. A label model is fitted on that sVAE with all the labels
   (:meth:`LabelModel.fit <xpsvae.labels.model.LabelModel.fit>`). It holds out
   the calibration stars, so its sigma scale, its interval and the cost of
   holes are fitted on survey labels that neither the teacher nor the sVAE
   learnt; its high-alpha class learns from survey labels alone. (Held out
   from the head alone, survey stars whose labels the sVAE had learnt gave
   residuals far smaller than new stars': at 1,000 labels, 85% of the test
   stars fell within 2 sigma in Teff, std z 6.6.)

The teacher alone, trained again on its own pseudo-labels, gains nothing; the
sVAE, which reads every spectrum, turns them into labels better than the
teacher's on every label at 1,000 and 4,000 labelled stars (docs/labels.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..core.errors import SpectraError
from ..io.spectra import SpectraSet
from ..model.preprocess import Standardizer
from ..model.supervision import CALIBRATION_COLUMN, label_columns, true_or_false
from .features import side_columns
from .head import LabelHead, LabelHeadConfig
from .validation import apart_from_training

#: Suffix of the bool column that marks a label as the teacher's, not the survey's.
PSEUDO_SUFFIX = "_pseudo"
#: Fewest complete stars with a label for a teacher (its validation share is a tenth).
MIN_TEACHER_STARS = 100


def teacher_epochs(n_labelled: int) -> int:
    """Epochs for a teacher fitted on ``n_labelled`` stars: about 2,500 steps of 256 stars
    (40 epochs of 16,000 stars), between 40 and 400 epochs. The head's 40 epochs are
    too few for 1,000 stars: 160 steps."""
    return max(40, min(400, 40 * 16000 // max(n_labelled, 1)))


class Teacher:
    """The label head on the standardised spectrum and side columns: a supervised MLP,
    whose labels fill those the survey lacks (module docstring)."""

    def __init__(self, labels: Sequence[str], side: Sequence[str] = (),
                 config: Optional[LabelHeadConfig] = None, epochs: Optional[int] = None):
        """``config``: the head's recipe (default: the head's); its epochs are ``epochs``,
        or, where None, :func:`teacher_epochs` of the stars it is fitted on."""
        self.labels, self.side = list(labels), list(side)
        self.config, self.epochs = config or LabelHeadConfig(), epochs
        self.standardizer: Optional[Standardizer] = None
        self.head: Optional[LabelHead] = None

    def features(self, spectra: SpectraSet, source: str) -> np.ndarray:
        values = np.where(spectra.observed, spectra.values, 0.0)
        if self.standardizer is None:  # fitting: on the complete stars
            self.standardizer = Standardizer.fit(values, np.flatnonzero(_complete(spectra)))
        features = self.standardizer.transform(values)
        if not self.side:
            return features
        return np.hstack([features, side_columns(_table(spectra), self.side, source,
                                                 spectra.input_row)])

    def fit(self, spectra: SpectraSet, calibration: Optional[np.ndarray] = None
            ) -> "Teacher":
        """Fit on the complete stars of ``spectra`` that have a label (each label learns
        from the stars that have it: a hot star with Teff but no [Fe/H] still teaches
        Teff). Those that ``calibration`` marks ((n,) bool) are its head's validation
        share: they fit its sigma scale, but it does not learn from them (None: the head
        draws its own).

        Raises:
            SpectraError: a label column is absent, or fewer than
                :data:`MIN_TEACHER_STARS` complete stars have one of the labels.
        """
        source = _source(spectra)
        y, y_err = _labels(spectra, self.labels, source)
        teach = _complete(spectra) & np.isfinite(y).any(axis=1)
        if teach.sum() < MIN_TEACHER_STARS:
            raise SpectraError(f"{source}: {int(teach.sum())} complete stars have one of "
                               f"{self.labels}; a teacher needs {MIN_TEACHER_STARS}")
        self.config = replace(self.config, epochs=self.epochs or teacher_epochs(int(teach.sum())))
        features = self.features(spectra, source)
        val = None if calibration is None else np.asarray(calibration, dtype=bool)[teach]
        self.head = LabelHead(self.config).fit(features[teach], y[teach], y_err[teach],
                                               validation=val)
        return self

    def predict(self, spectra: SpectraSet) -> Tuple[np.ndarray, np.ndarray]:
        """(labels, sigma), each (n, L): the head's (meaningless for a partial spectrum)."""
        return self.head.predict(self.features(spectra, _source(spectra)))

    def pseudo_labels(self, spectra: SpectraSet) -> pd.DataFrame:
        """:func:`pseudo_labels` of ``spectra`` from this fitted teacher."""
        y, y_err = _labels(spectra, self.labels, _source(spectra))
        fill = np.flatnonzero(_complete(spectra) & ~np.isfinite(y).all(axis=1))
        guess, sigma = self.predict(spectra.subset(fill)) if len(fill) else \
            (np.zeros((0, len(self.labels))),) * 2
        out = {"source_id": spectra.source_id, "input_row": spectra.input_row}
        for j, name in enumerate(self.labels):
            pseudo = np.zeros(len(y), dtype=bool)
            pseudo[fill] = ~np.isfinite(y[fill, j])
            value, err = y[:, j].copy(), y_err[:, j].copy()
            value[pseudo], err[pseudo] = guess[pseudo[fill], j], sigma[pseudo[fill], j]
            out[name], out[f"{name}_err"], out[f"{name}{PSEUDO_SUFFIX}"] = value, err, pseudo
        return pd.DataFrame(out)


def pseudo_labels(spectra: SpectraSet, labels: Sequence[str], side: Sequence[str] = (),
                  config: Optional[LabelHeadConfig] = None,
                  epochs: Optional[int] = None) -> pd.DataFrame:
    """The stars' labels, with a :class:`Teacher`'s where the survey has none (module
    docstring).

    Args:
        spectra: stars with the label columns (NaN where a star lacks a label) and
            ``<label>_err`` where the survey gives errors.
        labels: label columns.
        side: optional side columns for the teacher (``j-h``: a difference of two).
        config, epochs: the teacher's recipe (:class:`Teacher`).

    Returns:
        One row per star: ``source_id``, ``input_row``, per label its value,
        ``<label>_err`` and ``<label>_pseudo`` (True where the value is the teacher's),
        and ``label_calibration`` (True for the calibration stars).
    """
    teacher = Teacher(labels, side, config, epochs)
    calibration = calibration_stars(spectra, labels, teacher.config)
    table = teacher.fit(spectra, calibration).pseudo_labels(spectra)
    table[CALIBRATION_COLUMN] = calibration
    return table


def calibration_stars(spectra: SpectraSet, labels: Sequence[str],
                      config: LabelHeadConfig) -> np.ndarray:
    """(n,) bool: ``config.val_fraction`` of the complete stars that have every label,
    drawn from ``config.seed``, less any whose Gaia source another star shares
    (:func:`~xpsvae.labels.validation.apart_from_training`): survey labels that only calibrate
    (module docstring)."""
    y, _ = _labels(spectra, labels, _source(spectra))
    drawn = LabelHead(config).validation(len(spectra),
                                         _complete(spectra) & np.isfinite(y).all(axis=1))
    return apart_from_training(drawn, spectra.source_id)


def _source(spectra: SpectraSet) -> str:
    return spectra.accounting.source if spectra.accounting else "the stars given"


def _table(spectra: SpectraSet) -> pd.DataFrame:
    return spectra.labels if spectra.labels is not None else \
        pd.DataFrame(index=range(len(spectra)))


def _complete(spectra: SpectraSet) -> np.ndarray:
    return spectra.observed.all(axis=1) & np.isfinite(spectra.errors).all(axis=1)


def _labels(spectra: SpectraSet, labels: Sequence[str], source: str
            ) -> Tuple[np.ndarray, np.ndarray]:
    table = _table(spectra)
    missing = [name for name in labels if name not in table]
    if missing:
        raise SpectraError(f"{source}: no label column {missing[0]!r} to learn; columns "
                           f"present: {sorted(table.columns)[:20]}")
    return label_columns(table, labels)


def with_labels(spectra: SpectraSet, labels: pd.DataFrame, source: str) -> SpectraSet:
    """``spectra`` with its label columns taken from ``labels`` (what
    :func:`pseudo_labels` gave for the same table, e.g. read from a file ``source``):
    matched by ``input_row``, and its ``source_id`` checked where both have one. The
    sVAE trains on it without the calibration stars' labels; the label model holds
    them out."""
    if "input_row" not in labels:
        raise SpectraError(f"{source}: no input_row column; is it a table of "
                           "xpsvae labels pseudo?")
    rows = np.asarray(labels["input_row"], dtype=np.int64)
    where = pd.Index(rows).get_indexer(spectra.input_row)
    if (where < 0).any():
        first = int(spectra.input_row[np.flatnonzero(where < 0)[0]])
        raise SpectraError(f"{source}: no row for input row {first} of the spectra "
                           f"(spectra rows it lacks: {int((where < 0).sum())}); make it again with "
                           "xpsvae labels pseudo from the same table")
    if spectra.source_id is not None and "source_id" in labels:
        ids = np.asarray(labels["source_id"], dtype=np.int64)[where]
        wrong = np.flatnonzero(ids != spectra.source_id)
        if len(wrong):
            raise SpectraError(f"{source}: row {int(where[wrong[0]])}, column source_id: "
                               f"{int(ids[wrong[0]])}, where input row "
                               f"{int(spectra.input_row[wrong[0]])} of the spectra is "
                               f"{int(spectra.source_id[wrong[0]])}; it was made from "
                               "another table")
    columns = [c for c in labels.columns if c not in ("source_id", "input_row")]
    table = _table(spectra).copy()
    for name in columns:
        marks = name == CALIBRATION_COLUMN or name.endswith(PSEUDO_SUFFIX)
        table[name] = (true_or_false(labels, name, source) if marks
                       else np.asarray(labels[name]))[where]
    return replace(spectra, labels=table)


def surveyed(table: Optional[pd.DataFrame], labels: Sequence[str], n: int,
             source: str = "the table") -> np.ndarray:
    """(n,) bool: the stars none of whose ``labels`` is a pseudo-label (all, where the table
    has no ``<label>_pseudo`` column)."""
    out = np.ones(n, dtype=bool)
    for name in labels:
        column = f"{name}{PSEUDO_SUFFIX}"
        if table is not None and column in table:
            out &= ~true_or_false(table, column, source)
    return out
