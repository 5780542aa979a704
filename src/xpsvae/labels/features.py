"""What a label model sees of a star: the sVAE's view of its spectrum, and side columns.

The latent of an unsupervised sVAE (six numbers) holds far less about a
star's labels than its spectrum does: gradient-boosted trees on the latent
means reach 236 K in Teff, a plain MLP on the spectrum 62 K. The encoder's
hidden layers hold more (80, 50 and 30 units, learnt from every star; an sVAE
trained with labels, ``SVAE.fit(..., labels=...)``, puts more in both). So the
features are the output of every module of the encoder's hidden stack on the
star's spectrum (each linear map and each activation; holes filled in as for
encoding), the latent mean and the log of the latent standard deviation: 332
numbers from a model of the paper's size. The linear maps' outputs add what
the activations cut off; measured, they change the demo's figures by a few
per cent at most.

The encoder sees a standardised spectrum, not how noisy it is, so a faint
star and a bright one with the same shape look alike to it. Three numbers say
how noisy the spectrum is (:func:`noise_features`): the log10 of the median
signal-to-noise ratio |value| / error over the measured inputs, over the
bluest half and over the reddest half (about BP and RP). They let the head's
sigma grow for a faint star; on the demo's split they bring the share of
test stars within 1 sigma up to 5 points nearer 68.3% and leave the robust
sigma as it was (docs/labels.md).

Side columns are optional (an archive store has no 2MASS): any per-star
column of the input table, or a difference of two, written ``j-h``. A value
far from the rest of its column (:data:`FAR_OFF` robust sigmas) is most often a
catalogue's placeholder for "missing" (-9999, 99.999), which would be read as a
value: :func:`side_columns` warns, naming the column and rows.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import SpectraError
from ..io.spectra import SpectraSet
from ..model.network import LOGVAR_BOUND
from ..svae import SVAE

#: The columns of :func:`noise_features`.
NOISE_FEATURES = ("log_snr", "log_snr_blue_half", "log_snr_red_half")


def svae_features(model: SVAE, spectra: SpectraSet, device: str = "cpu") -> np.ndarray:
    """(n_stars, n_features) float32: the output of every module of the encoder's hidden
    stack, the latent mean and ln of the latent standard deviation, for each star."""
    (features,) = model.apply(lambda t: (encoder_features(model.network.encoder, t),),
                              spectra, device)
    return features.astype(np.float32)


def encoder_features(encoder: torch.nn.Sequential, spectrum: torch.Tensor) -> torch.Tensor:
    """:func:`svae_features` of standardised spectra, from an sVAE network's ``encoder`` (a
    hidden stack, then the linear map to the latent mean and log variance) or a copy."""
    outputs, t = [], spectrum
    for layer in encoder[0]:
        t = layer(t)
        outputs.append(t)  # each layer's output: the linear maps' and the activations'
    mean, logvar = encoder[1](t).chunk(2, dim=-1)  # as the network's encode() bounds it
    return torch.cat(outputs + [mean, 0.5 * logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)], -1)


def tuned_inputs(model: SVAE, spectra: SpectraSet, device: str = "cpu") -> np.ndarray:
    """(n_stars, n_inputs) float32: what a head that tunes the encoder reads in place of
    :func:`svae_features` (:mod:`xpsvae.labels.tuned`): each spectrum standardised as the
    sVAE's encoder reads it, its holes filled by the sVAE as for encoding."""
    (spectrum,) = model.apply(lambda t: (t,), spectra, device)
    return spectrum.astype(np.float32, copy=False)


