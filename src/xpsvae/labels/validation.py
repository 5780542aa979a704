"""Which labelled stars calibrate a label model: its validation share.

A label model's sigma scale, its 68% interval and the cost of holes are fitted on stars
it holds out (:mod:`xpsvae.labels.calibration`), and they are honest only where those
stars are as new to the model as the stars it will label. So a star is never held out
whose labels were learnt anyway:

* by the sVAE: an sVAE trained with labels records the stars whose labels it did not
  learn (its own validation share, and a pseudo-label table's calibration stars), and
  the label model draws its share from those and from stars the sVAE never saw;
  on the sVAE's own table, its share is the sVAE's, whatever the head's seed;
* through a twin: a Gaia source under two survey entries has one spectrum and labels
  alike, so with one copy training the other is not held out.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from ..io.spectra import SpectraSet
from ..svae import SVAE
from .head import LabelHead


def apart_from_training(held_out: np.ndarray, source_id: np.ndarray) -> np.ndarray:
    """``held_out`` (bool, one per star) less the stars whose ``source_id`` a star not held
    out shares: a Gaia source under two survey entries has one spectrum and labels alike,
    so with one copy training the other is not held out (the APOGEE library holds 325
    sources twice; 50 of the demo's 3,620 validation stars were such)."""
    held_out = np.asarray(held_out, dtype=bool)
    return held_out & ~np.isin(source_id, source_id[~held_out])


def learnt_by(svae: SVAE, stars: SpectraSet) -> Optional[np.ndarray]:
    """Per star, whether ``svae`` learnt its labels (trained with labels, on it, not held
    out); None where the sVAE does not record which stars it held out (trained before it
    did, or the table has no source_id)."""
    if not svae.config.labels or not svae.train_config.label_weight > 0:
        return np.zeros(len(stars), dtype=bool)
    if svae.held_out_source_ids is None or stars.source_id is None:
        return None
    return np.isin(stars.source_id, svae.training_source_ids) \
        & ~np.isin(stars.source_id, svae.held_out_source_ids)


def validation_share(head: LabelHead, stars: SpectraSet, survey: np.ndarray,
                     calibrating: Optional[np.ndarray], learnt: Optional[np.ndarray],
                     source: str) -> np.ndarray:
    """The stars the head holds out to calibrate its sigma (bool per star): the
    ``label_calibration`` stars where given, else the head's validation share of the
    stars a survey labelled. Never a star whose labels the sVAE learnt (``learnt``, from
    :func:`learnt_by`; None: not recorded, and the head draws by its seed alone), nor one
    whose Gaia source a training star shares. On the sVAE's own table the share is then
    the sVAE's validation share."""
    if learnt is None or not learnt.any():
        val = head.validation(len(stars), None if survey.all() else survey) \
            if calibrating is None else calibrating
        return apart_from_training(val, stars.source_id)
    if calibrating is not None:
        if (calibrating & learnt).any():
            warnings.warn(f"{source}: {int((calibrating & learnt).sum())} of the "
                          f"{int(calibrating.sum())} label_calibration stars train the head "
                          "instead: the sVAE learnt their labels", stacklevel=3)
        return apart_from_training(calibrating & ~learnt, stars.source_id)
    wanted, pool = int(head.config.val_fraction * survey.sum()), survey & ~learnt
    if pool.sum() < wanted / 2:
        warnings.warn(f"{source}: the sVAE learnt the labels of all but {int(pool.sum())} of "
                      f"the table's {int(survey.sum())} labelled stars, and the label model's "
                      f"sigma is calibrated on {'them' if pool.any() else 'stars it learnt'}, "
                      f"where {wanted} were wanted; fit it on a table with stars the sVAE did not "
                      "train on (or train the sVAE with a --val-fraction)", stacklevel=3)
    if not pool.any():
        return apart_from_training(head.validation(len(stars), survey), stars.source_id)
    return apart_from_training(head.validation(len(stars), pool, wanted), stars.source_id)
