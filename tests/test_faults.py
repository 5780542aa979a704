"""The fault matrix: the commands run as a user runs them, in a subprocess, misused.

Each case asserts the exit code, that the one-line message names the culprit
and the way out, that no traceback reaches the user, and that nothing was
lost or half-written. The data are written here (real library spectra, a
coefficient store made from an in-memory table), so no case needs
``../shared/data``.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xpsvae import SVAE, TrainConfig, ingest
from xpsvae.ingestion.writer import StoreWriter


def xpsvae(*args, timeout=300):
    """Run ``xpsvae ARGS`` as a user would: (exit code, stderr)."""
    done = subprocess.run([sys.executable, "-m", "xpsvae", "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr


def refused(args, *named):
    """The command exits 2 with a line naming each of ``named``, and no traceback."""
    code, err = xpsvae(*args)
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    # the failure is one line, the last (a table's read accounting may come before it)
    line = err.strip().splitlines()[-1]
    assert line.startswith("xpsvae ") and ": error: " in line, err
    for name in named:
        assert str(name) in line, (name, line)
    return line


def digest(folder) -> dict:
    """Every file of a folder (or a file) by its content."""
    if os.path.isfile(folder):
        return {"": hashlib.sha256(open(folder, "rb").read()).hexdigest()}
    return {os.path.relpath(os.path.join(d, n), folder):
            hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
            for d, _, names in os.walk(folder) for n in names}


def _table_file(path, rows):
    """A Parquet table of sampled spectra from a SpectraSet part."""
    n = rows.n_inputs
    offsets = pa.array(np.arange(0, (len(rows) + 1) * n, n, dtype=np.int32))
    pq.write_table(pa.table({
        "source_id": rows.source_id,
        "flux": pa.ListArray.from_arrays(offsets, pa.array(rows.values.ravel().astype(float))),
        "flux_error": pa.ListArray.from_arrays(offsets,
                                               pa.array(rows.errors.ravel().astype(float)))}),
        path)
    return path


@pytest.fixture(scope="module")
def stars(small_library, tmp_path_factory):
    """300 real library spectra as a Parquet table (sampled flux, 343 samples)."""
    return _table_file(str(tmp_path_factory.mktemp("faults") / "stars.parquet"),
                       small_library.subset(np.arange(300)))


@pytest.fixture(scope="module")
def model(stars, tmp_path_factory):
    """A model of sampled spectra, trained for one epoch."""
    from xpsvae import read_spectra
    out = str(tmp_path_factory.mktemp("faults") / "model")
    SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, batch_size=64, threads=1)).fit(
        read_spectra(stars), out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def coefficient_store(tmp_path_factory):
    """A store of 40 stars' coefficients (110 inputs), written from an in-memory table."""
    rng = np.random.default_rng(0)
    n = 40
    columns = {"source_id": np.arange(1, n + 1, dtype=np.int64) * 1000,
               "phot_g_mean_flux": np.full(n, 1e4)}
    for band in ("bp", "rp"):
        columns[f"{band}_coefficients"] = list(rng.normal(size=(n, 55)))
        columns[f"{band}_coefficient_errors"] = list(np.full((n, 55), 0.1))
        columns[f"{band}_coefficient_correlations"] = list(np.zeros((n, 55 * 54 // 2)))
    store = str(tmp_path_factory.mktemp("faults") / "store")
    manifest = ingest([pa.table(columns)], store, progress=False)
    assert manifest["total"]["rows_kept"] == n
    return store


def test_training_into_a_model_folder_does_not_replace_the_model(stars, model):
    before = digest(model)
    refused(["train", stars, "--out", model, "--epochs", "1"], model, "--resume", "--overwrite")
    assert digest(model) == before


@pytest.mark.parametrize("option,value", [("--seed", "3"), ("--lr", "0.5"),
                                          ("--batch-size", "32")])
def test_resume_refuses_another_recipe(stars, model, option, value):
    before = digest(model)
    refused(["train", stars, "--out", model, "--resume", option, value], option, "--overwrite")
    assert digest(model) == before


@pytest.mark.parametrize("option,value", [("--epochs", "0"), ("--epochs", "-1"),
                                          ("--batch-size", "0"), ("--mask-fraction", "0.7"),
                                          ("--spike-clip", "0.5"), ("--spike-clip", "-1")])
def test_bad_training_options_are_refused_before_the_data_is_read(tmp_path, option, value):
    missing = str(tmp_path / "no_such_table.parquet")  # never opened: the options fail first
    refused(["train", missing, "--out", str(tmp_path / "m"), option, value], value)
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu"])
def test_a_device_that_is_not_there_is_refused_before_anything_is_written(stars, tmp_path,
                                                                         device):
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    refused(["train", stars, "--out", str(tmp_path / "m"), "--device", device],
            f"--device {device}")
    assert not os.path.exists(tmp_path / "m")


def test_outputs_are_not_replaced_without_overwrite(stars, model, tmp_path):
    out = tmp_path / "spectra.parquet"
    assert xpsvae("generate", model, "--n", "5", "--out", str(out))[0] == 0
    before = digest(str(out))
    refused(["generate", model, "--n", "7", "--out", str(out)], out, "--overwrite")
    assert digest(str(out)) == before
    assert xpsvae("generate", model, "--n", "7", "--out", str(out), "--overwrite")[0] == 0
    assert pq.read_metadata(str(out)).num_rows == 7
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_model_of_coefficients_refuses_sampled_spectra_before_encoding(
        coefficient_store, stars, tmp_path):
    from xpsvae import read_spectra
    model = str(tmp_path / "coefficient_model")
    SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, batch_size=8, threads=1)).fit(
        read_spectra(coefficient_store), out_dir=model, progress=False)
    out = tmp_path / "encoded.parquet"
    refused(["encode", model, stars, "--out", str(out)], stars, "cannot be recovered from "
            "sampled flux")
    assert not out.exists()


def test_a_store_is_encoded_on_the_cpu_only(model, coefficient_store, tmp_path):
    refused(["encode", model, coefficient_store, "--out", str(tmp_path / "e"),
             "--device", "cuda"], "--device cuda", "--scheduler")


def test_a_second_writer_of_a_store_is_refused_by_name(coefficient_store, stars, tmp_path):
    before = digest(coefficient_store)
    with StoreWriter(coefficient_store):  # an ingest writing it, in this process
        line = refused(["ingest", stars, "--out", coefficient_store], coefficient_store,
                       f"pid {os.getpid()}")
    assert "another xpsvae ingest" in line
    assert digest(coefficient_store) == before


def test_a_cut_model_file_is_told_in_one_line_and_info_says_so(model, stars, tmp_path):
    import shutil
    cut = str(tmp_path / "cut_model")
    shutil.copytree(model, cut)
    weights = os.path.join(cut, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    refused(["encode", cut, stars, "--out", str(tmp_path / "latent.parquet")],
            "model.safetensors", "cut or damaged")
    assert not os.path.exists(tmp_path / "latent.parquet")
    done = subprocess.run([sys.executable, "-m", "xpsvae", "info", cut], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "WEIGHTS CANNOT BE READ" in done.stdout, done.stdout


def test_a_cut_checkpoint_under_resume_is_told_in_one_line(model, stars, tmp_path):
    import shutil
    run = str(tmp_path / "run")
    shutil.copytree(model, run)
    checkpoint = os.path.join(run, "checkpoint.safetensors")
    assert os.path.exists(checkpoint)
    data = open(checkpoint, "rb").read()
    open(checkpoint, "wb").write(data[: len(data) // 3])
    refused(["train", stars, "--out", run, "--resume", "--epochs", "2"],
            "checkpoint.safetensors", "--overwrite")


def test_too_few_stars_for_a_validation_share_are_refused(small_library, tmp_path):
    path = _table_file(str(tmp_path / "three.parquet"), small_library.subset(np.arange(3)))
    refused(["train", path, "--out", str(tmp_path / "m"), "--epochs", "1"], "3 stars",
            "validation")


@pytest.mark.parametrize("bad_name,content", [
    ("garbage.parquet", b"PAR1 this is no parquet file"),
    ("garbage.avro", b"Obj\x01 this is no avro file"),
    ("long_header.csv", b"source_id," + b"x" * 300_000 + b"\n1,2\n")])
def test_one_bad_file_does_not_sink_the_others(small_library, tmp_path, bad_name, content):
    bad = tmp_path / bad_name
    bad.write_bytes(content)
    good = _table_file(str(tmp_path / "good.parquet"), small_library.subset(np.arange(20)))
    store = tmp_path / "store"
    refused(["ingest", str(bad), good, "--out", str(store)], bad_name, "run the same command")
    import json
    files = json.load(open(store / "manifest.json"))["files"]
    assert files[good]["rows_kept"] == 20 and files[good]["complete"]
    assert not files[str(bad)]["complete"]  # tried again by the next run


def test_a_cut_avro_file_keeps_its_rows_before_the_cut(tmp_path):
    from .conftest import shared_file
    whole = shared_file("gaia_dr3_xp", "MeanSpectrumSolutionWithCov.avro")
    cut = tmp_path / "cut.avro"
    data = open(whole, "rb").read()
    cut.write_bytes(data[: len(data) * 2 // 3])
    code, err = xpsvae("ingest", str(cut), "--out", str(tmp_path / "store"))
    assert "Traceback" not in err, err
    import json
    entry = json.load(open(tmp_path / "store" / "manifest.json"))["files"][str(cut)]
    assert entry["rows_read"] == entry["rows_kept"] + entry["rows_set_aside"]
    assert any(reason.startswith("file unreadable after row") for reason in entry["reasons"])


def test_resume_refuses_epochs_that_would_only_calibrate_again(stars, tmp_path):
    from xpsvae import read_spectra
    run = str(tmp_path / "run")
    SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=1, batch_size=64, threads=1)).fit(
        read_spectra(stars), out_dir=run, progress=False)  # 1 epoch, then 1 calibrating
    before = digest(run)
    # --epochs 2 after 2 epochs done: the loop would only calibrate (epochs 3 and 4 would
    # have trained on, then calibrated: tests/test_distributed.py)
    refused(["train", stars, "--out", run, "--resume", "--epochs", "2"], "--epochs 2",
            "calibrat", "--overwrite")
    assert digest(run) == before


def test_a_text_source_id_is_named_by_file_row_and_column(small_library, tmp_path):
    path = _table_file(str(tmp_path / "ids.parquet"), small_library.subset(np.arange(12)))
    table = pq.read_table(path)
    ids = [str(i) for i in table.column("source_id").to_pylist()]
    ids[7] = "Gaia DR3 42"
    pq.write_table(table.set_column(0, "source_id", pa.array(ids)), path)
    refused(["train", path, "--out", str(tmp_path / "m"), "--epochs", "1"], path, "row 7",
            "'source_id'", "Gaia DR3 42")
    assert not os.path.exists(tmp_path / "m")


def test_overwrite_keeps_the_old_model_until_the_new_run_starts(model, tmp_path):
    before = digest(model)
    missing = str(tmp_path / "no_such_table.parquet")
    code, err = xpsvae("train", missing, "--out", model, "--overwrite", "--epochs", "1")
    assert code == 2 and "Traceback" not in err, err
    assert digest(model) == before  # the data failed to read: the old model stays whole


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_line_too_long_to_hold_is_set_aside_unread(tmp_path, where):
    """A line past the longest a row may hold is never held in memory (the reader's chunks
    stay bounded: tests/test_ingest_chunks.py); here, the row is set aside with its length
    and the rows around it are kept."""
    import json

    from xpsvae.ingestion.inflate import MAX_LINE_BYTES

    from .test_formats_own import N_STARS, coefficient_records, csv_text
    lines = csv_text(coefficient_records(), "[]").splitlines()
    long_line = "1," + "9" * (MAX_LINE_BYTES + 10)
    if where == "middle":
        lines.insert(3, long_line)
    else:
        lines.append(long_line)
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + ("\n" if where == "middle" else ""))
    code, err = xpsvae("ingest", str(path), "--out", str(tmp_path / "store"))
    assert "Traceback" not in err, err
    entry = json.load(open(tmp_path / "store" / "manifest.json"))["files"][str(path)]
    assert (entry["rows_read"], entry["rows_kept"], entry["rows_set_aside"]) == (
        N_STARS + 1, N_STARS, 1), entry
    assert any(f"a line of {len(long_line):,} bytes" in reason for reason in entry["reasons"]), \
        entry["reasons"]


def test_evaluate_leaves_out_the_models_own_training_stars(small_library, model, stars,
                                                            tmp_path):
    import json
    # every star the model was fitted on: refused, nothing written
    refused(["evaluate", model, stars, "--out", str(tmp_path / "all")], stars,
            "training stars", "--include-training-stars")
    assert not os.path.exists(tmp_path / "all" / "metrics.json")
    # 50 training stars and 40 others: the 50 left out, and said so
    mixed = _table_file(str(tmp_path / "mixed.parquet"), small_library.subset(
        np.r_[np.arange(250, 300), np.arange(1000, 1040)]))
    code, err = xpsvae("evaluate", model, mixed, "--out", str(tmp_path / "mixed"))
    assert code == 0 and "Traceback" not in err, err
    assert "50 of the stars are the model's own training stars: left out, 40 evaluated" in err
    metrics = json.load(open(tmp_path / "mixed" / "metrics.json"))
    assert metrics["svae"]["test"]["n_stars"] == 40
    assert metrics["data"]["held_out"]["training_stars_left_out"] == 50


def test_flux_refuses_an_existing_output_and_a_folder_before_any_work(coefficient_store,
                                                                       tmp_path):
    pytest.importorskip("gaiaxpy", reason="flux samples with GaiaXPy's bases")
    out = tmp_path / "flux.parquet"
    assert xpsvae("flux", coefficient_store, "--out", str(out))[0] == 0
    before = digest(str(out))
    refused(["flux", coefficient_store, "--out", str(out)], out, "--overwrite")
    assert digest(str(out)) == before
    folder = tmp_path / "a_folder"
    folder.mkdir()
    refused(["flux", coefficient_store, "--out", str(folder)], folder, "a folder")
    assert os.listdir(folder) == []
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
