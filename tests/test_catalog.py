"""Catalogue-scale encoding of a store: in-process, on a Dask LocalCluster, restartable."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xpsvae import SVAE, TrainConfig, read_spectra
from xpsvae.catalog import encode_store, environment_kept
from xpsvae.ingestion.pipeline import ingest

from .conftest import shared_file

pytest.importorskip("gaiaxpy", reason="the store's G flux is the synthetic one (GaiaXPy)")


@pytest.fixture(scope="module")
def store_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat")
    store = str(root / "store")
    # 2,000 real DR3 sources without a gaia_source table: synthetic G, four shards
    ingest([shared_file("xp_coefficients_2000", "xp_continuous_combined_chunk0.fits")], store,
           rows_per_shard=500, progress=False)
    model_dir = str(root / "model")
    SVAE(train_config=TrainConfig(epochs=2, calibrate_epochs=1, threads=2)).fit(
        read_spectra(store), out_dir=model_dir, progress=False)
    return store, model_dir


def _tables(out):
    names = sorted(n for n in os.listdir(out) if n.startswith("part-"))
    return {n: pq.read_table(os.path.join(out, n)) for n in names}


def test_local_cluster_equals_single_process_row_for_row(tmp_path, store_and_model):
    store, model_dir = store_and_model
    one = encode_store(model_dir, store, str(tmp_path / "one"), progress=False)
    environ = dict(os.environ)
    two = encode_store(model_dir, store, str(tmp_path / "two"), scheduler="local", workers=2,
                       progress=False)
    # the cluster's one-thread settings for its workers do not stay in this process
    assert dict(os.environ) == environ
    assert one["complete"] and two["complete"] and one["rows"] == two["rows"] > 1900
    a, b = _tables(str(tmp_path / "one")), _tables(str(tmp_path / "two"))
    assert list(a) == list(b) and len(a) == 4
    for name in a:
        assert a[name].equals(b[name]), name  # values, row order and schema
    table = a["part-00000.parquet"]
    assert table.column_names == ["source_id", "input_row", "latent_mean", "latent_std",
                                  "reconstruction_chi2_per_dof", "anomaly_score", "n_observed"]
    import json
    meta = json.loads(table.schema.metadata[b"xpsvae"])
    assert meta["format_version"] == 1 and len(meta["preprocessing"]["std"]) == 110
    assert np.isfinite(table.column("anomaly_score").to_numpy()).all()


def test_restart_skips_encoded_shards(tmp_path, store_and_model):
    store, model_dir = store_and_model
    out = str(tmp_path / "out")
    encode_store(model_dir, store, out, progress=False)
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in _tables(out)}
    first = pq.read_table(os.path.join(out, "part-00002.parquet"))
    os.remove(os.path.join(out, "part-00002.parquet"))  # as if the job stopped there
    manifest = encode_store(model_dir, store, out, progress=False)
    after = {n: os.path.getmtime(os.path.join(out, n)) for n in _tables(out)}
    assert manifest["complete"] and len(manifest["shards"]) == 4
    assert all(after[n] == before[n] for n in before if n != "part-00002.parquet")
    assert pq.read_table(os.path.join(out, "part-00002.parquet")).equals(first)


def test_remote_scheduler_address(tmp_path, store_and_model):
    from dask.distributed import LocalCluster
    store, model_dir = store_and_model
    encode_store(model_dir, store, str(tmp_path / "here"), progress=False)
    # Dask leaves one-thread settings for its workers in this process's environment
    with environment_kept(), LocalCluster(n_workers=2, threads_per_worker=1,
                                          dashboard_address=None) as cluster:
        encode_store(model_dir, store, str(tmp_path / "there"),
                     scheduler=cluster.scheduler_address, progress=False)
    a, b = _tables(str(tmp_path / "here")), _tables(str(tmp_path / "there"))
    assert all(a[n].equals(b[n]) for n in a)


def test_default_local_cluster_size_follows_cores_shards_and_memory(monkeypatch):
    from xpsvae import catalog
    from xpsvae.core import machine
    monkeypatch.setattr(machine, "usable_cores", lambda: 16)
    monkeypatch.setattr(machine, "usable_memory", lambda: 64 * 2**30)
    assert [catalog.default_encode_workers(n) for n in (0, 3, 200)] == [1, 3, 16]
    monkeypatch.setattr(machine, "usable_memory", lambda: 6 * 2**30)  # a 6 GB container
    assert catalog.default_encode_workers(200) == 6
    monkeypatch.setattr(machine, "usable_memory", lambda: None)
    assert catalog.default_encode_workers(200) == 16


def test_output_folder_reads_as_one_table_and_old_manifests_are_taken_over(tmp_path,
                                                                           store_and_model):
    """pandas and pyarrow read the output folder itself (its manifest is one they pass by);
    an output folder of the earlier layout (manifest.json) restarts from it."""
    import json

    import pandas as pd
    import pyarrow.dataset as ds
    store, model_dir = store_and_model
    out = str(tmp_path / "out")
    manifest = encode_store(model_dir, store, out, progress=False)
    assert sorted(n for n in os.listdir(out) if not n.startswith("part-")) == ["_manifest.json"]
    frame = pd.read_parquet(out)
    assert len(frame) == manifest["rows"]
    from xpsvae.cli.describe import describe
    described = describe(out)
    assert (described["what"], described["rows"], described["shards"], described["complete"]) \
        == ("encoded catalogue", manifest["rows"], 4, True)
    from xpsvae.cli import main  # generate reads the folder's latents as one table
    generated = str(tmp_path / "generated.parquet")
    assert main(["--quiet", "generate", model_dir, "--latent", out, "--out", generated]) == 0
    assert pq.read_metadata(generated).num_rows == manifest["rows"]
    shards = pa.concat_tables(_tables(out).values())
    assert ds.dataset(out).to_table().num_rows == shards.num_rows
    assert sorted(frame["source_id"]) == sorted(shards.column("source_id").to_pylist())
    # the earlier layout: the manifest under its old name (info still tells it from a
    # store's), a shard still to do
    os.rename(os.path.join(out, "_manifest.json"), os.path.join(out, "manifest.json"))
    assert describe(out)["what"] == "encoded catalogue"
    os.remove(os.path.join(out, "part-00001.parquet"))
    kept = os.path.getmtime(os.path.join(out, "part-00000.parquet"))
    again = encode_store(model_dir, store, out, progress=False)
    assert again["complete"] and again["rows"] == manifest["rows"]
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert os.path.getmtime(os.path.join(out, "part-00000.parquet")) == kept
    with open(os.path.join(out, "_manifest.json")) as f:
        assert [s["output"] for s in json.load(f)["shards"]] == sorted(_tables(out))


def test_a_store_is_never_taken_for_the_output_folder(tmp_path, store_and_model):
    """Encoding into the input store, or into another store, is refused before anything
    is written: its shards and its manifest stay as they were."""
    from xpsvae.core.errors import SpectraError
    store, model_dir = store_and_model
    before = {n: os.path.getmtime(os.path.join(store, n)) for n in os.listdir(store)}
    with pytest.raises(SpectraError, match="the output folder is the input"):
        encode_store(model_dir, store, store, progress=False)
    other = str(tmp_path / "other_store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], other, progress=False)
    with pytest.raises(SpectraError, match="a store from xpsvae ingest"):
        encode_store(model_dir, store, other, progress=False)
    assert {n: os.path.getmtime(os.path.join(store, n)) for n in os.listdir(store)} == before
    # (a store's hidden files, its writer's lock among them, are no readers' business)
    assert sorted(n for n in os.listdir(other) if not n.startswith(".")) == [
        "manifest.json", "part-00000.parquet",
                                         "set_aside.parquet"]


def test_score_in_python_is_encodes_output_and_finds_a_broken_spectrum(tmp_path,
                                                                      store_and_model):
    """SVAE.score gives encode's columns row for row (to rounding); a spectrum with one band's
    coefficients scrambled scores as the least like the others."""
    import dataclasses
    store, model_dir = store_and_model
    model = SVAE.load(model_dir)
    stars = read_spectra(store)
    scores = model.score(stars)
    out = str(tmp_path / "out")
    encode_store(model_dir, store, out, progress=False)
    encoded = pa.concat_tables(_tables(out).values())
    assert np.array_equal(encoded.column("source_id").to_numpy(), stars.source_id)
    # Encode runs shard by shard on one thread: the float32 network's sums (eps 6e-8) over
    # ~100 inputs per layer may round in another order, a few hundred eps at most
    for name in ("reconstruction_chi2_per_dof", "anomaly_score"):
        np.testing.assert_allclose(encoded.column(name).to_numpy(), scores[name], rtol=1e-5)
    np.testing.assert_allclose(
        np.stack(encoded.column("latent_mean").to_numpy(zero_copy_only=False)),
        scores["latent_mean"], rtol=1e-4, atol=1e-6)
    from_arrays = model.score(stars.values, stars.errors)  # plain arrays, as fit takes
    assert np.array_equal(from_arrays["anomaly_score"], scores["anomaly_score"])
    bad = stars.errors.copy()
    bad[7, 3] = -1.0  # one input unmeasured: the star is scored on the others
    partial = model.score(stars.values, bad)
    assert partial["n_observed"][7] == stars.n_inputs - 1
    assert (np.delete(partial["n_observed"], 7) == stars.n_inputs).all()
    bad[7, :stars.n_inputs // 2 + 1] = np.nan  # fewer than half measured: set aside
    from xpsvae.core.errors import SpectraError
    with pytest.raises(SpectraError, match="1 of the rows given set aside, the first row 7"):
        model.score(stars.values, bad)
    with pytest.raises(SpectraError, match="scoring needs errors"):
        model.score(stars.values)
    broken = stars.values.copy()
    victim = int(np.argmin(scores["anomaly_score"]))  # the most ordinary star
    broken[victim, :55] = np.random.default_rng(0).permutation(broken[victim, :55])
    rescored = model.score(dataclasses.replace(stars, values=broken))
    assert int(np.argmax(rescored["anomaly_score"])) == victim
    assert rescored["reconstruction_chi2_per_dof"][victim] > \
        np.percentile(scores["reconstruction_chi2_per_dof"], 99)
