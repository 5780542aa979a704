"""Spectra on disk made into the inputs a model was trained on: its input contract.

Every model records what it was trained on (``config.json``'s ``info``): the
kind of its inputs (Gaia's ``coefficients`` or ``sampled`` flux), the
wavelength grid of sampled flux, and how brightness was removed (divided by
``phot_g_mean_flux``, or by the star's median flux as in the embedded
library). :func:`read_for_model` reads a table or a store's shard into those
inputs, converting what can be converted and refusing, by name, what cannot:

==================  ==================  =====================================================
input               model               what happens
==================  ==================  =====================================================
coefficients        coefficients        divided by G, as the model was (the paper's Section 2.1)
coefficients        sampled             sampled on the model's grid with the coefficients' full
                                        covariance propagated into the errors
                                        (:class:`~xpsvae.flux.XPSampler`), then normalised
sampled, same grid  sampled             normalised as the model was
sampled, other grid sampled             refused: resampling would invent correlated errors
sampled             coefficients        refused: Gaia's coefficients cannot be recovered
==================  ==================  =====================================================
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np

from .core.constants import BANDS, GAIAXPY_DEFAULT_GRID_NM, SAMPLED_COLUMNS, no_band
from .core.errors import SpectraError
from .core.files import MANIFEST, is_shard_name
from .flux import XPSampler
from .io.columns import column_to_1d, column_to_2d
from .io.read import read_spectra
from .io.spectra import SpectraSet
from .io.store import Store
from .io.tables import read_table_columns, spectra_from_columns

#: How a spectrum divided by its own median flux says so (the embedded library's
#: ``medflux`` convention, and what :func:`read_for_model` writes).
MEDIAN = "median of the sampled flux"
MEDIAN_NAMES = (MEDIAN, "medflux (applied upstream)")


def contract(info: dict, n_inputs: int) -> dict:
    """A model's input contract from its recorded ``info`` and input count."""
    grid = info.get("wavelength_nm")
    return {"kind": info.get("kind") or "coefficients", "n_inputs": n_inputs,
            "wavelength_nm": None if grid is None else np.asarray(grid, dtype=np.float64),
            "normalisation": info.get("normalisation") or "phot_g_mean_flux"}


def read_for_model(path: str, wanted: dict) -> SpectraSet:
    """A table file, or a shard of a store, as the inputs of a model of contract ``wanted``.

    Raises:
        SpectraError: what cannot be made into the model's inputs, saying why and what
            would work.
    """
    store = Store(os.path.dirname(os.path.abspath(path))) if _is_store_shard(path) else None
    columns = None  # a table file's, read once
    if store is not None:
        kind = store.kind
    else:
        if not os.path.exists(path):
            raise SpectraError(f"{path}: no such file")
        columns = read_table_columns(path)
        kind = "sampled" if all(c in columns for c in SAMPLED_COLUMNS) else "coefficients"
    if wanted["kind"] == "sampled" and kind == "coefficients":
        spectra = _sampled_from_coefficients(
            path, wanted, read_table_columns(path) if columns is None else columns)
    else:
        spectra = store.read_shard(path, allow_empty=True) if store is not None \
            else spectra_from_columns(columns, source=path)
        if spectra.kind != wanted["kind"]:
            raise SpectraError(f"{path}: sampled spectra, but the model takes Gaia's "
                               "coefficients, which cannot be recovered from sampled flux: "
                               "encode the archive's coefficients (xpsvae ingest), or use a "
                               "model of sampled spectra")
        if kind == "sampled":
            _check_grid(path, spectra.wavelength_nm, spectra.n_inputs, wanted)
            spectra = _normalised(spectra, wanted, path)
    if spectra.n_inputs != wanted["n_inputs"]:
        raise SpectraError(f"{path}: {spectra.n_inputs} inputs, the model takes "
                           f"{wanted['n_inputs']}")
    return spectra


def read_path_for_model(path: str, wanted: dict, progress: bool = False) -> SpectraSet:
    """A table file or store shard made into the model's inputs (:func:`read_for_model`),
    or a store folder read whole (:func:`~xpsvae.io.read.read_spectra`; its spectra must
    already be of the model's kind and width, which the model checks)."""
    if os.path.isdir(path):
        return read_spectra(path, progress=progress)
    return read_for_model(path, wanted)


def as_spectra(spectra, errors=None, what: str = "training",
               wanted: Optional[dict] = None) -> SpectraSet:
    """A :class:`SpectraSet` from one, from arrays (``spectra`` and ``errors``), or, given a
    model's contract ``wanted``, from a table file or a store's shard (:func:`read_for_model`)."""
    if isinstance(spectra, SpectraSet):
        return spectra
    if isinstance(spectra, (str, os.PathLike)):
        if wanted is None:
            raise SpectraError(f"{what} takes spectra in memory (read_spectra), not a path")
        return read_for_model(os.fspath(spectra), wanted)
    if errors is None:
        raise SpectraError(f"{what} needs errors: pass a SpectraSet or (values, errors)")
    return SpectraSet.from_arrays(spectra, errors)


def _is_store_shard(path: str) -> bool:
    return is_shard_name(path) and \
        os.path.exists(os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST))


def _check_grid(path: str, grid: Optional[np.ndarray], n: int, wanted: dict) -> None:
    model_grid = wanted["wavelength_nm"]
    if model_grid is None:
        return  # a model that recorded no grid takes any of its length
    if grid is None and n == len(model_grid):
        return  # no grid said: the length is all there is to check
    if grid is None or len(grid) != len(model_grid) or not np.allclose(grid, model_grid):
        said = "no grid" if grid is None else \
            f"{len(grid)} samples, {grid[0]:g}-{grid[-1]:g} nm"
        raise SpectraError(
            f"{path}: sampled on another grid ({said}) than the model's ({len(model_grid)} "
            f"samples, {model_grid[0]:g}-{model_grid[-1]:g} nm); resampling would invent "
            "correlated errors: sample the archive's coefficients onto the model's grid "
            "instead (encode the store of coefficients), or train a model on this grid")


