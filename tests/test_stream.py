"""Training streamed from a store's shards (stores larger than memory)."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from xpsvae import SVAE, TrainConfig, read_spectra
from xpsvae.cli import main
from xpsvae.core.errors import SpectraError
from xpsvae.model.preprocess import Standardizer
from xpsvae.model.stream import StoreStream, is_validation, read_shard


@pytest.fixture
def store(calspec_store):
    return calspec_store


def test_an_epoch_gives_every_training_star_once_shuffled_across_shards(store):
    stream = StoreStream.scan(store, val_fraction=0.2, seed=5, buffer_shards=3)
    everything = read_spectra(store)
    val = is_validation(everything.source_id, 0.2)
    assert 0 < val.sum() < len(val) and len(stream.x_val) == val.sum()
    expected = Standardizer.fit(everything.values[~val])
    # float64 sums of float32 values over the shards, merged, against one pass: n eps
    # (n ~1e3 stars, eps 2e-16), far below 1e-10
    np.testing.assert_allclose(stream.standardizer.mean, expected.mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stream.standardizer.std, expected.std, rtol=1e-10)

    n_batches = stream.batches_per_epoch(4)
    assert n_batches == (~val).sum() // 4
    epochs = []
    for epoch in range(2):
        batches = list(stream.epoch(epoch, 4, n_batches, torch.device("cpu")))
        assert len(batches) == n_batches and all(b[0].shape == (4, 110) for b in batches)
        epochs.append(torch.cat([b[0] for b in batches]).numpy())
    train_x = expected.transform(everything.values[~val]).astype(np.float32)
    for rows in epochs:  # every training star, once (but for the ragged end)
        kept = {r.tobytes() for r in rows}
        assert len(kept) == len(rows) and kept <= {r.tobytes() for r in train_x}
    assert not np.array_equal(epochs[0], epochs[1])  # a new order every epoch
    shard_of = {}
    for i, path in enumerate(stream.shards):
        s = read_shard(path)
        for r in Standardizer.transform(expected, s.values):
            shard_of[r.astype(np.float32).tobytes()] = i
    first_batches = [shard_of[r.tobytes()] for r in epochs[0][:40]]
    assert len(set(first_batches)) > 1  # rows of several shards are mixed together


def test_each_rank_reads_only_its_own_shards(store):
    parts = [StoreStream.scan(store, rank=r, world=3).shards for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(StoreStream.scan(store).shards)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_streamed_training_is_repeatable_and_resumes_to_the_same_weights(store, tmp_path):
    first = _repeatable_and_resumable(store, tmp_path, ["--streaming", "--buffer-shards", "2"],
                                      buffer_shards=2)
    config = TrainConfig(epochs=3, calibrate_epochs=1, batch_size=32, threads=2, seed=4)
    history = pd.read_csv(tmp_path / "c" / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3, 4] and np.isfinite(history.val_loss).all()
    # epochs read from the float32 cache: the same rows in the same order, the same weights
    cache = str(tmp_path / "cache")
    SVAE(train_config=config).fit_store(store, out_dir=str(tmp_path / "d"), progress=False,
                                        buffer_shards=2, cache_dir=cache)
    assert len([n for n in os.listdir(cache) if n.endswith(".npy")]) == 2 * 12
    cached = load_file(str(tmp_path / "d" / "model.safetensors"))
    for k in first:
        torch.testing.assert_close(first[k], cached[k], rtol=0, atol=0)


def test_a_shard_without_usable_rows_is_left_out_and_counted(store, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    shard = os.path.join(copy, "part-00003.parquet")
    table = pq.read_table(shard)  # as if no G flux could be found for any of its stars
    table = table.set_column(table.schema.get_field_index("phot_g_mean_flux"), "phot_g_mean_flux",
                             pa.array(np.full(table.num_rows, np.nan)))
    pq.write_table(table, shard)
    stream = StoreStream.scan(copy, val_fraction=0.0)
    assert shard not in stream.shards and len(stream.shards) == 11
    acc = stream.accounting
    assert (acc["rows_read"], acc["rows_kept"], acc["rows_set_aside"]) == (300, 275, 25)
    assert acc["reasons"] == {"in a shard without usable rows": 25}
    assert acc["shards_without_usable_rows"][0].startswith(shard)
    out = str(tmp_path / "model")
    assert main(["--quiet", "train", copy, "--streaming", "--out", out, "--epochs", "1",
                 "--calibrate-epochs", "0", "--batch-size", "32", "--threads", "2"]) == 0
    import json
    assert json.load(open(os.path.join(out, "data_accounting.json")))["rows_set_aside"] == 25


def test_resident_training_holds_each_ranks_own_stars(store, tmp_path, monkeypatch):
    """--resident: a rank's training stars, read once, standardised, in shard order, from
    Parquet or the cache alike; under 3 ranks the parts are disjoint and together every
    training star; training on them is repeatable, resumes to the same weights, and a part
    too large for memory is refused before it is read."""
    stream = StoreStream.scan(store, val_fraction=0.2, seed=5)
    x, err = stream.training_tensors()
    everything = read_spectra(store)
    train = ~is_validation(everything.source_id, 0.2)
    expected_x, expected_err = stream.standardizer.transform(everything.values[train],
                                                             everything.errors[train])
    assert x.dtype == torch.float32 and x.shape == (stream.train_rows, 110)
    np.testing.assert_array_equal(x.numpy(), expected_x)  # read_spectra's order: the shards'
    np.testing.assert_array_equal(err.numpy(), expected_err)
    cached = StoreStream.scan(store, val_fraction=0.2, seed=5,
                              cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(cached.training_tensors()[0].numpy(), expected_x)
    parts = [StoreStream.scan(store, val_fraction=0.2, rank=r, world=3) for r in range(3)]
    for part in parts:  # (under DDP the scan combines the ranks' statistics itself)
        part.standardizer = stream.standardizer
    rows = [{r.tobytes() for r in p.training_tensors()[0].numpy()} for p in parts]
    assert sum(len(r) for r in rows) == len(expected_x) and set().union(*rows) == \
        {r.tobytes() for r in stream.standardizer.transform(everything.values[train])}

    first = _repeatable_and_resumable(store, tmp_path, ["--resident"], resident=True)
    streamed = load_file(_trained(store, tmp_path / "s", "--streaming", *COMMON))
    assert any(not torch.equal(first[k], streamed[k]) for k in first)  # batches differ

    from xpsvae.core import machine
    config = TrainConfig(epochs=3, calibrate_epochs=1, batch_size=32, threads=2, seed=4)
    monkeypatch.setattr(machine, "usable_memory", lambda: 100_000)
    with pytest.raises(SpectraError, match="rank 0 of 1 holds .* training stars of 110 inputs"):
        SVAE(train_config=config).fit_store(store, progress=False, resident=True)
    assert main(["--quiet", "train", store, "--resident", "--streaming", "--out",
                 str(tmp_path / "x")]) == 2


COMMON = ["--batch-size", "32", "--calibrate-epochs", "1", "--threads", "2", "--seed", "4",
          "--epochs", "3"]


def _repeatable_and_resumable(store, tmp_path, options, **fit_store_options) -> dict:
    """Two seeded CLI runs give the same weights, and so does a run stopped after two epochs
    then resumed; the weights."""
    first = load_file(_trained(store, tmp_path / "a", *options, *COMMON))
    second = load_file(_trained(store, tmp_path / "b", *options, *COMMON))
    for k in first:  # the same seed gives the same weights on CPU
        torch.testing.assert_close(first[k], second[k], rtol=0, atol=0)

    class Crash(Exception):
        pass

    def crash_after_two(trainer):
        if trainer.epoch == 2:
            raise Crash
    config = TrainConfig(epochs=3, calibrate_epochs=1, batch_size=32, threads=2, seed=4)
    with pytest.raises(Crash):
        SVAE(train_config=config).fit_store(store, out_dir=str(tmp_path / "c"), progress=False,
                                            on_epoch_end=crash_after_two, **fit_store_options)
    SVAE(train_config=config).fit_store(store, out_dir=str(tmp_path / "c"), resume=True,
                                        progress=False, **fit_store_options)
    resumed = load_file(str(tmp_path / "c" / "model.safetensors"))
    for k in first:
        torch.testing.assert_close(first[k], resumed[k], rtol=0, atol=0)
    return first


def _trained(store, out, *options):
    assert main(["--quiet", "train", store, *options, "--out", str(out)]) == 0
    return str(out / "model.safetensors")
