"""Reading tables of spectra: formats, bad input, row accounting."""
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from xpsvae import SVAE, SpectraError, SpectraSet, read_spectra
from xpsvae.io.library import benchmark_sets, benchmark_split

from .conftest import shared_file


def _write_parquet(path, flux, err, source_id):
    pq.write_table(pa.table({"source_id": source_id, "flux": [list(r) for r in flux],
                             "flux_error": [list(r) for r in err]}), path)


def test_library_is_the_real_apogee_set(library):
    assert len(library) == 40226 and library.n_inputs == 343
    assert library.accounting.rows_set_aside == 0
    assert library.wavelength_nm[0] == 336 and library.wavelength_nm[-1] == 1020
    assert int(library.labels["fe_h"].isna().sum()) == 4480
    # duplicated Gaia ids are reported, not merged
    assert any("share" in note for note in library.accounting.notes)


def test_benchmark_split_is_the_documented_permutation():
    np.random.seed(0)
    perm = np.random.permutation(40226)
    train, test = benchmark_split(40226)
    np.testing.assert_array_equal(test, perm[:4022])
    np.testing.assert_array_equal(train, perm[4022:])


def test_benchmark_sets_are_the_split_stars(small_library):
    train, test = benchmark_sets(small_library, shared_sources=True)
    train_index, test_index = benchmark_split(len(small_library))
    np.testing.assert_array_equal(train.source_id, small_library.source_id[train_index])
    np.testing.assert_array_equal(test.values, small_library.values[test_index])
    assert len(test) == int(0.1 * len(small_library)) and \
        len(train) + len(test) == len(small_library)


def test_no_test_star_shares_its_gaia_source_with_a_training_star(library):
    """The library holds some Gaia sources under two APOGEE entries; a test star whose
    source a training star has is left out of the test stars, and only those: 59 of the
    split's 4,022."""
    train, test = benchmark_sets(library)
    _, every = benchmark_sets(library, shared_sources=True)
    assert not np.isin(test.source_id, train.source_id).any()
    shared = np.isin(every.source_id, train.source_id)
    np.testing.assert_array_equal(test.source_id, every.source_id[~shared])
    assert (len(every), len(test)) == (4022, 3963)


def test_parquet_fits_and_hdf5_give_identical_arrays(small_library, tmp_path):
    stars = small_library.subset(np.arange(50))
    _write_parquet(tmp_path / "s.parquet", stars.values, stars.errors, stars.source_id)
    Table({"source_id": stars.source_id, "flux": stars.values,
           "flux_error": stars.errors}).write(tmp_path / "s.fits")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["source_id"], f["flux"], f["flux_error"] = stars.source_id, stars.values, stars.errors
    for name in ("s.parquet", "s.fits", "s.h5"):
        got = read_spectra(tmp_path / name)
        np.testing.assert_array_equal(got.values, stars.values)
        np.testing.assert_array_equal(got.errors, stars.errors)
        np.testing.assert_array_equal(got.source_id, stars.source_id)
        assert got.kind == "sampled" and got.accounting.rows_kept == 50


