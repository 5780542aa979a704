"""Constants shared across xpsvae: Gaia's conventions, the table layouts it reads, the
names of the model's options. Only numpy is imported here (no PyTorch, no pyarrow), so
that every command can read them cheaply."""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

# --------------------------------------------------------------------------- Gaia DR3 XP

#: The two XP bands, in the order xpsvae stacks them (BP first).
BANDS = ("bp", "rp")


def no_band(band: str) -> str:
    """The reason a row with ``band`` missing whole is partial, in every account."""
    return f"no {band.upper()} spectrum"
#: Basis function set ids of Gaia DR3 (BP, RP); others are refused.
DR3_BASIS_IDS = {"bp": {56}, "rp": {57}}
#: GaiaXPy's default sampling: 336-1020 nm in 2 nm steps (343 samples).
GAIAXPY_DEFAULT_GRID_NM = np.arange(336.0, 1020.0 + 1.0, 2.0)
#: DR3 G-band zero point (Riello et al. 2021): flux in e-/s = 10**(-0.4 (G - ZP)).
G_ZERO_POINT = 25.6874
#: Units of GaiaXPy's sampled flux, and of :mod:`xpsvae.flux`'s.
FLUX_UNITS = "W m^-2 nm^-1"
#: Where a store row's G flux came from: gaia_source (by the codes of
#: :func:`xpsvae.ingestion.gflux.read_g_flux`), else synthetic from the spectrum.
G_ORIGINS = ("phot_g_mean_flux", "phot_g_mean_mag")
SYNTHETIC_G_ORIGIN = "synthetic G (GaiaXPy Gaia_DR3_Vega)"
SYNTHETIC_G_SAMPLED_ORIGIN = "synthetic G (GaiaXPy Gaia_DR3_Vega, from sampled flux)"

# --------------------------------------------------------------------------- table layouts

SOURCE_ID_COLUMNS = ("source_id", "gaiadr3_source_id", "gaiaedr3_source_id", "sourceId")
SAMPLED_COLUMNS = ("flux", "flux_error")
COEFFICIENT_COLUMNS = ("bp_coefficients", "bp_coefficient_errors",
                       "rp_coefficients", "rp_coefficient_errors")
#: The flattened coefficient layout (``bp_coeff_0``, ``e_rp_coeff_54``): error?, band, index.
FLAT_COEFFICIENT = re.compile(r"^(e_)?(bp|rp)_coeff_(\d+)$")

#: Table formats by the file name's ending (the archive's, compressed as it serves them).
FILE_KINDS = {".avro": "avro", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
              ".fit.gz": "fits", ".xml": "votable", ".vot": "votable", ".votable": "votable",
              ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv",
              ".ecsv": "csv", ".ecsv.gz": "csv", ".h5": "hdf5", ".hdf5": "hdf5",
              ".he5": "hdf5"}
#: The kinds ``xpsvae ingest`` reads (the archive's formats) ...
ARCHIVE_KINDS = ("avro", "fits", "votable", "parquet", "csv")
#: ... and those :func:`xpsvae.read_spectra` reads as one table in memory.
TABLE_KINDS = ("parquet", "fits", "hdf5")


def file_kind(path: str) -> Optional[str]:
    """A file's table format by its name (a key of :data:`FILE_KINDS`'s values), or None."""
    name = str(path).lower()
    for suffix in sorted(FILE_KINDS, key=len, reverse=True):  # ".fits.gz" before ".gz"
        if name.endswith(suffix):
            return FILE_KINDS[suffix]
    return None


def suffixes_of(kinds) -> tuple:
    """The file name endings of the given kinds."""
    return tuple(s for s, k in FILE_KINDS.items() if k in kinds)


# --------------------------------------------------------------------------- model options
# The command line offers these as choices; keeping them here lets commands that never
# touch the model (``xpsvae ingest``) start without importing PyTorch.

ACTIVATION_NAMES = ("gelu", "relu", "silu", "tanh")
NORMS = ("none", "batch", "layer")
SCATTER_MAPS = ("softplus", "exp", "sigmoid")
LOSS_FORMS = ("paper", "elbo")
#: The named training recipes (``TrainConfig.preset``); the first is the default.
RECIPES = ("fast", "long", "paper")

# --------------------------------------------------------------------------- the package
#: xpsvae's version, written into every store's and model's files.
VERSION = "0.1.0"
