"""Training batches streamed from a store's Parquet shards, for stores larger than memory.

:class:`StoreStream` first scans the store once (:meth:`StoreStream.scan`):
it fits the standardisation on the training stars, counts them, and keeps a
bounded set of validation stars. Each epoch it then

1. puts this rank's shards in a random order drawn from (seed, epoch, rank),
2. reads ``buffer_shards`` of them at a time in a background thread,
   standardises them and shuffles their rows together (a shuffle buffer that
   spans shards), pinning the buffer in page-locked memory when training on
   a GPU so that its copy to the device runs asynchronously,
3. cuts the buffers into batches, carrying the ragged end of one buffer into
   the next, and stops after the same number of batches on every rank.

Which stars are for validation is decided by a hash of ``source_id``, so it
does not depend on how the store is sharded. Under ``torchrun`` each rank
reads only its own shards (``shards[rank::world]``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..core import machine
from ..core.errors import SpectraError
from ..core.files import atomic_path
from ..io.spectra import SpectraSet
from ..io.store import read_shard, store_shards
from .preprocess import Standardizer

#: Why a partial spectrum (some inputs unmeasured) is left out of training.
PARTIAL_NOT_TRAINED = "partial (some inputs unmeasured): scored, not trained on"


def is_validation(source_id: np.ndarray, val_fraction: float) -> np.ndarray:
    """The validation share, by a hash of source_id (splitmix64): stable under any sharding."""
    z = source_id.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < val_fraction


class StoreStream:
    """Shuffled training batches from a store, read shard by shard.

    Build it with :meth:`scan`. Iterate an epoch with :meth:`epoch`.

    Attributes:
        standardizer: fitted on the training stars of every shard.
        train_rows: training stars on this rank.
        x_val, err_val: standardised validation stars (at most ``max_val_rows``).
        n_inputs, kind, normalisation, input_names: what the spectra are.
        checksum: sum of the training values (to check that a resumed run
            sees the same data).
        accounting: rows read, kept and set aside over the scanned shards,
            with the reasons; shards whose rows were all set aside are left
            out of training and listed.
    """

    def __init__(self, shards: List[str], standardizer: Standardizer, train_rows: int,
                 x_val: np.ndarray, err_val: np.ndarray, val_fraction: float, seed: int,
                 rank: int, world: int, buffer_shards: int, example: SpectraSet,
                 checksum: float, total_train_rows: int):
        self.shards = shards
        self.standardizer = standardizer
        self.train_rows = train_rows
        self.total_train_rows = total_train_rows
        self.x_val, self.err_val = x_val, err_val
        self.val_fraction = val_fraction
        self.seed = seed
        self.rank, self.world = rank, world
        self.buffer_shards = max(1, buffer_shards)
        self.n_inputs = example.n_inputs
        self.kind, self.normalisation = example.kind, example.normalisation
        self.input_names = example.input_names()
        self.wavelength_nm = example.wavelength_nm
        self.checksum = checksum
        self.cache: Dict[str, Tuple[str, str]] = {}  # shard -> (values, errors) .npy files

    @classmethod
    def scan(cls, store: str, val_fraction: float = 0.1, seed: int = 0, buffer_shards: int = 4,
             max_val_rows: int = 65_536, rank: int = 0, world: int = 1,
             progress: bool = False, cache_dir: Optional[str] = None) -> "StoreStream":
        """One pass over this rank's shards: standardisation, counts, validation stars.

        Under DDP the statistics of all ranks are combined, so every rank
        standardises identically. With ``cache_dir`` the training rows of
        every shard are also written there as float32 ``.npy`` files (after
        the G normalisation and the row checks, ~8 bytes per input per star),
        and the epochs read those instead of decoding Parquet again: the same
        rows in the same order, so training is unchanged, only faster.
        """
        shards = store_shards(store)[rank::world]
        if not shards:
            raise SpectraError(f"{store}: {len(store_shards(store))} shards for {world} ranks; "
                               "every rank needs at least one")
        count, mean, m2, checksum = 0, None, None, 0.0
        val_values, val_errors, example, usable = [], [], None, []
        cached: Dict[str, Tuple[str, str]] = {}
        accounting = {"rows_read": 0, "rows_kept": 0, "rows_set_aside": 0, "reasons": Counter(),
                      "shards_without_usable_rows": []}
        for path in tqdm(shards, desc="scanning store", unit="shard", disable=not progress):
            try:
                spectra = read_shard(path)
            except SpectraError as exc:  # every row set aside: the shard is left out, counted
                rows = pq.read_metadata(path).num_rows
                accounting["rows_read"] += rows
                accounting["rows_set_aside"] += rows
                accounting["reasons"]["in a shard without usable rows"] += rows
                accounting["shards_without_usable_rows"].append(f"{path}: {exc}")
                continue
            usable.append(path)
            for key in ("rows_read", "rows_kept", "rows_set_aside"):
                accounting[key] += getattr(spectra.accounting, key)
            accounting["reasons"].update(spectra.accounting.reasons())
            whole = spectra.complete()  # a partial spectrum is scored, not learnt from
            if len(whole) < len(spectra):
                accounting["rows_kept"] -= len(spectra) - len(whole)
                accounting["rows_set_aside"] += len(spectra) - len(whole)
                accounting["reasons"][PARTIAL_NOT_TRAINED] += len(spectra) - len(whole)
                spectra = whole
            example = example or spectra
            val = is_validation(spectra.source_id, val_fraction) if spectra.source_id is not None \
                else np.zeros(len(spectra), bool)
            if val.any() and sum(len(v) for v in val_values) < max_val_rows:
                val_values.append(spectra.values[val])
                val_errors.append(spectra.errors[val])
            if cache_dir:
                cached[path] = _write_cache(cache_dir, path, spectra.values[~val],
                                            spectra.errors[~val])
            train = spectra.values[~val].astype(np.float64)
            if not len(train):
                continue
            # Chan et al.'s pairwise update: exact, stable, one shard in memory.
            n_b, mean_b = len(train), train.mean(axis=0)
            m2_b = ((train - mean_b) ** 2).sum(axis=0)
            count, mean, m2 = _combine(count, mean, m2, n_b, mean_b, m2_b)
            checksum += float(train.sum())
        local_count = count
        if world > 1 and dist.is_available() and dist.is_initialized():
            gathered = [None] * world
            dist.all_gather_object(gathered, (count, mean, m2, checksum, accounting))
            count, mean, m2, checksum = 0, None, None, 0.0
            accounting = {"rows_read": 0, "rows_kept": 0, "rows_set_aside": 0,
                          "reasons": Counter(), "shards_without_usable_rows": []}
            for n_b, mean_b, m2_b, sum_b, acc_b in gathered:
                if n_b:
                    count, mean, m2 = _combine(count, mean, m2, n_b, mean_b, m2_b)
                checksum += sum_b
                for key, value in acc_b.items():
                    accounting[key] += value
            empty = [r for r, g in enumerate(gathered) if g[0] < 2]
            if empty:  # raised on every rank, so that none waits for the others
                raise SpectraError(f"{store}: ranks {empty} have fewer than 2 training stars in "
                                   f"their shards; use fewer processes or smaller shards")
        if count < 2 or example is None:
            raise SpectraError(f"{store}: fewer than 2 training stars "
                               f"({accounting['rows_read']} rows read, "
                               f"{accounting['rows_set_aside']} set aside: "
                               f"{dict(accounting['reasons'])})")
        accounting["reasons"] = dict(accounting["reasons"])
        std = np.sqrt(m2 / count)
        std[~(std > 0)] = 1.0
        standardizer = Standardizer(mean, std)
        n_inputs = example.n_inputs
        if val_values:
            x_val, err_val = standardizer.transform(np.concatenate(val_values)[:max_val_rows],
                                                    np.concatenate(val_errors)[:max_val_rows])
        else:
            x_val = err_val = np.zeros((0, n_inputs), np.float32)
        stream = cls(usable, standardizer, local_count, x_val, err_val, val_fraction, seed,
                     rank, world, buffer_shards, example, checksum, count)
        stream.accounting = accounting
        stream.cache = cached
        return stream

    def training_tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's training stars, standardised, as two float32 tensors (n, inputs).

        Read shard by shard (from the cache where there is one) into the final
        arrays, so the peak is the arrays plus one shard: ~8 bytes an input a
        star. For training with the stars resident in (device) memory.
        """
        values = np.empty((self.train_rows, self.n_inputs), np.float32)
        errors = np.empty_like(values)
        at = 0
        for path in self.shards:
            shard_values, shard_errors = self._training_rows(path)
            n = len(shard_values)
            if at + n > self.train_rows:
                raise SpectraError(f"{path}: more training stars than the scan counted: did "
                                   "the store's shards change?")
            values[at:at + n], errors[at:at + n] = self.standardizer.transform(
                shard_values, shard_errors)
            at += n
        if at != self.train_rows:
            raise SpectraError(f"the store gave {at} training stars, {self.train_rows} "
                               "counted by the scan: did its shards change?")
        return torch.from_numpy(values), torch.from_numpy(errors)

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, self.train_rows // batch_size)

    def _buffers(self, epoch: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Shuffled, standardised training rows, ``buffer_shards`` shards at a time."""
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        order = rng.permutation(len(self.shards))
        for start in range(0, len(order), self.buffer_shards):
            values, errors = [], []
            for path in (self.shards[i] for i in order[start:start + self.buffer_shards]):
                shard_values, shard_errors = self._training_rows(path)
                values.append(shard_values)
                errors.append(shard_errors)
            values, errors = np.concatenate(values), np.concatenate(errors)
            rows = rng.permutation(len(values))
            yield self.standardizer.transform(values[rows], errors[rows])

    def _training_rows(self, path: str) -> Tuple[np.ndarray, np.ndarray]:
        """A shard's training stars (values, errors), unstandardised: from the cache
        (memory-mapped) where the scan wrote one, else read and checked again."""
        if path in self.cache:
            return (np.load(self.cache[path][0], mmap_mode="r"),
                    np.load(self.cache[path][1], mmap_mode="r"))
        shard = read_shard(path).complete()  # as the scan counted them
        train = ~self._val(shard)
        return shard.values[train], shard.errors[train]

    def _val(self, spectra: SpectraSet) -> np.ndarray:
        if spectra.source_id is None:
            return np.zeros(len(spectra), bool)
        return is_validation(spectra.source_id, self.val_fraction)

    def epoch(self, epoch: int, batch_size: int, n_batches: int, device: torch.device
              ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` batches of (x, err) on ``device`` for one epoch.

        The next buffer is read while the current one trains; with a CUDA
        device it is pinned and copied asynchronously.
        """
        pin = device.type == "cuda"
        ready: "queue.Queue" = queue.Queue(maxsize=1)  # one buffer read ahead
        stop = threading.Event()

        def produce():
            try:
                for x, err in self._buffers(epoch):
                    if stop.is_set():
                        return
                    x, err = torch.from_numpy(x), torch.from_numpy(err)
                    if pin:
                        x, err = x.pin_memory(), err.pin_memory()
                    ready.put((x, err))
            except BaseException as exc:  # raised in the training loop
                ready.put(exc)
            ready.put(None)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        given = 0
        carry: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        try:
            while given < n_batches:
                item = ready.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                x, err = (t.to(device, non_blocking=pin) for t in item)
                if carry is not None:
                    x, err = torch.cat([carry[0], x]), torch.cat([carry[1], err])
                whole = (x.shape[0] // batch_size) * batch_size
                for i in range(0, whole, batch_size):
                    if given == n_batches:
                        break
                    yield x[i:i + batch_size], err[i:i + batch_size]
                    given += 1
                carry = (x[whole:], err[whole:])
            if given < n_batches and carry is not None and carry[0].shape[0] >= 2:
                # fewer stars than one batch (a small store, or a rank's small share): one
                # smaller batch, as the resident loop does
                yield carry
                given += 1
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.01)
        if given < n_batches:
            raise SpectraError(f"the store gave {given} batches in epoch {epoch + 1}, "
                               f"{n_batches} expected: did its shards change?")


def _write_cache(cache_dir: str, shard: str, values: np.ndarray, errors: np.ndarray
                 ) -> Tuple[str, str]:
    """A shard's training rows as two float32 .npy files, written atomically."""
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, os.path.splitext(os.path.basename(shard))[0])
    paths = []
    for suffix, array in (("values", values), ("errors", errors)):
        path = f"{stem}.{suffix}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32))
        paths.append(path)
    return paths[0], paths[1]


