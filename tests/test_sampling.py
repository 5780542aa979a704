"""Coefficients to sampled flux against GaiaXPy's own calibration."""
import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from xpsvae.cli import main
from xpsvae.ingestion.pipeline import ingest
from xpsvae.ingestion.records import parse_array_text

from .conftest import shared_file

gaiaxpy = pytest.importorskip("gaiaxpy", reason="GaiaXPy provides the design matrices")

from xpsvae.flux import XPSampler, covariance_matrices  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("s") / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], path, progress=False)
    return path


def _bands(store):
    import os
    table = pq.read_table(os.path.join(store, "part-00000.parquet"))
    return tuple(tuple(np.array(table.column(f"{b}_{c}").to_pylist())
                       for c in ("coefficients", "coefficient_errors", "coefficient_correlations"))
                 for b in ("bp", "rp"))


def test_default_grid_matches_gaiaxpy_calibrate_output(store):
    rows = list(csv.DictReader(open(shared_file("gaia_dr3_xp",
                                                "calibrator_solution_default.csv"))))
    ref_flux = np.array([parse_array_text(r["flux"]) for r in rows])
    ref_error = np.array([parse_array_text(r["flux_error"]) for r in rows])
    sampler = XPSampler()
    bp, rp = _bands(store)
    flux, error = sampler.flux_and_error(bp, rp)
    # GaiaXPy reads the float32 errors and correlations as float64 text while the store
    # keeps float32 (eps 6e-8): the errors agree to ~1e-7-1e-8, the flux (float64
    # coefficients) to ~1e-14; 1e-6 bounds both whatever the BLAS
    np.testing.assert_allclose(flux, ref_flux, rtol=1e-6)
    np.testing.assert_allclose(error, ref_error, rtol=1e-6)
    np.testing.assert_array_equal(sampler.wavelength_nm, np.arange(336.0, 1021.0, 2.0))


def test_user_grid_matches_gaiaxpy(store):
    grid = np.arange(400.0, 900.0, 7.5)
    from gaiaxpy import calibrate
    reference, _ = calibrate(shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"), sampling=grid,
                             save_file=False)
    bp, rp = _bands(store)
    flux, error = XPSampler(grid).flux_and_error(bp, rp)
    # as above: float32 errors and correlations, read as float64 by GaiaXPy
    np.testing.assert_allclose(flux, np.vstack(reference["flux"]), rtol=1e-6)
    np.testing.assert_allclose(error, np.vstack(reference["flux_error"]), rtol=1e-6)


def test_covariance_matches_gaiaxpy_construction(store):
    from gaiaxpy.core.generic_functions import array_to_symmetric_matrix
    from gaiaxpy.spectrum.utils import _correlation_to_covariance_dr3int5
    (coeff, errors, correlations), _ = _bands(store)
    ours = covariance_matrices(errors, correlations)
    import os
    table = pq.read_table(os.path.join(store, "part-00000.parquet"))
    std = np.array(table.column("bp_standard_deviation").to_pylist())
    for i in range(len(coeff)):
        corr = array_to_symmetric_matrix(correlations[i], 55)
        theirs = _correlation_to_covariance_dr3int5(corr, errors[i], std[i]) * std[i] ** 2
        # the same float64 products of the same values in another order: a few eps (2e-16)
        np.testing.assert_allclose(ours[i], theirs, rtol=1e-12)
    assert np.allclose(ours, np.swapaxes(ours, 1, 2))
    np.testing.assert_allclose(np.sqrt(np.einsum("nkk->nk", ours)), errors)


