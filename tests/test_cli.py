"""The command line, as a user runs it: train, resume, encode, generate, demo."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xpsvae.cli import main

from .conftest import shared_file


@pytest.fixture(scope="module")
def stars_file(tmp_path_factory, small_library):
    stars = small_library.subset(np.arange(1200))
    flux = stars.values.astype(np.float64)
    flux[10, 3] = np.nan  # one bad row: set aside and counted, not fatal
    path = str(tmp_path_factory.mktemp("data") / "stars.parquet")
    pq.write_table(pa.table({"source_id": stars.source_id, "flux": list(flux),
                             "flux_error": list(stars.errors.astype(np.float64)),
                             **{c: stars.labels[c].to_numpy() for c in ("teff", "logg", "fe_h")}}),
                   path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, stars_file):
    out = str(tmp_path_factory.mktemp("m") / "model")
    assert main(["--quiet", "train", stars_file, "--out", out, "--epochs", "2",
                 "--batch-size", "128", "--threads", "2", "--hidden", "64,32"]) == 0
    return out


def test_train_writes_model_history_and_accounting(model_dir):
    files = set(os.listdir(model_dir))
    assert {"model.safetensors", "config.json", "history.csv", "checkpoint.safetensors",
            "data_accounting.json"} <= files
    acc = json.load(open(os.path.join(model_dir, "data_accounting.json")))
    # row 10's NaN flux makes it partial: kept, and read, but not trained on
    assert (acc["rows_read"], acc["rows_kept"], acc["rows_set_aside"]) == (1200, 1200, 0)
    assert acc["rows_partial"] == 1 and acc["partial_reasons"] == {"non-finite value": 1}
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["model"]["hidden"] == [64, 32] and config["training"]["epochs"] == 2
    history = open(os.path.join(model_dir, "history.csv")).read().splitlines()
    assert history[0].startswith("epoch,phase,lr,train_loss,train_chi2,train_penalty,train_kl")
    assert len(history) == 1 + 2 + 10  # header, 2 epochs, 10 calibration epochs


def test_resume_extends_a_run(tmp_path, stars_file):
    out = str(tmp_path / "m")
    common = ["--quiet", "train", stars_file, "--out", out, "--threads", "2", "--recipe", "paper",
              "--batch-size", "256"]
    assert main(common + ["--epochs", "2"]) == 0
    assert main(common + ["--epochs", "3", "--resume"]) == 0
    history = open(os.path.join(out, "history.csv")).read().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]


def test_encode_then_generate_from_the_latents(tmp_path, model_dir, stars_file):
    latent_path = str(tmp_path / "latent.parquet")
    assert main(["encode", model_dir, stars_file, "--out", latent_path]) == 0
    t = pq.read_table(latent_path)
    # row 10, one flux NaN, is encoded from its other 342 inputs
    assert t.num_rows == 1200
    assert t.column("n_observed").to_numpy()[10] == 342 == 343 - 1
    assert (np.delete(t.column("n_observed").to_numpy(), 10) == 343).all()
    assert t.column_names == ["source_id", "input_row", "latent_mean", "latent_std",
                              "reconstruction_chi2_per_dof", "anomaly_score", "n_observed"]
    meta = json.loads(t.schema.metadata[b"xpsvae"])
    assert meta["format_version"] == 1 and len(meta["preprocessing"]["mean"]) == 343
    latent = np.array(t.column("latent_mean").to_pylist())
    assert latent.shape == (1200, 6) and (np.array(t.column("latent_std").to_pylist()) > 0).all()
    out = str(tmp_path / "gen.parquet")
    assert main(["generate", model_dir, "--latent", latent_path, "--out", out]) == 0
    g = pq.read_table(out)
    flux = np.array(g.column("flux").to_pylist())
    assert flux.shape == (1200, 343)
    assert (np.array(g.column("intrinsic_scatter").to_pylist()) > 0).all()
    meta = json.loads(g.schema.metadata[b"xpsvae"])
    assert meta["inputs"][0] == "flux_336nm" and meta["wavelength_nm"][-1] == 1020
    # the generated spectra are in the input's units: comparable to the input flux
    inputs = np.array(pq.read_table(stars_file).column("flux").to_pylist())
    assert abs(np.nanmedian(flux) / np.nanmedian(inputs) - 1) < 0.3


def test_generate_from_the_prior(tmp_path, model_dir):
    out = str(tmp_path / "prior.parquet")
    assert main(["generate", model_dir, "--n", "7", "--seed", "3", "--out", out]) == 0
    assert pq.read_table(out).num_rows == 7


def test_cli_errors_are_clear(tmp_path, model_dir, capsys):
    bad = str(tmp_path / "coeffs.parquet")
    pq.write_table(pa.table({"source_id": [1], "flux": [[1.0] * 110],
                             "flux_error": [[0.1] * 110]}), bad)
    assert main(["encode", model_dir, bad, "--out", str(tmp_path / "x.parquet")]) == 2
    assert "sampled on another grid (no grid)" in capsys.readouterr().err  # 110, not 343
    assert main(["encode", str(tmp_path), bad, "--out", str(tmp_path / "x.parquet")]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def test_demo_end_to_end_on_a_slice(tmp_path):
    out = str(tmp_path / "demo")
    assert main(["--quiet", "demo", "--out", out, "--max-stars", "2500", "--epochs", "2",
                 "--threads", "2"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for name in ("svae", "svae_paper_recipe", "cannon", "cannon_thecannon_search"):
        for block in ("test", "cool", "low_logg"):
            assert {"mean_nll", "std_r", "frac_abs_r_gt_5", "frac_abs_r_gt_10",
                    "median_scatter_over_error"} <= set(metrics[name][block])
    for name in ("svae", "svae_paper_recipe"):
        assert metrics[name]["training"]["wall_time_s"] > 0
    # a tenth of 2,500 stars, less any that share a Gaia source with a training star
    n_test = metrics["data"]["n_test"]
    assert n_test + metrics["data"]["n_test_shared_source"] == 250
    assert metrics["svae"]["test"]["n_stars"] == n_test
    fit = metrics["cannon"]["fit"]
    assert fit["n_train_stars_used"] + fit["n_train_stars_without_labels"] == 2250
    assert fit["n_train_stars_without_labels"] > 0
    assert metrics["cannon"]["test"]["n_stars"] + fit["n_test_stars_without_labels"] == n_test
    # TheCannon's search lands above the exact maximum-likelihood scatter, on the same stars
    grid = metrics["cannon_thecannon_search"]
    assert grid["fit"]["scatter_method"] == "thecannon" and fit["scatter_method"] == "ml"
    assert grid["test"]["n_stars"] == metrics["cannon"]["test"]["n_stars"]
    assert grid["test"]["median_scatter_over_error"] > \
        metrics["cannon"]["test"]["median_scatter_over_error"]
    assert set(metrics["comparison"]["edges_mean_abs_r"]) == {"blue", "red"}
    assert {"as_good_with_smaller_scatter", "robust_in_the_tails",
            "covers_more_latent_volume"} <= set(metrics["claims"])
    assert metrics["latent_volume_gain"]["n_labelled"] + \
        metrics["latent_volume_gain"]["n_unlabelled"] == 2500
    report = open(os.path.join(out, "report.md")).read()
    assert "Against the authors' public implementation" in report
    assert "The paper's three claims" in report and "left out for a missing label" in report
    assert "TheCannon's scatter search" in report
    for png in ("learning_curves.png", "reconstructions.png", "normalised_errors.png",
                "scatter_vs_error.png", "learning_curves_paper_recipe.png",
                "figure2_flux_450nm.png", "figure2_flux_750nm.png", "figure3_latent.png"):
        path = os.path.join(out, "figures", png)
        assert os.path.getsize(path) > 10_000, png
        assert f"figures/{png}" in report


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "xpsvae", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


def test_cannon_fit_predict_infer_and_evaluate(tmp_path, stars_file, model_dir):
    cannon_dir = str(tmp_path / "cannon")
    assert main(["cannon", "fit", stars_file, "--labels", "teff,logg,fe_h",
                 "--out", cannon_dir]) == 0
    assert set(os.listdir(cannon_dir)) == {"cannon.safetensors", "cannon.json"}
    spectra_path = str(tmp_path / "cannon_spectra.parquet")
    assert main(["cannon", "predict", cannon_dir, stars_file, "--out", spectra_path]) == 0
    predicted = pq.read_table(spectra_path)
    fe_h = predicted.column("fe_h").to_numpy()
    rows = predicted.column("flux").to_pylist()
    assert all((row is None) == np.isnan(f) for row, f in zip(rows, fe_h))
    assert len([r for r in rows if r is not None][0]) == 343
    labels_path = str(tmp_path / "labels.parquet")
    assert main(["cannon", "infer", cannon_dir, stars_file, "--out", labels_path]) == 0
    inferred = pq.read_table(labels_path)
    assert inferred.num_rows == 1200 and {"teff", "logg", "fe_h", "chi2"} <= set(
        inferred.column_names)
    report_dir = str(tmp_path / "report")
    # the model's own training stars: refused by default (tests/test_faults.py), kept here
    assert main(["--quiet", "evaluate", model_dir, stars_file, "--cannon", cannon_dir,
                 "--out", report_dir, "--include-training-stars"]) == 0
    metrics = json.load(open(os.path.join(report_dir, "metrics.json")))
    assert metrics["data"]["held_out"]["training_stars_given"] == 1199
    assert "1199 of the stars evaluated are the model's own training stars" in open(
        os.path.join(report_dir, "report.md")).read()
    # the partial star (row 10) has a block of its own
    assert metrics["svae"]["test"]["n_stars"] == 1199
    assert metrics["svae"]["partial"]["n_stars"] == 1
    assert metrics["svae"]["partial"]["mean_observed_inputs"] == 342
    assert metrics["cannon"]["test"]["n_stars"] < 1199  # stars without [Fe/H] left out
    assert os.path.getsize(os.path.join(report_dir, "figures", "figure2_flux_450nm.png")) > 10_000
    assert "The paper's three claims" in open(os.path.join(report_dir, "report.md")).read()
    from xpsvae.cli.describe import describe, format_description
    cannon = describe(cannon_dir)
    assert cannon["what"] == "Cannon" and cannon["labels"] == ["teff", "logg", "fe_h"]
    report = describe(report_dir)
    assert report["what"] == "report" and report["test"]["svae"]["n_stars"] == 1199
    assert report["test"]["cannon"]["mean_nll"] == metrics["cannon"]["test"]["mean_nll"]
    assert set(report["claims"]) == {k for k, v in metrics["claims"].items() if "supported" in v}
    assert "svae: 1,199 test stars" in format_description(report)


def test_cannon_without_label_columns_is_a_clear_error(tmp_path, stars_file, capsys):
    assert main(["cannon", "fit", stars_file, "--labels", "teff,vsini",
                 "--out", str(tmp_path / "c")]) == 2
    assert "['vsini'] not found" in capsys.readouterr().err


def test_encode_a_folder_that_is_not_a_store_and_predict_without_labels(tmp_path, model_dir,
                                                                      stars_file, capsys):
    folder = tmp_path / "not_a_store"
    folder.mkdir()
    assert main(["encode", model_dir, str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "no manifest.json; not an xpsvae store" in capsys.readouterr().err
    cannon_dir = str(tmp_path / "cannon")
    assert main(["cannon", "fit", stars_file, "--out", cannon_dir]) == 0
    labels = str(tmp_path / "labels.parquet")
    pq.write_table(pa.table({"teff": [5000.0], "logg": [4.0]}), labels)
    assert main(["cannon", "predict", cannon_dir, labels, "--out", str(tmp_path / "p")]) == 2
    assert "label columns ['fe_h'] not found" in capsys.readouterr().err


def test_path_errors_are_one_line_messages(tmp_path, capsys, monkeypatch):
    """An --out that is a file, or a full disk, is told in one line (exit 2), not a
    traceback; any other OS error keeps its traceback; Ctrl-C exits 130 with a line."""
    import errno
    sample = shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["--quiet", "ingest", sample, "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "xpsvae ingest: error:" in err and "taken" in err and "Traceback" not in err
    import pyarrow.parquet as pq  # writing a shard is where the disk fills or fails

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "store"))
    monkeypatch.setattr(pq, "write_table", full)
    assert main(["--quiet", "ingest", sample, "--out", str(tmp_path / "store")]) == 2
    assert "No space left on device" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="Input/output"):
        main(["--quiet", "ingest", sample, "--out", str(tmp_path / "store2")])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pq, "write_table", interrupted)
    assert main(["--quiet", "ingest", sample, "--out", str(tmp_path / "store3")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_store_too_large_for_memory_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    """With memory for fewer stars than the store holds, train says to stream, at once."""
    from xpsvae.core import machine
    from xpsvae.ingestion.pipeline import ingest
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], store, progress=False)
    monkeypatch.setattr(machine, "usable_memory", lambda: 2_000)  # bytes: room for none
    assert main(["--quiet", "train", store, "--out", str(tmp_path / "m"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "2 stars of 110 inputs" in err and "--streaming" in err
    assert not os.path.exists(tmp_path / "m")


def test_info_describes_store_encoded_catalogue_model_and_table(tmp_path, model_dir,
                                                                  stars_file, capsys):
    """xpsvae info reads manifests, configurations and footers: what each path holds."""
    from xpsvae.cli.describe import describe
    from xpsvae.ingestion.pipeline import ingest
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv"),
            shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.ecsv")], store, progress=False)
    d = describe(store)
    assert (d["what"], d["kind"], d["files"], d["rows_kept"], d["rows_set_aside"]) == (
        "store", "coefficients", 2, 2, 2)
    assert d["shards"] == 1 and d["bytes_on_disk"] > 0
    model = describe(model_dir)
    assert model["what"] == "model" and model["trained"]
    assert model["architecture"]["latent_dim"] == 6 and model["epochs_run"] >= 2
    assert model["data"]["n_stars"] > 0
    table = describe(stars_file)
    assert table["what"] == "table" and table["rows"] == pq.read_metadata(stars_file).num_rows
    assert main(["info", store]) == 0
    out = capsys.readouterr().out
    assert "2 stars kept of 4 read from 2 files; 2 set aside" in out and "duplicate" in out
    assert main(["info", model_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["what"] == "model"
    assert main(["info", str(tmp_path)]) == 2
    assert "no xpsvae store" in capsys.readouterr().err


def test_torchrun_on_a_store_without_resident_says_each_rank_reads_it_whole(
        tmp_path, monkeypatch, capsys):
    """Under torchrun, a store trained on as a table is read whole by every rank: rank 0
    says so and names --resident, which reads only each rank's own shards."""
    from xpsvae.cli import app as cli
    from xpsvae.ingestion.pipeline import ingest
    from xpsvae.svae import SVAE
    store = str(tmp_path / "store")
    ingest([shared_file("gaia_dr3_xp", "XP_CONTINUOUS_RAW.csv")], store, progress=False)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop
    monkeypatch.setattr(cli, "_init_distributed", lambda args: None)  # no process group here
    monkeypatch.setattr(SVAE, "fit", stop)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(Stop):
        main(["--quiet", "train", store, "--out", str(tmp_path / "m")])
    assert "with --resident (or --streaming) each reads only its own shards" in \
        capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(Stop):
        main(["--quiet", "train", store, "--out", str(tmp_path / "m")])
    assert "--resident" not in capsys.readouterr().err