def _combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    if not n_a:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n


def refuse_a_part_too_large(store: str, rows: int, n_inputs: int, device: torch.device,
                             rank: int, world: int) -> None:
    """A rank's training stars held resident take 8 bytes an input a star, in this
    process's memory while they are read, then on the device: refuse a part that would
    not fit in either, with the ways round, before reading it. Under DDP the ranks
    decide together and all raise, so that none waits for a rank that stopped."""
    need = rows * n_inputs * 8
    limits = [("memory this process may use", machine.usable_memory())]
    if device.type == "cuda":
        limits.append((f"free memory of {device}", torch.cuda.mem_get_info(device)[0]))
    refusal = next((
        f"{store}: rank {rank} of {world} holds {rows:,} training stars of {n_inputs} "
        f"inputs, ~{need / 2**30:.1f} GB resident, more than 80% of the "
        f"{have / 2**30:.1f} GB {what}; use more processes (torchrun) or stream the store "
        "instead (--streaming)" for what, have in limits
        if have is not None and need > 0.8 * have), None)
    if world > 1 and dist.is_available() and dist.is_initialized():
        refusals = [None] * world
        dist.all_gather_object(refusals, refusal)
        refusal = next((r for r in refusals if r is not None), None)
    if refusal is not None:
        raise SpectraError(refusal)
