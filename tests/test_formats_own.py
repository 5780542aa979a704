"""Every archive format, from files these tests write themselves (no ../shared/data needed):
the same stars as DataLink CSV, ECSV, gzip'd ECSV, FITS, VOTable, Parquet and Avro give the
same store."""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xpsvae import ingest
from xpsvae.io.store import read_store_columns

N_STARS, K = 6, 55
BANDS = ("bp", "rp")


@pytest.fixture(scope="module")
def stars():
    return coefficient_records()


def coefficient_records():
    """Coefficient records: float64 coefficients, float32 errors, correlations and
    standard deviations (as the archive publishes them)."""
    rng = np.random.default_rng(11)
    out = {"source_id": (np.arange(N_STARS, dtype=np.int64) + 1) * 4_000_000_007}
    for band, basis in zip(BANDS, (56, 57)):
        out[f"{band}_coefficients"] = rng.normal(0, 300, (N_STARS, K))
        out[f"{band}_coefficient_errors"] = rng.uniform(1, 20, (N_STARS, K)).astype(np.float32)
        out[f"{band}_coefficient_correlations"] = rng.uniform(
            -0.3, 0.3, (N_STARS, K * (K - 1) // 2)).astype(np.float32)
        out[f"{band}_standard_deviation"] = rng.uniform(0.9, 1.3, N_STARS).astype(np.float32)
        out[f"{band}_n_relevant_bases"] = np.full(N_STARS, 40, np.int64)
        out[f"{band}_basis_function_id"] = np.full(N_STARS, basis, np.int64)
    return out


def _text(value, brackets: str) -> str:
    numbers = ", ".join(repr(float(v)) for v in value) if brackets == "()" else \
        ",".join(repr(float(v)) for v in value)
    return f'"{brackets[0]}{numbers}{brackets[1]}"'


def csv_text(stars, brackets: str) -> str:
    names = list(stars)
    lines = [",".join(names)]
    for i in range(N_STARS):
        lines.append(",".join(_text(stars[n][i], brackets) if stars[n].ndim == 2
                              else repr(float(stars[n][i])) if stars[n].dtype.kind == "f"
                              else str(stars[n][i]) for n in names))
    return "\n".join(lines) + "\n"


def _ecsv_text(stars) -> str:
    return "# %ECSV 1.0\n# ---\n# delimiter: ','\n" + csv_text(stars, "[]")


def _astropy_table(stars):
    from astropy.table import Table
    return Table({n: v for n, v in stars.items()})


def _avro(stars, path):
    fastavro = pytest.importorskip("fastavro")
    solution = {"type": "record", "name": "Solution", "fields": [
        {"name": "parameters", "type": {"type": "array", "items": "double"}},
        {"name": "covariance", "type": {"type": "array", "items": "double"}},
        {"name": "standardDeviation", "type": "float"},
        {"name": "numberOfParameters", "type": "int"}]}
    spectrum = {"type": "record", "name": "Spectrum", "fields": [
        {"name": "solution", "type": solution},
        {"name": "NRelevantBases", "type": "int"},
        {"name": "basisFunctionSetDefId", "type": "int"}]}
    schema = fastavro.parse_schema({"type": "record", "name": "MeanSpectrumSolutionWithCov",
                                    "fields": [{"name": "sourceId", "type": "long"},
                                               {"name": "bpSpec", "type": spectrum},
                                               {"name": "rpSpec", "type": "Spectrum"}]})
    records = []
    for i in range(N_STARS):
        record = {"sourceId": int(stars["source_id"][i])}
        for band in BANDS:
            std = float(stars[f"{band}_standard_deviation"][i])
            sigma = stars[f"{band}_coefficient_errors"][i].astype(np.float64) / std
            corr = np.eye(K)
            lower = np.tril_indices(K, -1)
            corr[lower] = stars[f"{band}_coefficient_correlations"][i]
            corr = corr + np.tril(corr, -1).T
            cov = corr * np.outer(sigma, sigma)
            record[f"{band}Spec"] = {"solution": {
                "parameters": stars[f"{band}_coefficients"][i].tolist(),
                "covariance": cov[np.tril_indices(K)].tolist(),
                "standardDeviation": std, "numberOfParameters": K},
                "NRelevantBases": 40,
                "basisFunctionSetDefId": int(stars[f"{band}_basis_function_id"][i])}
        records.append(record)
    with open(path, "wb") as f:
        fastavro.writer(f, schema, records)


def _write(kind, stars, tmp_path):
    if kind == "csv":
        path = tmp_path / "XP_CONTINUOUS_RAW.csv"
        path.write_text(csv_text(stars, "()"))
    elif kind == "ecsv":
        path = tmp_path / "XP_CONTINUOUS_RAW.ecsv"
        path.write_text(_ecsv_text(stars))
    elif kind == "ecsv.gz":
        path = tmp_path / "XpContinuousMeanSpectrum_000001-000002.csv.gz"
        path.write_bytes(gzip.compress(_ecsv_text(stars).encode()))
    elif kind == "fits":
        path = tmp_path / "XP_CONTINUOUS_RAW.fits"
        _astropy_table(stars).write(str(path), format="fits")
    elif kind == "votable":
        path = tmp_path / "XP_CONTINUOUS_RAW.xml"
        _astropy_table(stars).write(str(path), format="votable")
    elif kind == "parquet":
        path = tmp_path / "XP_CONTINUOUS_RAW.parquet"
        pq.write_table(pa.table({n: list(v) if v.ndim == 2 else v for n, v in stars.items()}),
                       str(path))
    else:
        path = tmp_path / "MeanSpectrumSolutionWithCov.avro"
        _avro(stars, path)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "ecsv", "ecsv.gz", "fits", "votable", "parquet",
                                  "avro"])
def test_every_format_written_here_gives_the_same_store(stars, tmp_path, kind):
    path = _write(kind, stars, tmp_path)
    manifest = ingest([path], str(tmp_path / "store"), progress=False)
    assert manifest["total"]["rows_kept"] == N_STARS, manifest["total"]
    got = read_store_columns(str(tmp_path / "store"))
    assert got["source_id"].to_pylist() == stars["source_id"].tolist()
    for band in BANDS:
        coefficients = np.array(got[f"{band}_coefficients"].to_pylist())
        np.testing.assert_array_equal(coefficients, stars[f"{band}_coefficients"])
        for name in ("coefficient_errors", "coefficient_correlations"):
            values = np.array(got[f"{band}_{name}"].to_pylist())
            if kind == "avro":  # derived from the covariance in float64, then float32:
                # a few float32 eps (6e-8), and the diagonal's square root
                np.testing.assert_allclose(values, stars[f"{band}_{name}"], rtol=3e-7,
                                           atol=3e-8)
            else:  # float32 as written, read back to the bit
                np.testing.assert_array_equal(values.astype(np.float32),
                                              stars[f"{band}_{name}"])
