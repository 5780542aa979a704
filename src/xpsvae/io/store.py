"""Reading a store: the folder of Parquet shards ``xpsvae ingest`` writes.

The writer is :mod:`xpsvae.ingestion`; everything that only reads a store
(training, encoding, the flux conversion, ``xpsvae info``) goes through
:class:`Store` here, so it needs nothing of the ingest. The layout is in
:mod:`xpsvae.core.files`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..core.constants import VERSION
from ..core.errors import SpectraError
from ..core.files import MANIFEST, STORE_FORMAT_VERSION
from .spectra import DUPLICATES_NOTE, RowAccounting, SpectraSet, note_duplicates
from .tables import spectra_from_columns

#: The store columns training and encoding need (the correlations, ~90% of a coefficient
#: shard's bytes, are not read).
TRAINING_COLUMNS = ["source_id", "bp_coefficients", "bp_coefficient_errors", "bp_missing",
                    "rp_coefficients", "rp_coefficient_errors", "rp_missing", "phot_g_mean_flux"]
SAMPLED_TRAINING_COLUMNS = ["flux", "flux_error"]


class Store:
    """A store folder, for reading.

    Args:
        folder: a folder written by :func:`xpsvae.ingest`.

    Raises:
        SpectraError: the folder is not a store, or one of a later format
            than this xpsvae reads.

    Example::

        store = Store("my_store")
        store.kind, len(store.shards)
        stars = store.dataset().to_table(columns=["source_id", "bp_coefficients"])
        spectra = store.read_spectra()          # validated, every row accounted for
    """

    def __init__(self, folder: str):
        self.folder = os.fspath(folder)
        self.manifest = _read_manifest(self.folder)

    @property
    def kind(self) -> str:
        """``coefficients`` or ``sampled``."""
        return self.manifest.get("kind", "coefficients")

    @property
    def wavelength_nm(self) -> Optional[List[float]]:
        """The grid of a store of sampled spectra (None for coefficients)."""
        return self.manifest.get("wavelength_nm")

    @property
    def info(self) -> dict:
        """``kind`` and ``wavelength_nm``."""
        return {"kind": self.kind, "wavelength_nm": self.wavelength_nm}

    @property
    def shards(self) -> List[str]:
        """Paths of the shards, in manifest order.

        Raises:
            SpectraError: the store holds no rows.
        """
        if not self.manifest["shards"]:
            raise SpectraError(f"{self.folder}: the store holds no rows")
        return [os.path.join(self.folder, s) for s in self.manifest["shards"]]

    def dataset(self) -> ds.Dataset:
        """The shards as one ``pyarrow.dataset.Dataset``, in manifest order, read lazily.

        The folder also holds ``manifest.json`` and ``set_aside.parquet`` (the
        rejected rows, another schema), so reading the folder itself with
        pandas or Dask fails or mixes them in; this reads the shards alone::

            frame = store.dataset().to_table(columns=["source_id"]).to_pandas()
            dask_frame = dask.dataframe.read_parquet(store.dataset().files)
        """
        return ds.dataset(self.shards, format="parquet")

    def read_columns(self, without_correlations: bool = False) -> Dict[str, object]:
        """The shards as one column mapping (for :func:`~xpsvae.io.tables.spectra_from_columns`).

        Args:
            without_correlations: leave out the correlation columns (~90% of a
                coefficient store's bytes; training and encoding do not use them).
        """
        names = pq.read_schema(self.shards[0]).names
        if without_correlations:
            names = [n for n in names if not n.endswith("_coefficient_correlations")]
        table = pa.concat_tables([pq.read_table(s, columns=names) for s in self.shards])
        return {c: table.column(c) for c in table.column_names}

    def read_shard(self, path: str, labels: bool = False, allow_empty: bool = False,
                   widths: Optional[Dict[str, int]] = None) -> SpectraSet:
        """One shard's spectra, validated (rows set aside as by :meth:`read_spectra`).

        Args:
            path: the shard's path.
            labels: also read the per-star columns other than the spectra
                (G-flux origin, input file and row, ...); training does not.
            allow_empty: an empty set where every row is set aside, instead of
                an error (a shard read as a part of the store).
            widths: the arrays' length per array column (:func:`array_widths`),
                for a shard where a column holds no array at all.
        """
        names = pq.read_schema(path).names
        if labels:
            wanted = [c for c in names if not c.endswith("_coefficient_correlations")]
        else:
            wanted = [c for c in TRAINING_COLUMNS + SAMPLED_TRAINING_COLUMNS if c in names]
        table = pq.read_table(path, columns=wanted)
        return spectra_from_columns({c: table.column(c) for c in table.column_names},
                                    source=path, divide_sampled_by_g=self.kind == "sampled",
                                    wavelength_nm=self.wavelength_nm, allow_empty=allow_empty,
                                    widths=widths)

    def read_spectra(self, progress: bool = False) -> SpectraSet:
        """The store's spectra, validated shard by shard into arrays filled as they are read.

        The same set, accounting and row numbers as validating the whole store
        at once (its shards end to end, in manifest order), for a fraction of
        the memory: a shard's working copies at a time (float64 values and
        errors, divided by G, masks), then its float32 rows, instead of all of
        them at once (``benchmarks/store_memory.py``). The arrays have room for
        every row of the store; those of rows set aside stay unused. A problem
        in a shard (a ragged array) is named by the shard and its row there.
        """
        shards = self.shards
        widths = array_widths(shards)
        accounting = RowAccounting(self.folder)
        first: Optional[SpectraSet] = None  # kind, normalisation and grid of the spectra
        source_ids, input_rows, labels = [], [], []
        values = errors = None
        kept = 0
        counts = [pq.read_metadata(s).num_rows for s in shards]  # each footer read once
        for shard, count in zip(tqdm(shards, desc="read", unit="shard", disable=not progress),
                                counts):
            if not count:  # nothing to add (a hand-made store)
                continue
            part = self.read_shard(shard, labels=True, allow_empty=True, widths=widths)
            if values is None:  # room for every row the store holds; rows set aside unused
                values = np.empty((sum(counts), part.n_inputs), dtype=np.float32)
                errors = np.empty_like(values)
                first = part
            if part.n_inputs != values.shape[1]:
                raise SpectraError(f"{shard}: {part.n_inputs} inputs, the store's first shard "
                                   f"{values.shape[1]}")
            values[kept:kept + len(part)], errors[kept:kept + len(part)] = \
                part.values, part.errors
            kept += len(part)
            offset = accounting.rows_read
            accounting.rows_read += part.accounting.rows_read
            accounting.set_aside.extend((r + offset, why, c)
                                        for r, why, c in part.accounting.set_aside)
            accounting.partial.extend((r + offset, why, c)
                                      for r, why, c in part.accounting.partial)
            accounting.notes.extend(n for n in part.accounting.notes
                                    if DUPLICATES_NOTE not in n and n not in accounting.notes)
            source_ids.append(part.source_id)
            input_rows.append(part.input_row + offset)
            labels.append(part.labels)
        if not kept:
            raise SpectraError(f"{accounting.summary()}: no usable row left")
        source_id = np.concatenate(source_ids)
        note_duplicates(source_id, accounting)
        return SpectraSet(values[:kept], errors[:kept], source_id, first.kind,
                          first.wavelength_nm,
                          None if labels[0] is None else _concat_labels(labels),
                          first.normalisation, accounting, np.concatenate(input_rows))


def _read_manifest(store: str) -> dict:
    path = os.path.join(store, MANIFEST)
    if not os.path.exists(path):
        raise SpectraError(f"{store}: no {MANIFEST}; not an xpsvae store")
    with open(path) as f:
        manifest = json.load(f)
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > STORE_FORMAT_VERSION:
        raise SpectraError(f"{store}: a store of format version {version}; this xpsvae "
                           f"({VERSION}) reads version {STORE_FORMAT_VERSION}: upgrade "
                           "xpsvae to read it")
    return manifest


def _concat_labels(frames: List[pd.DataFrame]) -> pd.DataFrame:
    """Shards' labels end to end, each column in the type the whole store would give it: a
    shard whose rows were all set aside counts too (its nulls made an int column float)."""
    dtypes = {}
    for column in frames[0].columns:
        kinds = [f[column].dtype for f in frames]
        if all(isinstance(k, np.dtype) and k.kind in "biuf" for k in kinds):
            dtypes[column] = np.result_type(*kinds)
        elif any(k != kinds[0] for k in kinds):
            dtypes[column] = object
    return pd.concat([f.astype(dtypes) for f in frames if len(f)], ignore_index=True)


def array_widths(shards: Sequence[str]) -> Dict[str, int]:
    """The length of the spectra's arrays in a store, from the first shard that has one."""
    widths: Dict[str, int] = {}
    for name in ("flux", "bp_coefficients", "rp_coefficients"):
        if name not in pq.read_schema(shards[0]).names:
            continue
        for shard in shards:
            lengths = pc.list_value_length(pq.read_table(shard, columns=[name]).column(name))
            longest = pc.max(lengths).as_py()
            if longest is not None:
                widths[name] = longest
                break
    return widths


