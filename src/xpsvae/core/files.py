"""Every name xpsvae gives a file or folder on disk, and the one way it writes them.

A store (``xpsvae ingest``)::

    STORE/manifest.json        its kind (and grid); per input file and in total: rows read,
                               kept and set aside, with reasons
    STORE/part-NNNNN.parquet   the shards, one schema
    STORE/set_aside.parquet    every rejected row: file, row, raw text, reason
    STORE/.g_flux/             the G-flux table of its gaia_source tables, kept for reruns
    STORE/.jobs/               shards of files being read at once (removed when done)
    STORE/.writer.lock         locked by the ingest writing the store, if one is

A model folder (``xpsvae train``): ``config.json``, ``model.safetensors``,
``checkpoint.safetensors`` (while training) and ``history.csv``. A Cannon:
``cannon.json`` and ``cannon.safetensors``. An encoded catalogue: its
``part-NNNNN.parquet`` files and ``_manifest.json``.

Every file is written beside its final name and renamed into place
(:func:`atomic_path`), so that a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from typing import Iterator

# --------------------------------------------------------------------------- a store
MANIFEST = "manifest.json"
SET_ASIDE = "set_aside.parquet"
G_FLUX_DIR = ".g_flux"
G_FLUX_TABLES = "tables.json"
JOBS_DIR = ".jobs"
#: Held (an OS lock on it) by the one process writing the store; it holds that pid.
WRITER_LOCK = ".writer.lock"
#: The store's layout (the shards' schema, the manifest's keys), in its manifest. A later
#: layout gets a higher number, so that this version refuses it with a message.
STORE_FORMAT_VERSION = 1
SHARD_GLOB = "part-*.parquet"


def shard_name(index: int) -> str:
    """The file name of shard (or encoded part) number ``index``."""
    return f"part-{index:05d}.parquet"


def is_shard_name(name: str) -> bool:
    """Whether a file name is one :func:`shard_name` gives."""
    name = os.path.basename(name)
    return name.startswith("part-") and name.endswith(".parquet")


# --------------------------------------------------------------------------- a model
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_NAME = "checkpoint.safetensors"
HISTORY_NAME = "history.csv"
#: The source_ids of the stars a model was fitted on (xpsvae.model.folder).
TRAINING_STARS_FILE = "training_stars.safetensors"
#: A fitted Cannon.
CANNON_CONFIG_FILE = "cannon.json"
CANNON_WEIGHTS_FILE = "cannon.safetensors"

#: A label model (xpsvae.labels): its head's weights and JSON, and its copy of the sVAE.
LABEL_HEAD_WEIGHTS = "head.safetensors"
LABEL_HEAD_CONFIG = "head.json"
LABEL_SVAE_FOLDER = "svae"
#: A label ensemble (xpsvae.labels.ensemble): its members' folder names, and the arrays of
#: its own calibration where it was refitted.
LABEL_ENSEMBLE_FILE = "ensemble.json"
LABEL_ENSEMBLE_WEIGHTS = "ensemble.safetensors"

#: The name by which every command and ``SVAE.load`` take the model shipped with the
#: package (``SVAE.pretrained()``); a folder of that name in the working directory wins.
BUILTIN_MODEL = "builtin"
_RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "resources")
BUILTIN_MODEL_DIR = os.path.join(_RESOURCES, "builtin")
#: The label model shipped with the package (``LabelModel.pretrained()``), which the label
#: commands take by the same name.
BUILTIN_LABEL_MODEL_DIR = os.path.join(_RESOURCES, "builtin_labels")


def model_folder(name: str, shipped: str = BUILTIN_MODEL_DIR) -> str:
    """The folder a model name means: ``builtin`` is the shipped model (``shipped``: the
    sVAE's, or :data:`BUILTIN_LABEL_MODEL_DIR` where a label model is meant), anything
    else a path."""
    name = os.fspath(name)
    if name == BUILTIN_MODEL and not os.path.exists(name):
        return shipped
    return name


# --------------------------------------------------------------------------- evaluation
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
DATA_ACCOUNTING_FILE = "data_accounting.json"

# --------------------------------------------------------------------------- an encoded catalogue
#: An encoded catalogue's manifest. The leading underscore makes Parquet readers (pandas,
#: pyarrow.dataset, Dask, Spark) pass it by, so the folder reads as one table.
ENCODED_MANIFEST = "_manifest.json"
#: Its name before (it kept those readers from the folder): read, then replaced on a restart.
OLD_ENCODED_MANIFEST = "manifest.json"


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block
    ends, removed (file or folder) when it raises, so ``path`` is never half-written.

    Example::

        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    """
    tmp = path + ".tmp"
    try:
        yield tmp
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise
    if os.path.isfile(tmp):  # readable as the umask allows (some writers create files 0600)
        mode = os.stat(tmp).st_mode & 0o777
        os.chmod(tmp, mode | (0o444 & ~_UMASK))
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's umask, read once at import (reading it means setting it).
_UMASK = _umask()


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)


def is_encoded_manifest(manifest: dict) -> bool:
    """Whether a ``manifest.json`` is an encoded catalogue's of the old layout, not a store's."""
    return "files" not in manifest and "complete" in manifest and "model_dir" in manifest


def read_encoded_manifest(folder: str) -> dict:
    """An encoded catalogue's manifest, under its name or its old one; {} where it has none."""
    for name in (ENCODED_MANIFEST, OLD_ENCODED_MANIFEST):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                manifest = json.load(f)
            if name == ENCODED_MANIFEST or is_encoded_manifest(manifest):
                return manifest
    return {}
