"""The ingest's bookkeeping: each input file's rows, the source_ids seen, files seen before.

Nothing is silently lost: for every file, ``rows_read = rows_kept +
rows_set_aside``; ``rows_partial`` of the kept rows have some inputs unmeasured
(a band missing, NaN values), counted by reason; each row set aside with its reason (a file refused whole
is listed with its reason and no rows). A duplicate source_id is set aside
naming the row of the first one.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm


@dataclass
class FileAccount:
    """Rows of one input file: read, kept, set aside (with reasons)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    set_aside: List[dict] = field(default_factory=list)
    #: Rows kept with some inputs unmeasured, by reason (a band missing, NaN inputs).
    partial: Counter = field(default_factory=Counter)

    def add_set_aside(self, row: int, reason: str, raw: Optional[str] = None) -> None:
        self.set_aside.append({"input_file": self.path, "input_row": row,
                               "raw_text": raw, "reason": reason})

    def to_dict(self) -> dict:
        rows = [r for r in self.set_aside if r["input_row"] >= 0]  # row -1: the whole file
        out = {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
               "rows_set_aside": len(rows),
               "reasons": dict(Counter(r["reason"].split(":")[0] for r in self.set_aside)),
               "rows_partial": sum(self.partial.values()), "partial_reasons": dict(self.partial)}
        refused = [r["reason"] for r in self.set_aside if r["input_row"] < 0]
        if refused:  # the reason, without the "file refused: " every such one starts with
            out["refused"] = refused[0].split(": ", 1)[-1]
        return out



class SeenIds:
    """source_ids already in the store, with where each came from (sorted arrays, not a dict,
    so 10^8 ids take ~2 GB rather than ~20).

    The ids are kept as sorted runs (ids, file index, row); a new batch becomes a run and
    runs of similar size are merged, so adding n ids costs O(n log n) in all rather than a
    sort of everything seen for every batch, and a lookup searches O(log n) runs.
    """

    def __init__(self):
        self.files: List[str] = []
        self._runs: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ids: np.ndarray, file: str, rows: np.ndarray) -> None:
        if not len(ids):
            return
        if file not in self.files:
            self.files.append(file)
        run = (ids, np.full(len(ids), self.files.index(file), np.int32), rows)
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            run = tuple(np.concatenate([a, b]) for a, b in zip(self._runs.pop(), run))
        order = np.argsort(run[0], kind="stable")
        self._runs.append(tuple(a[order] for a in run))

    def first_seen(self, ids: np.ndarray) -> List[Optional[str]]:
        """For each id, where it was first seen ("file row N"), or None."""
        where: List[Optional[str]] = [None] * len(ids)
        for run_ids, run_file, run_row in self._runs:
            at = np.minimum(np.searchsorted(run_ids, ids), len(run_ids) - 1)
            for i in np.flatnonzero(run_ids[at] == ids):
                where[i] = row_of(self.files[run_file[at[i]]], run_row[at[i]])
        return where


def row_of(file: str, row: int) -> str:
    """A row as a duplicate's reason names it: "file row N"."""
    return f"{os.path.basename(file)} row {row}"


def duplicate_reason(where: str) -> str:
    """The reason a duplicate source_id is set aside, naming the first (:func:`row_of`)."""
    return f"duplicate source_id: first at {where}"



def file_fingerprint(path: str) -> str:
    """A file's size and a hash of its first and last MiB: the same file under another
    path (a folder moved or copied) has the same one; two different Gaia files do not."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
        digest.update(f.read())
    return f"{size}:{digest.hexdigest()}"


_FINGERPRINT_BYTES = 2**20


class SameContent:
    """Finds, for a path the store does not know, a file of the same content: complete in
    the store, or given earlier in this run.

    Only files of a size another such file has are fingerprinted, so a run
    over new files reads nothing more; a store's files that were recorded
    before fingerprints were are fingerprinted from their path, where it is.
    What is found is listed in the manifest's ``same_content`` (path: the
    other file), so that every file given is accounted for.
    """

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.fingerprints: dict = {}  # files given in this run
        self.by_size: dict = {}
        for name, entry in manifest["files"].items():
            if entry.get("complete") and entry.get("size") is not None:
                self.by_size.setdefault(entry["size"], []).append(name)
                if "fingerprint" in entry:
                    self.fingerprints[name] = entry["fingerprint"]

    def _fingerprint(self, name: str) -> Optional[str]:
        if name not in self.fingerprints and os.path.isfile(name):
            self.fingerprints[name] = file_fingerprint(name)
            if name in self.manifest["files"]:  # recorded before fingerprints were
                self.manifest["files"][name]["fingerprint"] = self.fingerprints[name]
        return self.fingerprints.get(name)

    def fingerprint_of(self, name: str) -> str:
        """A file's fingerprint, computed once."""
        fingerprint = self._fingerprint(name)
        return fingerprint if fingerprint is not None else file_fingerprint(name)

    def find(self, path: str, size: int) -> Optional[str]:
        """The other file of ``path``'s content, or None (``path`` is then a candidate)."""
        candidates = self.by_size.setdefault(size, [])
        found = None
        if candidates:
            fingerprint = self._fingerprint(path)
            found = next((c for c in candidates if self._fingerprint(c) == fingerprint), None)
        if found is None:
            candidates.append(path)
            return None
        self.manifest.setdefault("same_content", {})[path] = found
        return found



def totals(files: dict) -> dict:
    reasons: Counter = Counter()
    partial: Counter = Counter()
    for f in files.values():
        reasons.update(f["reasons"])
        partial.update(f.get("partial_reasons", {}))  # stores from before counted none
    return {"files": len(files), "rows_read": sum(f["rows_read"] for f in files.values()),
            "rows_kept": sum(f["rows_kept"] for f in files.values()),
            "rows_set_aside": sum(f["rows_set_aside"] for f in files.values()),
            "reasons": dict(reasons), "rows_partial": sum(partial.values()),
            "partial_reasons": dict(partial)}


def ids_in_store(store: str, manifest: dict, progress: bool = False) -> SeenIds:
    """The source_ids of the store's shards, for the duplicates of the files to come."""
    seen = SeenIds()
    for name in tqdm(manifest["shards"], desc="store's source_ids", unit="shard",
                     disable=not progress or not manifest["shards"]):
        table = pq.read_table(os.path.join(store, name), columns=["source_id", "input_file",
                                                                  "input_row"])
        files = table.column("input_file").to_numpy(zero_copy_only=False)
        for file in np.unique(files):
            mask = files == file
            seen.add(table.column("source_id").to_numpy()[mask], str(file),
                     table.column("input_row").to_numpy()[mask])
    return seen