# --------------------------------------------------------------------------- shortcuts

def store_manifest(store: str) -> dict:
    """A store's ``manifest.json``: its files, shards, row accounting and format version."""
    return Store(store).manifest


def store_info(store: str) -> dict:
    """What a store holds: ``kind`` and, for sampled spectra, ``wavelength_nm``."""
    return Store(store).info


def store_shards(store: str) -> List[str]:
    """Paths of a store's shards, in manifest order."""
    return Store(store).shards


def open_store(store: str) -> ds.Dataset:
    """A store's shards as one ``pyarrow.dataset.Dataset`` (:meth:`Store.dataset`)::

        stars = open_store("my_store").to_table(columns=["source_id", "bp_coefficients"])
        dask_frame = dask.dataframe.read_parquet(open_store("my_store").files)
    """
    return Store(store).dataset()


def read_store_columns(store: str, without_correlations: bool = False) -> dict:
    """A store's shards as one column mapping (:meth:`Store.read_columns`)."""
    return Store(store).read_columns(without_correlations)


def store_source_ids(store: str, at_most: int) -> Optional[np.ndarray]:
    """Every source_id of a store (its rows set aside at ingest are not in it), or None
    when it holds more than ``at_most`` rows."""
    dataset = open_store(store)
    if dataset.count_rows() > at_most:
        return None
    return dataset.to_table(columns=["source_id"]).column("source_id").to_numpy()


def read_shard(path: str) -> SpectraSet:
    """One shard of a store as a validated SpectraSet (:meth:`Store.read_shard`)."""
    return Store(os.path.dirname(os.path.abspath(path))).read_shard(path)
