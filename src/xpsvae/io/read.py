"""One entry point for spectra on disk: a table file or a store folder."""

from __future__ import annotations

import os

from ..core.errors import SpectraError
from .spectra import SpectraSet
from .store import Store
from .tables import read_table_columns, spectra_from_columns


def read_spectra(path: str | os.PathLike, progress: bool = False) -> SpectraSet:
    """Read a Parquet, FITS or HDF5 table of sampled spectra or XP coefficients.

    Args:
        path: the file. Parquet (``.parquet``, ``.pq``), FITS (``.fits``,
            ``.fit``, ``.fits.gz``) or HDF5 (``.h5``, ``.hdf5``); or a store
            folder written by ``xpsvae ingest``.
        progress: a progress bar over a store's shards.

    Returns:
        The validated :class:`SpectraSet`; its ``accounting`` says what was
        read, kept and set aside.

    Raises:
        SpectraError: unknown format, no recognised spectrum columns, empty
            table, or arrays of inconsistent length (naming the row).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SpectraError(f"{path}: no such file")
    if os.path.isdir(path):
        return Store(path).read_spectra(progress)
    columns = read_table_columns(path)
    return spectra_from_columns(columns, source=path)