def noise_features(spectra: SpectraSet) -> np.ndarray:
    """(n_stars, 3) float32: log10 of the median |value| / error over the measured inputs,
    the bluest half of the inputs and the reddest half (NaN where none is measured)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(spectra.values.astype(np.float64)) / spectra.errors
    ratio[~(np.isfinite(ratio) & (ratio > 0))] = np.nan  # unmeasured, or no signal to log
    half = spectra.n_inputs // 2
    out = np.full((len(spectra), len(NOISE_FEATURES)), np.nan)
    for j, part in enumerate((slice(None), slice(0, half), slice(half, None))):
        finite = np.isfinite(ratio[:, part])
        whole = finite.all(axis=1)  # most stars: the plain median, a few times faster
        out[whole, j] = np.log10(np.median(ratio[whole, part], axis=1))
        some = finite.any(axis=1) & ~whole
        out[some, j] = np.log10(np.nanmedian(ratio[some, part], axis=1))
    return out.astype(np.float32)


def feature_names(model: SVAE) -> List[str]:
    """Names of :func:`svae_features`' columns: ``<module>_<index>_<unit>``, then the latent
    (:data:`NOISE_FEATURES` name those of :func:`noise_features`)."""
    names = []
    for index, module in enumerate(model.network.encoder[0]):
        width = module.out_features if isinstance(module, torch.nn.Linear) else \
            len(names) and names[-1][1]
        names.append((f"{type(module).__name__.lower()}_{index}", width))
    d = model.config.latent_dim
    return [f"{name}_{i}" for name, width in names for i in range(width)] + \
        [f"latent_mean_{j}" for j in range(d)] + [f"latent_log_std_{j}" for j in range(d)]


#: Robust sigmas (1.4826 x MAD) from its column's median beyond which a side value is
#: taken for a placeholder and warned of. 2MASS colours of real stars lie within ~15.
FAR_OFF = 50.0
#: Values a column needs before its spread is judged.
MIN_JUDGED = 20


def side_columns(table: pd.DataFrame, names: Sequence[str], source: str,
                 rows: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, len(names)) float64 of per-star columns; ``a-b`` is column a minus column b.
    NaN where a value is missing (the label model fills it and says so). Warns of values
    :data:`FAR_OFF` robust sigmas from their column's median, naming them by ``rows``
    (the input's row numbers; default 0, 1, ...)."""
    out = []
    for name in names:
        parts = [p.strip() for p in name.split("-")] if "-" in name and name not in table \
            else [name]
        missing = [p for p in parts if p not in table]
        if missing:
            raise SpectraError(f"{source}: no column {missing[0]!r} for the side column "
                               f"{name!r}; columns present: {sorted(table.columns)[:20]}")
        column = np.asarray(table[parts[0]], dtype=np.float64)
        if len(parts) == 2:
            column = column - np.asarray(table[parts[1]], dtype=np.float64)
        elif len(parts) > 2:
            raise SpectraError(f"{name!r}: a side column is a column or a difference of two")
        _warn_far_off(column, name, source, rows)
        out.append(column)
    return np.column_stack(out) if out else np.zeros((len(table), 0))


def _warn_far_off(column: np.ndarray, name: str, source: str,
                  rows: Optional[np.ndarray]) -> None:
    """Warn where values lie :data:`FAR_OFF` robust sigmas from the column's median."""
    finite = column[np.isfinite(column)]
    if len(finite) < MIN_JUDGED:
        return
    median = np.median(finite)
    spread = 1.4826 * np.median(np.abs(finite - median))
    if spread == 0:
        return
    far = np.flatnonzero(np.abs(column - median) > FAR_OFF * spread)  # NaN: never
    if len(far):
        rows = np.arange(len(column)) if rows is None else np.asarray(rows)
        shown = ", ".join(f"row {int(rows[i])}: {column[i]:g}" for i in far[:5])
        warnings.warn(f"{source}: side column {name!r}: {len(far)} value"
                      f"{'s' if len(far) > 1 else ''} more than {FAR_OFF:g} robust sigmas "
                      f"from its median {median:.4g} ({shown}{', ...' if len(far) > 5 else ''})"
                      "; a placeholder for missing (-9999, 99.999) is read as a value: set "
                      "such values to NaN (the label model fills them with the training mean)",
                      stacklevel=3)
