"""Catalogue-scale encoding and scoring of a store, shard by shard, in one process or on Dask.

Every input shard becomes one output shard (``OUT/part-NNNNN.parquet``) with,
per star, ``source_id``, ``input_row``, ``latent_mean``, ``latent_std``,
``reconstruction_chi2_per_dof``, ``anomaly_score`` and ``n_observed`` (the
inputs measured; both figures are per measured input), and in the file's
metadata the model's format and package version and its standardisation
statistics. An output shard is written atomically, so a restarted job skips
the shards already done. The same function runs in-process, on a Dask
``LocalCluster`` or on a remote scheduler. The folder reads as one table
(``pandas.read_parquet(OUT)``, ``dask.dataframe.read_parquet(OUT)``): its
manifest, ``_manifest.json``, is a name Parquet readers pass by.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .conform import contract, read_for_model
from .core import machine
from .core.errors import SpectraError
from .core.files import (
    CONFIG_FILE,
    ENCODED_MANIFEST,
    OLD_ENCODED_MANIFEST,
    atomic_path,
    is_encoded_manifest,
    model_folder,
    read_encoded_manifest,
    shard_name,
    write_json,
)
from .core.files import MANIFEST as STORE_MANIFEST
from .io.spectra import SpectraSet
from .io.store import store_shards
from .labels.ensemble import LabelEnsemble, label_svae_folder, load_labels
from .labels.model import EXTRAPOLATED, LabelModel
from .model.runtime import torch_threads
from .svae import SVAE


def encoded_table(model: SVAE, spectra: SpectraSet, device: str = "cpu",
                  label_model: Optional[Union[LabelModel, LabelEnsemble]] = None) -> pa.Table:
    """:meth:`SVAE.score` of every star as a table, with ``source_id`` and ``input_row``;
    with ``label_model``, a label model of this sVAE (:func:`check_labels_fit`), its columns
    after them (:func:`with_labels`; its flag reads the same scores)."""
    scores = model.score(spectra, device=device)
    d = model.config.latent_dim
    table = pa.table({
        "source_id": spectra.source_id,
        "input_row": spectra.input_row,
        "latent_mean": pa.FixedSizeListArray.from_arrays(
            scores["latent_mean"].astype(np.float32).ravel(), d),
        "latent_std": pa.FixedSizeListArray.from_arrays(
            scores["latent_std"].astype(np.float32).ravel(), d),
        "reconstruction_chi2_per_dof": scores["reconstruction_chi2_per_dof"],
        "anomaly_score": scores["anomaly_score"],
        "n_observed": scores["n_observed"].astype(np.int32),
    })
    if label_model is not None:
        table = with_labels(table, label_model.predict(spectra, device, scores=scores))
    return table


def model_metadata(model_dir: str) -> dict:
    """What an output shard records of the model: versions and standardisation statistics."""
    model_dir = model_folder(model_dir)
    with open(os.path.join(model_dir, CONFIG_FILE)) as f:
        saved = json.load(f)
    return {"model_dir": os.path.abspath(model_dir), "format_version": saved["format_version"],
            "xpsvae_version": saved["xpsvae_version"], "preprocessing": saved["preprocessing"]}


@functools.lru_cache(maxsize=4)
def _load_model(model_dir: str) -> SVAE:
    return SVAE.load(model_dir)  # once per worker process, not once per shard


def encode_shard(model_dir: str, shard: str, out_path: str,
                 labels_dir: Optional[str] = None) -> dict:
    """Encode one input table into one output shard; returns its row accounting.

    With ``labels_dir``, a label model of the same sVAE (``xpsvae labels fit``),
    its label columns are added (:func:`with_labels`).

    Runs with one torch thread, so that every worker gives bit-identical
    results whatever its machine's thread count. Of a store's shard only the
    columns the model needs are read (not the correlations, ~90% of the bytes).
    """
    with torch_threads(1):
        model = _load_model(model_dir)
        try:
            spectra = read_for_model(shard, contract(model.info, model.config.input_dim))
            table = encoded_table(model, spectra,
                                  label_model=_load_labels(labels_dir) if labels_dir else None)
            accounting = spectra.accounting.to_dict(max_rows_listed=100)
        except SpectraError as exc:  # e.g. every row of the shard set aside
            table = encoded_table_schema(
                model, _load_labels(labels_dir).columns() if labels_dir else ()).empty_table()
            accounting = {"source": shard, "error": str(exc)}
    meta = {**model_metadata(model_dir), "input": os.path.abspath(shard),
            "accounting": accounting}
    table = table.replace_schema_metadata({"xpsvae": json.dumps(meta)})
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"input": shard, "output": os.path.basename(out_path), "rows": table.num_rows,
            "accounting": accounting}


def encoded_table_schema(model: SVAE, label_columns: Sequence[str] = ()) -> pa.Schema:
    """The columns of :func:`encoded_table`, then ``label_columns`` (``LabelModel.columns``)."""
    d = model.config.latent_dim
    return pa.schema([("source_id", pa.int64()), ("input_row", pa.int64()),
                      ("latent_mean", pa.list_(pa.float32(), d)),
                      ("latent_std", pa.list_(pa.float32(), d)),
                      ("reconstruction_chi2_per_dof", pa.float64()),
                      ("anomaly_score", pa.float64()), ("n_observed", pa.int32())]
                     + [(name, pa.bool_() if name == "labels_ood" or
                         name.endswith(EXTRAPOLATED) else pa.float64())
                        for name in label_columns])


def with_labels(table: pa.Table, labels: pd.DataFrame) -> pa.Table:
    """``table`` (:func:`encoded_table`) with the label columns of ``LabelModel.predict``
    of the same stars, in the same order."""
    for name in labels.columns:
        if name not in ("source_id", "input_row"):
            table = table.append_column(name, pa.array(labels[name].to_numpy()))
    return table


@functools.lru_cache(maxsize=2)
def _load_labels(labels_dir: str) -> Union[LabelModel, LabelEnsemble]:
    return load_labels(labels_dir)  # once per worker process


def check_labels_fit(model: SVAE, label_model: Union[LabelModel, LabelEnsemble],
                     labels_dir: str) -> None:
    """Refuse a label model (read from ``labels_dir``) fitted on another sVAE than ``model``
    (its latents and its labels would describe two models); of an ensemble, its first
    member's sVAE."""
    if not model.network.same_weights(label_model.svae.network):
        raise SpectraError(f"{labels_dir}: a label model of another sVAE than the one "
                           "encoding; encode with the sVAE it was fitted on (its copy is in "
                           f"{label_svae_folder(labels_dir)})")