def test_unmeasured_inputs_make_a_row_partial_and_too_few_measured_set_it_aside(
        small_library, tmp_path):
    stars = small_library.subset(np.arange(20))
    n = stars.n_inputs
    flux, err = stars.values.astype(np.float64), stars.errors.astype(np.float64)
    flux[3, 10] = np.nan
    flux[5, 0] = np.inf
    err[7, 200] = 0.0
    err[8, 5] = -1.0
    err[9, 1] = np.nan
    flux[11, : n // 2 + 1] = np.nan  # fewer than half measured: set aside
    flux[12, : n // 2] = np.nan  # 172 of 343 measured, the least kept
    _write_parquet(tmp_path / "bad.parquet", flux, err, stars.source_id)
    got = read_spectra(tmp_path / "bad.parquet")
    acc = got.accounting
    assert (acc.rows_read, acc.rows_kept, acc.rows_set_aside, acc.rows_partial) == (20, 19, 1, 6)
    assert acc.partial_reasons() == {"non-finite value": 3, "zero or negative error": 2,
                                     "non-finite error": 1}
    assert [(r, c) for r, _, c in acc.partial] == [(3, 10), (5, 0), (7, 200), (8, 5), (9, 1),
                                                   (12, 0)]
    assert acc.set_aside == [(11, f"fewer than {n - n // 2} of its {n} inputs measured", 0)]
    assert "6 partial" in acc.summary() and "set aside 1" in acc.summary()
    # an unmeasured input is NaN in values and errors alike; every other one as given
    holes = ~got.observed
    assert np.array_equal(holes, ~np.isfinite(got.errors))
    assert holes.sum() == 5 + n // 2
    rows = got.input_row
    assert 11 not in rows.tolist()
    keep = np.isin(np.arange(20), rows)
    measured = np.isfinite(flux[keep]) & np.isfinite(err[keep]) & (err[keep] > 0)
    assert np.array_equal(got.values[~holes], flux[keep][measured].astype(np.float32))


def test_empty_table_is_an_error(tmp_path):
    pq.write_table(pa.table({"source_id": pa.array([], pa.int64()),
                             "flux": pa.array([], pa.list_(pa.float32())),
                             "flux_error": pa.array([], pa.list_(pa.float32()))}),
                   tmp_path / "empty.parquet")
    with pytest.raises(SpectraError, match="empty.parquet.*no rows"):
        read_spectra(tmp_path / "empty.parquet")


def test_all_rows_bad_is_an_error():
    with pytest.raises(SpectraError, match="no usable row"):
        SpectraSet.from_arrays(np.full((3, 4), np.nan), np.ones((3, 4)))


def test_ragged_array_names_row_and_column(tmp_path):
    pq.write_table(pa.table({"source_id": [1, 2], "flux": [[1.0, 2.0, 3.0], [1.0, 2.0]],
                             "flux_error": [[0.1, 0.1, 0.1], [0.1, 0.1]]}), tmp_path / "r.parquet")
    with pytest.raises(SpectraError, match=r"r.parquet: row 1, column 'flux': array of length 2"):
        read_spectra(tmp_path / "r.parquet")


def test_table_without_spectra_is_an_error(tmp_path):
    pq.write_table(pa.table({"source_id": [1, 2], "ra": [1.0, 2.0]}), tmp_path / "x.parquet")
    with pytest.raises(SpectraError, match="no spectrum columns"):
        read_spectra(tmp_path / "x.parquet")
    with pytest.raises(SpectraError, match="unknown format"):
        read_spectra(__file__)


def test_wrong_width_for_a_model_is_an_error(small_library):
    from xpsvae import TrainConfig
    model = SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, threads=2)).fit(
        small_library.subset(np.arange(300)), progress=False)
    with pytest.raises(SpectraError, match=r"expects \(n_stars, 343\)"):
        model.encode(np.zeros((4, 110)))


def test_real_gaia_sampled_datalink_file():
    got = read_spectra(shared_file("gaia_dr3_xp", "XP_SAMPLED_RAW_dr3int6.fits"))
    assert got.kind == "sampled" and len(got) == 2 and got.n_inputs == 343
    assert got.accounting.rows_read == 2


def test_real_gaia_coefficients_need_g_flux_and_are_divided_by_it(tmp_path):
    path = shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.fits")
    with pytest.raises(SpectraError, match="phot_g_mean_flux"):
        read_spectra(path)
    table = Table.read(path)
    g_flux = np.array([2.0e5, 7.5e3])  # any positive G flux: the division is what is tested
    table["phot_g_mean_flux"] = g_flux
    table.write(tmp_path / "with_g.fits")
    got = read_spectra(tmp_path / "with_g.fits")
    assert got.kind == "coefficients" and got.n_inputs == 110
    raw = np.array([np.concatenate([bp, rp]) for bp, rp in
                    zip(table["bp_coefficients"], table["rp_coefficients"])], dtype=float)
    # the set holds float32 (eps 6e-8): one rounding of the float64 quotient
    np.testing.assert_allclose(got.values, raw / g_flux[:, None], rtol=1e-6)
    assert got.normalisation == "phot_g_mean_flux"
    assert got.input_names()[0] == "bp_0" and got.input_names()[-1] == "rp_54"


def test_real_flattened_coefficient_table(tmp_path):
    path = shared_file("xp_coefficients_2000", "xp_continuous_combined_chunk0.fits")
    table = Table.read(path)
    with pytest.raises(SpectraError, match="phot_g_mean_flux"):
        read_spectra(path)
    table["phot_g_mean_flux"] = np.full(len(table), 1.0e4)
    table["phot_g_mean_flux"][7] = np.nan  # no G flux for one star: set aside, counted
    table[:300].write(tmp_path / "flat.fits")
    got = read_spectra(tmp_path / "flat.fits")
    assert got.n_inputs == 110 and got.kind == "coefficients"
    assert got.accounting.rows_read == 300
    assert got.accounting.rows_kept + got.accounting.rows_set_aside == 300
    assert 7 in [r for r, _, _ in got.accounting.set_aside]
    # float32 (eps 6e-8), as above
    np.testing.assert_allclose(got.values[0, 0], table["bp_coeff_0"][0] / 1.0e4, rtol=1e-6)