def _normalised(spectra: SpectraSet, wanted: dict, path: str) -> SpectraSet:
    """Sampled spectra divided as the model's were: by their median flux, where that is the
    model's way (any earlier per-star scale cancels), else they must agree already."""
    if wanted["normalisation"] in MEDIAN_NAMES:
        if spectra.normalisation in MEDIAN_NAMES:
            return spectra
        # the median of the measured samples; a partial spectrum's is refined by the model
        # as it encodes it (xpsvae.model.partial.median_scale)
        median = _median_of_measured(spectra.values)
        good = median > 0
        values = np.where(good[:, None], spectra.values / np.where(good, median, 1)[:, None],
                          np.nan)
        errors = spectra.errors / np.where(good, median, 1)[:, None]
        return SpectraSet.from_arrays(values, errors, spectra.source_id, "sampled",
                                      spectra.wavelength_nm, spectra.labels, path, MEDIAN,
                                      [(~good, "non-positive median flux")])
    if spectra.normalisation != wanted["normalisation"]:
        raise SpectraError(f"{path}: spectra divided by {spectra.normalisation}, the model's "
                           f"by {wanted['normalisation']}: give it spectra normalised as it "
                           "was trained")
    return spectra


@functools.lru_cache(maxsize=2)
def _sampler(grid: tuple):
    """One sampler per grid and process: GaiaXPy's matrices are read once."""
    on_default = len(grid) == len(GAIAXPY_DEFAULT_GRID_NM) and \
        np.allclose(grid, GAIAXPY_DEFAULT_GRID_NM)
    return XPSampler(None if on_default else np.asarray(grid))


def _sampled_from_coefficients(path: str, wanted: dict, columns: dict) -> SpectraSet:
    """Gaia's coefficients (a table's ``columns``) sampled onto the model's grid, errors
    from their covariance."""
    for band in BANDS:
        if f"{band}_coefficient_correlations" not in columns:
            raise SpectraError(f"{path}: no {band}_coefficient_correlations, so the flux "
                               "errors cannot be propagated from the coefficients; ingest the "
                               "archive's full records (they carry them)")
    n = len(column_to_1d(columns["source_id"]))
    problems, bands, absent = [], [], []
    for band in BANDS:
        missing = column_to_1d(columns[f"{band}_missing"]).astype(bool) \
            if f"{band}_missing" in columns else np.zeros(n, bool)
        absent.append((missing, no_band(band)))
        name = f"{band}_coefficient_correlations"
        lacking = np.flatnonzero(_null_rows(columns[name]) & ~missing)
        if len(lacking):  # the band measured, its correlations not given (a flattened table)
            row = int(column_to_1d(columns["input_row"])[lacking[0]]) \
                if "input_row" in columns else int(lacking[0])
            raise SpectraError(f"{path}: input row {row}, column {name}: empty (its input "
                               f"file gave no correlations; {len(lacking)} of {n} rows "
                               "lack them), so the flux errors cannot be propagated from "
                               "the coefficients; ingest the archive's full records (they "
                               "carry them)")
        bands.append(tuple(np.nan_to_num(column_to_2d(columns[f"{band}_{name}"], path,
                                                      f"{band}_{name}"))
                           for name in ("coefficients", "coefficient_errors",
                                        "coefficient_correlations")))
    grid = wanted["wavelength_nm"] if wanted["wavelength_nm"] is not None \
        else GAIAXPY_DEFAULT_GRID_NM
    sampler = _sampler(tuple(grid))
    flux, error = sampler.flux_and_error(*bands)
    # a band missing: the samples it contributes to are unmeasured (the row kept, partial)
    unmeasured = [(missing[:, None] & (sampler.merge[band] > 0)[None, :], reason)
                  for band, (missing, reason) in zip(BANDS, absent)]
    for mask, _ in unmeasured:
        flux[mask], error[mask] = np.nan, np.nan
    if wanted["normalisation"] in MEDIAN_NAMES:
        scale = _median_of_measured(flux)
        normalisation = MEDIAN
        problems.append((~(scale > 0), "non-positive median flux"))
    else:
        scale = column_to_1d(columns["phot_g_mean_flux"]).astype(np.float64) \
            if "phot_g_mean_flux" in columns else np.full(n, np.nan)
        normalisation = "phot_g_mean_flux"
        problems.append((~(np.isfinite(scale) & (scale > 0)),
                         "missing or non-positive phot_g_mean_flux"))
    scale = np.where(scale > 0, scale, 1.0)
    return SpectraSet.from_arrays(flux / scale[:, None], error / scale[:, None],
                                  column_to_1d(columns["source_id"]), "sampled", grid,
                                  None, path, normalisation, problems, allow_empty=True,
                                  input_problems=unmeasured)


def _null_rows(column) -> np.ndarray:
    """(n,) bool: the rows of a column of arrays that hold none (null)."""
    if hasattr(column, "is_null"):  # pyarrow
        return np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.array([r is None for r in column], dtype=bool) \
        if getattr(column, "dtype", object) == object else np.zeros(len(column), bool)


def _median_of_measured(values: np.ndarray) -> np.ndarray:
    """Per row, the median of its finite values (NaN for a row with none)."""
    out = np.full(len(values), np.nan)
    some = np.isfinite(values).any(axis=1)
    out[some] = np.nanmedian(values[some], axis=1)
    return out
