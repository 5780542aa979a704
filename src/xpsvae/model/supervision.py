"""Labels for semi-supervised training: survey label columns as training targets.

A model fitted with labels (``SVAE.fit(..., labels=[...])``) learns them from
its latent mean through a label head (:class:`xpsvae.model.network.LatentLabels`).
Here the table's label columns and their ``<label>_err`` become the trainer's
targets: standardised by the mean and standard deviation of the training
stars that have each label, with the survey's variance in the same units and
a mask of the labels each star has. A star without any label still trains
the sVAE; it adds nothing to the label term. Nor does a star marked in a
``label_calibration`` column (a table of ``xpsvae labels pseudo``): its labels
are held out to calibrate the label model fitted on this sVAE, and calibrated
on labels the sVAE had learnt, that model's sigma would come out too narrow.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from ..core.errors import SpectraError

#: A table's column marking the stars whose labels calibrate a label model: never trained on.
CALIBRATION_COLUMN = "label_calibration"


def true_or_false(table: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """(n,) bool: a column of True/False (or 1/0) marks, as ``xpsvae labels pseudo`` writes
    them. Anything else (a gap, a 2, a string) is refused, naming the row: read as a bool,
    it would silently count as True."""
    values = table[column]
    if values.dtype == bool:
        return values.to_numpy()
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isin(numbers, (0.0, 1.0)))
    if len(bad):
        value = values.iloc[bad[0]]
        value = value.item() if isinstance(value, np.generic) else value  # nan, not np.float64
        raise SpectraError(f"{source}: row {int(bad[0])}, column {column}: {value!r} "
                           f"({len(bad)} such rows); it must be True or False, as xpsvae "
                           "labels pseudo writes it")
    return numbers == 1.0


def label_columns(table: pd.DataFrame, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(values, errors), each (n, len(labels)) float64, of a table's label columns and
    their ``<label>_err`` columns (0 where a label has none; NaN where a star lacks one)."""
    y = np.column_stack([np.asarray(table[name], dtype=np.float64) for name in labels])
    y_err = np.column_stack([np.asarray(table[f"{name}_err"], dtype=np.float64)
                             if f"{name}_err" in table else np.zeros(len(table))
                             for name in labels])
    return y, y_err


def calibration_marks(table: Optional[pd.DataFrame], source: str = "the table"
                      ) -> Optional[np.ndarray]:
    """(rows,) bool: the calibration stars a ``label_calibration`` column marks (a table of
    :func:`xpsvae.labels.pseudo.pseudo_labels`), whose labels the label term leaves out
    and a label model calibrates on; None where the table has no such column."""
    if table is None or CALIBRATION_COLUMN not in table:
        return None
    return true_or_false(table, CALIBRATION_COLUMN, source)


def label_targets(table: pd.DataFrame, labels: Sequence[str], rows: np.ndarray,
                  source: str, all_rows: np.ndarray, min_stars: int = 10
                  ) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                             np.ndarray, np.ndarray]:
    """The trainer's label targets for the stars ``rows`` of ``table``, standardised by
    the statistics of ``all_rows`` (every rank's training stars, under torchrun, so that
    all ranks share them).

    Returns:
        ``(y, y_var, has)`` float32/float32/bool tensors (len(rows), L) in standardised
        label units (0 where a star lacks a label), and the labels' mean and standard
        deviation over the stars that have them.

    Raises:
        SpectraError: a label column is absent, or fewer than ``min_stars`` training
            stars have a label.
    """
    if table is None or any(name not in table for name in labels):
        present = [] if table is None else sorted(table.columns)[:20]
        missing = [name for name in labels if table is None or name not in table]
        raise SpectraError(f"{source}: no label column {missing[0]!r} to train with; "
                           f"columns present: {present}")
    held = calibration_marks(table, source)
    if held is None:
        held = np.zeros(len(table), dtype=bool)
    every, _ = label_columns(table.iloc[all_rows], labels)
    every[held[all_rows]] = np.nan  # the calibration stars' labels: held out (above)
    counts = np.isfinite(every).sum(axis=0)
    if (counts < min_stars).any():
        thin = [name for name, k in zip(labels, counts) if k < min_stars]
        raise SpectraError(f"{source}: only {dict(zip(labels, counts.tolist()))} training "
                           f"stars have each label; {thin} need at least {min_stars}")
    known = [every[np.isfinite(every[:, j]), j] for j in range(every.shape[1])]
    mean, std = np.array([k.mean() for k in known]), np.array([k.std() for k in known])
    std[~(std > 0)] = 1.0
    y, y_err = label_columns(table.iloc[rows], labels)
    y[held[rows]] = np.nan
    y_err = np.where(np.isfinite(y_err), y_err, 0.0)  # a label without an error: error 0
    has = np.isfinite(y)
    ys = np.where(has, (y - mean) / std, 0.0)
    var = (y_err / std) ** 2
    return ((torch.from_numpy(ys.astype(np.float32)), torch.from_numpy(var.astype(np.float32)),
             torch.from_numpy(has)), mean, std)
