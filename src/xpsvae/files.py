"""The package's small JSON files: written so that a crash never leaves half of one, and
the manifest of an encoded catalogue, read here so that ``xpsvae info`` needs no PyTorch."""

from __future__ import annotations

import json
import os


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


#: An encoded catalogue's manifest. The leading underscore makes Parquet readers (pandas,
#: pyarrow.dataset, Dask, Spark) pass it by, so the folder reads as one table.
ENCODED_MANIFEST = "_manifest.json"
#: Its name before (it kept those readers from the folder): read, then replaced on a restart.
OLD_ENCODED_MANIFEST = "manifest.json"


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