def input_shards(data: str) -> List[str]:
    """The shards of a store (in manifest order), or the file itself."""
    return store_shards(data) if os.path.isdir(data) else [data]


def encode_store(model_dir: str, data: str, out_dir: str, scheduler: Optional[str] = None,
                 workers: int = 0, progress: bool = True,
                 labels_dir: Optional[str] = None) -> dict:
    """Encode every shard of a store into ``out_dir``; shards already encoded are skipped.

    Args:
        model_dir: a trained sVAE.
        data: a store folder (or one table file).
        out_dir: output folder of Parquet shards and ``_manifest.json``.
        scheduler: None (this process), ``"local"`` (a Dask LocalCluster of
            ``workers`` single-threaded processes) or a Dask scheduler address.
        workers: processes of the local cluster (0: :func:`default_encode_workers`).
        progress: show a progress bar.
        labels_dir: a label model of the same sVAE: its labels added to every shard.

    Returns:
        The output manifest.
    """
    # each fails early, with its own message, before any work: the label model first, so
    # that one named alone (labels predict of a store) is named in the message
    if labels_dir:
        labels_dir = os.path.abspath(labels_dir)
        label_model = _load_labels(labels_dir)
    model_dir = model_folder(model_dir)  # "builtin": the workers load it by its path
    model = SVAE.load(model_dir)
    _refuse_a_store_as_output(data, out_dir)
    shards = input_shards(data)
    _check_model_takes(model, model_dir, data, shards[0])
    if labels_dir:
        check_labels_fit(model, label_model, labels_dir)
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(s, os.path.join(out_dir, shard_name(i))) for i, s in enumerate(shards)]
    todo = [(s, o) for s, o in jobs if not os.path.exists(o)]  # restart where it stopped
    results = _run(model_dir, todo, scheduler, workers, progress, labels_dir)
    done = {r["output"]: r for r in results}
    previous = read_encoded_manifest(out_dir)
    for entry in previous.get("shards", []):
        done.setdefault(entry["output"], entry)
    manifest = {**model_metadata(model_dir), "input": os.path.abspath(data),
                "shards": [done[os.path.basename(o)] for _, o in jobs if
                           os.path.basename(o) in done],
                "rows": sum(done[os.path.basename(o)]["rows"] for _, o in jobs
                            if os.path.basename(o) in done),
                "complete": all(os.path.exists(o) for _, o in jobs)}
    write_json(os.path.join(out_dir, ENCODED_MANIFEST), manifest)
    old = os.path.join(out_dir, OLD_ENCODED_MANIFEST)
    if os.path.exists(old):  # it kept Parquet readers from the folder
        os.remove(old)
    if manifest["complete"] and not manifest["rows"]:
        why = next((s["accounting"]["error"] for s in manifest["shards"]
                    if "error" in s["accounting"]), "every row was set aside")
        raise SpectraError(f"{data}: no star encoded ({why}); see {out_dir}/"
                           f"{ENCODED_MANIFEST} for each shard")
    return manifest