def test_flux_command_writes_a_trainable_table(tmp_path, store):
    out = str(tmp_path / "flux.parquet")
    assert main(["flux", store, "--out", out]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 2 and len(table.column("flux").to_pylist()[0]) == 343
    meta = json.loads(table.schema.metadata[b"xpsvae"])
    assert meta["units"] == "W m^-2 nm^-1" and meta["wavelength_nm"][0] == 336.0
    from xpsvae import read_spectra
    spectra = read_spectra(out)
    assert spectra.kind == "sampled" and spectra.n_inputs == 343
    normalised = str(tmp_path / "normalised.parquet")
    assert main(["flux", store, "--out", normalised, "--normalise"]) == 0
    g_flux = np.array(pq.read_table(normalised).column("phot_g_mean_flux").to_pylist())
    ratio = np.array(pq.read_table(normalised).column("flux").to_pylist()) / np.array(
        table.column("flux").to_pylist())
    # one float64 division and its inverse: a few eps (2e-16)
    np.testing.assert_allclose(ratio, np.broadcast_to(1 / g_flux[:, None], ratio.shape),
                               rtol=1e-12)
    assert "per e-/s of G" in json.loads(pq.read_table(normalised).schema.metadata[b"xpsvae"])[
        "units"]


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(2, 1485\)"):
        covariance_matrices(np.ones((2, 55)), np.zeros((2, 1484)))
    with pytest.raises(ValueError, match="bp coefficients must have shape"):
        XPSampler().flux(np.zeros((1, 54)), np.zeros((1, 55)))


def test_store_flux_is_streamed_batch_by_batch_with_the_same_numbers(tmp_path, monkeypatch):
    """Shards of one star, read one star at a time, give GaiaXPy's calibration as one batch
    does; stars lacking BP are left out and counted."""
    from xpsvae.flux import write_store_flux
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"),
            shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW_with_missing_BP.csv")], store,
           rows_per_shard=1, progress=False)
    out = str(tmp_path / "flux.parquet")
    meta = write_store_flux(store, out, progress=False, batch_rows=1)
    table = pq.read_table(out)
    assert meta["stars"] == table.num_rows and meta["stars_without_both_bands"] >= 1
    assert table.num_rows + meta["stars_without_both_bands"] == json.load(
        open(f"{store}/manifest.json"))["total"]["rows_kept"]
    assert json.loads(table.schema.metadata[b"xpsvae"])["stars"] == table.num_rows
    rows = list(csv.DictReader(open(shared_file("gaia_dr3_xp",
                                                "calibrator_solution_default.csv"))))
    by_id = dict(zip(table.column("source_id").to_pylist(), table.column("flux").to_pylist()))
    for r in rows:
        np.testing.assert_allclose(by_id[int(r["source_id"])], parse_array_text(r["flux"]),
                                   rtol=1e-6)
    assert not (tmp_path / "flux.parquet.tmp").exists()


def test_store_flux_without_correlations_names_the_star(tmp_path, capsys):
    """A real flattened table gives no correlations: the errors cannot be propagated, and the
    command says so in one line, naming the shard and row."""
    from astropy.table import Table
    table = Table.read(shared_file("xp_coefficients_2000", "xp_continuous_combined_chunk0.fits"))
    table.meta["name"] = "flattened"
    store = str(tmp_path / "store")
    ingest([table[:20]], store, progress=False)
    assert main(["--quiet", "flux", store, "--out", str(tmp_path / "f.parquet")]) == 2
    err = capsys.readouterr().err
    assert "part-00000.parquet" in err and "coefficient_correlations is missing" in err \
        and "input row 0" in err
    assert not os.path.exists(tmp_path / "f.parquet.tmp")  # no half-written file left


def test_encoding_coefficients_without_correlations_names_file_row_and_column(tmp_path,
                                                                              capsys):
    """The same flattened table, encoded by the shipped model of sampled spectra (and
    labelled by the shipped label model): refused in one line that says why and what to do,
    not a bare 'no arrays'."""
    from astropy.table import Table
    table = Table.read(shared_file("xp_coefficients_2000", "xp_continuous_combined_chunk0.fits"))
    table.meta["name"] = "flattened"
    store = str(tmp_path / "store")
    ingest([table[:20]], store, progress=False)
    for command in (["encode", "builtin", store], ["labels", "predict", "builtin",
                                                   os.path.join(store, "part-00000.parquet")]):
        out = str(tmp_path / "out.parquet")
        assert main(["--quiet", *command, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "part-00000.parquet: input row 0, column " \
            "bp_coefficient_correlations: empty (its input file gave no correlations; 20 of " \
            "20 rows lack them)" in err[0] and "ingest the archive's full records" in err[0]
        assert not os.path.exists(out)