def _check_model_takes(model: SVAE, model_dir: str, data: str, first: str) -> None:
    """Refuse, before any work, spectra the model cannot take (:mod:`xpsvae.conform`)."""
    try:
        read_for_model(first, contract(model.info, model.config.input_dim))
    except SpectraError as exc:
        raise SpectraError(f"{exc} (model {model_dir})") from None


def _refuse_a_store_as_output(data: str, out_dir: str) -> None:
    """An output folder that is the input or another store would have its shards taken for
    encoded ones (``part-NNNNN.parquet`` both) and its manifest replaced."""
    if os.path.abspath(out_dir) == os.path.abspath(data):
        raise SpectraError(f"{out_dir}: the output folder is the input; encode into another")
    store_manifest = os.path.join(out_dir, STORE_MANIFEST)
    if os.path.exists(store_manifest):
        with open(store_manifest) as f:
            if not is_encoded_manifest(json.load(f)):
                raise SpectraError(f"{out_dir}: a store from xpsvae ingest ({STORE_MANIFEST}); "
                                   "encode into another folder")


def default_encode_workers(n_shards: int) -> int:
    """Processes of a local cluster: one per core (each runs the network with one thread),
    at most one per shard to encode and one per GB of memory (a worker peaks at ~0.6 GB,
    ``benchmarks/encode_throughput.py``); cores and memory as a container's limits allow."""
    workers = min(machine.usable_cores(), max(1, n_shards))
    memory = machine.usable_memory()
    if memory is not None:
        workers = min(workers, memory // 2**30)
    return max(1, workers)


def _run(model_dir: str, todo: Sequence[tuple], scheduler: Optional[str], workers: int,
         progress: bool, labels_dir: Optional[str] = None) -> List[dict]:
    if not todo:
        return []
    if scheduler is None:
        return [encode_shard(model_dir, s, o, labels_dir)
                for s, o in tqdm(todo, desc="encode", unit="shard", disable=not progress)]
    from dask.distributed import Client, LocalCluster, as_completed  # optional: [dask]
    with environment_kept():
        cluster = None
        if scheduler == "local":
            cluster = LocalCluster(n_workers=workers or default_encode_workers(len(todo)),
                                   threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        else:
            client = Client(scheduler)
        try:
            futures = [client.submit(encode_shard, model_dir, s, o, labels_dir, pure=False)
                       for s, o in todo]
            results = []
            for future in tqdm(as_completed(futures), total=len(futures), desc="encode",
                               unit="shard", disable=not progress):
                results.append(future.result())
            return results
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextmanager
def environment_kept() -> Iterator[None]:
    """This process's environment put back as it was after a block. Dask writes
    OMP/MKL/OPENBLAS_NUM_THREADS=1 into it for its workers; left there, every process
    started later inherits one thread (a demo lane then rounds otherwise than the same
    work in this process)."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
