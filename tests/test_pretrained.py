"""The model shipped with the package: loaded by name everywhere, and what it claims to be."""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from xpsvae import SVAE
from xpsvae.core.files import BUILTIN_MODEL_DIR, CONFIG_FILE, MODEL_FILE
from xpsvae.labels import DEFAULT_LABELS
from xpsvae.pretrained import shipped_model_differences


def test_the_shipped_model_is_small_safetensors_and_json():
    names = sorted(os.listdir(BUILTIN_MODEL_DIR))
    assert CONFIG_FILE in names and MODEL_FILE in names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".pth"))]
    size = sum(os.path.getsize(os.path.join(BUILTIN_MODEL_DIR, n)) for n in names)
    assert size < 2 * 2**20, size  # package data: small


def test_the_shipped_model_matches_its_recorded_recipe_and_data(library):
    assert shipped_model_differences() == []
    assert SVAE.pretrained().config.labels == tuple(DEFAULT_LABELS)  # semi-supervised


def test_a_model_that_did_not_learn_the_labels_is_told_from_the_shipped_one(small_library,
                                                                             tmp_path):
    from xpsvae import TrainConfig
    folder = str(tmp_path / "unsupervised")
    SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, threads=2)).fit(
        small_library.subset(np.arange(500)), out_dir=folder, progress=False)
    differences = shipped_model_differences(folder)
    assert any(d.startswith("learnt the labels []") for d in differences), differences


def test_the_shipped_model_loads_by_name_and_scores_library_stars(small_library):
    model = SVAE.pretrained()
    assert SVAE.load("builtin").config.to_dict() == model.config.to_dict()
    scores = model.score(small_library.subset(np.arange(200)))
    assert np.isfinite(scores["anomaly_score"]).all()
    # stars like those it learnt from are reconstructed to about their errors
    assert np.median(scores["reconstruction_chi2_per_dof"]) < 3


def test_every_command_takes_the_shipped_model_by_name(small_library, tmp_path):
    run = [sys.executable, "-m", "xpsvae", "--quiet"]
    info = subprocess.run(run + ["info", "builtin", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["what"] == "model"
    # its recipe as trained, the bound on gradient spikes included
    assert described["recipe"]["spike_clip"] == 5.0 and described["label_weight"] == 50.0
    # the label model shipped beside it is named, with its folder, for `info` of that
    shipped = described["shipped_label_model"]
    assert shipped["what"] == "label model" and shipped["labels"] == list(DEFAULT_LABELS)
    text = subprocess.run(run + ["info", "builtin"], capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == 0 and shipped["path"] in text.stdout, text.stderr
    out = tmp_path / "drawn.parquet"
    done = subprocess.run(run + ["generate", "builtin", "--n", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr


def test_archive_records_are_scored_by_the_shipped_model_in_one_command(tmp_path):
    """The 30 CALSPEC stars' full archive records (coefficients), ingested, then encoded by
    the shipped model of sampled spectra: sampled onto its grid with their covariance,
    divided by their median flux, and scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xpsvae import ingest

    from .conftest import shared_file
    store = str(tmp_path / "store")
    ingest([shared_file("calspec_xp", "gaia_spectra_file_ddf_v0.parquet")], store,
           gaia_source=[shared_file("calspec_xp", "gaia_source_file_ddf_v0.parquet")],
           rows_per_shard=10, progress=False)
    out = tmp_path / "scores"
    done = subprocess.run([sys.executable, "-m", "xpsvae", "--quiet", "encode", "builtin", store,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pa.concat_tables([pq.read_table(out / f) for f in sorted(os.listdir(out))
                              if f.endswith(".parquet")])
    assert table.num_rows == 30
    latents = np.stack(table.column("latent_mean").to_numpy(zero_copy_only=False))
    assert np.isfinite(latents).all() and len(np.unique(latents.round(4), axis=0)) == 30
    assert np.isfinite(table.column("anomaly_score").to_numpy()).all()


def test_the_conversion_is_the_flux_conversion_divided_by_the_median(calspec_store, tmp_path):
    """read_for_model's coefficients-to-sampled path against xpsvae flux (the same
    GaiaXPy calibration, stars lacking a band left out by both)."""
    import pyarrow.parquet as pq

    from xpsvae.conform import contract, read_for_model
    from xpsvae.flux import write_store_flux
    from xpsvae.io.store import store_shards
    model = SVAE.pretrained()
    wanted = contract(model.info, model.config.input_dim)
    ours = [read_for_model(s, wanted) for s in store_shards(calspec_store)]
    values = np.vstack([s.values for s in ours])
    errors = np.vstack([s.errors for s in ours])
    write_store_flux(calspec_store, str(tmp_path / "flux.parquet"), progress=False)
    table = pq.read_table(str(tmp_path / "flux.parquet"))
    flux = np.array(table.column("flux").to_pylist())
    error = np.array(table.column("flux_error").to_pylist())
    median = np.median(flux, axis=1, keepdims=True)
    # the same float64 arithmetic, then float32 (eps 6e-8) in the SpectraSet
    np.testing.assert_allclose(values, flux / median, rtol=1e-6)
    np.testing.assert_allclose(errors, error / median, rtol=1e-6)


def test_sampled_spectra_on_another_grid_are_refused_by_name(small_library, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    part = small_library.subset(np.arange(5))
    every_other = np.arange(0, part.n_inputs, 2)  # 172 samples, 4 nm apart
    path = str(tmp_path / "coarse.parquet")
    pq.write_table(pa.table({"source_id": part.source_id,
                             "flux": list(part.values[:, every_other].astype(float)),
                             "flux_error": list(part.errors[:, every_other].astype(float)),
                             "wavelength": [part.wavelength_nm[every_other]] * 5}), path)
    done = subprocess.run([sys.executable, "-m", "xpsvae", "--quiet", "encode", "builtin", path,
                           "--out", str(tmp_path / "x.parquet")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "another grid" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not os.path.exists(tmp_path / "x.parquet")


# ---------------------------------------------------------------------- the shipped label model
#: robust sigma of predicted - APOGEE on the 3,963 held-out stars, the shipped label model's
#: recipe fitted on the benchmark split's training stars (benchmarks/pretrained_labels.py,
#: docs/pretrained.md)
HELD_OUT_ROBUST_SIGMA = {"teff": 58.1, "logg": 0.151, "fe_h": 0.091, "alpha_m": 0.030}


def test_the_shipped_label_model_is_safetensors_and_json():
    from xpsvae.core.files import BUILTIN_LABEL_MODEL_DIR
    files = [os.path.join(root, n) for root, _, names in os.walk(BUILTIN_LABEL_MODEL_DIR)
             for n in names]
    assert {os.path.basename(f) for f in files} >= {"head.json", "head.safetensors",
                                                     CONFIG_FILE, MODEL_FILE}
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth"))]
    # package data: small. The four members' MLPs are ~2.4 MB, their encoder copies ~0.5 MB,
    # the record of the stars it was fitted on ~0.4 MB and the sVAE's copy ~1 MB: ~4.2 MiB
    assert sum(os.path.getsize(f) for f in files) < 5 * 2**20


def test_the_shipped_label_model_matches_its_recorded_recipe_and_data(library):
    from xpsvae.pretrained import shipped_label_model_differences
    assert shipped_label_model_differences() == []


def test_the_shipped_label_model_labels_library_stars(small_library):
    """Stars it learnt from are labelled at least about as well as held-out ones are: the
    bound is 1.5x the held-out robust sigma, where the robust sigma of 1,000 stars has a
    sampling error of ~4% (MAD's efficiency 0.37: 1/sqrt(0.74 n)); a label mixed up, or a
    head misread, misses it many times over."""
    from xpsvae.labels import LabelModel, label_columns
    model = LabelModel.pretrained()
    assert model.side == [] and model.classifier is not None
    stars = small_library.subset(np.arange(1000))
    predicted = model.predict(stars)
    truth, _ = label_columns(stars.labels, model.labels)
    for j, name in enumerate(model.labels):
        r = predicted[name].to_numpy() - truth[:, j]
        r = r[np.isfinite(r)]
        robust = 1.4826 * np.median(np.abs(r - np.median(r)))
        assert robust < 1.5 * HELD_OUT_ROBUST_SIGMA[name], (name, robust)
        assert (predicted[f"{name}_err"] > 0).all()
    assert predicted["labels_ood"].mean() < 0.05  # its own training stars, by its 99% cut
    # [Fe/H] guessed for stars unlike any that had an APOGEE [Fe/H] (hot ones) is marked:
    # 88% of such test stars for the demo's model (docs/labels.md), few of the others
    known = np.isfinite(truth[:, model.labels.index("fe_h")])
    marked = predicted["fe_h_extrapolated"].to_numpy()
    assert marked[~known].mean() > 0.6 and marked[known].mean() < 0.05
    # the labels, sigma and high_alpha_prob come from one pass of the head's ensemble; the
    # head's two passes give the same to float32 rounding (sums of 256 terms: ~16 eps of
    # the largest, well inside 1e-5 relative)
    features = model.features(stars)
    mean, sigma = model.head.predict(features)
    np.testing.assert_allclose(predicted[model.labels].to_numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(predicted[[f"{n}_err" for n in model.labels]].to_numpy(),
                               sigma, rtol=1e-5)
    np.testing.assert_allclose(predicted["high_alpha_prob"],
                               model.head.class_probability(features), rtol=1e-5, atol=1e-7)
    # sigma's factor follows the star (xpsvae.labels.calibration): in Teff, dwarfs', whose
    # few far-off hot stars set it, is wider than giants' (1.49x for these stars); one
    # factor per label would give them the same
    head = model.head
    raw = head._mixture(head._outputs(torch.from_numpy(head._standardised(features))))
    factor = head.calibration(*raw)[:, 0]
    giant = truth[:, 1] < 3.5
    assert np.median(factor[~giant]) > 1.2 * np.median(factor[giant])


def test_the_shipped_label_model_flags_a_spectrum_no_star_has(library):
    """Alien spectra from real parts: a hot star's blue half (below 640 nm, BP's side of the
    junction) joined to a cool giant's red half, scaled to meet at the join and divided by
    the median as the library's are. No star looks like that: the flag marks every one of
    20 such, and none of their 40 real parents, which the shipped model trained on. The
    margin is wide: the aliens' anomaly scores run from 0.7 to 108, the parents' from -3.7
    to -2.4, and the flag's cut is -0.26."""
    from xpsvae.io.spectra import SpectraSet
    from xpsvae.labels import LabelModel
    model = LabelModel.pretrained()
    t = library.labels
    hot = np.flatnonzero(t["teff"] > 10000)[:20]
    cool = np.flatnonzero((t["teff"] < 3800) & (t["logg"] < 1.5))[:20]
    blue = library.wavelength_nm < 640
    join = np.flatnonzero(~blue)[0]
    values, errors = library.values[cool].copy(), library.errors[cool].copy()
    scale = library.values[cool, join] / library.values[hot, join]
    values[:, blue] = library.values[hot][:, blue] * scale[:, None]
    errors[:, blue] = library.errors[hot][:, blue] * scale[:, None]
    median = np.median(values, axis=1, keepdims=True)
    aliens = SpectraSet(values / median, errors / median, np.arange(20), library.kind,
                        library.wavelength_nm, None, library.normalisation)
    assert model.predict(aliens)["labels_ood"].all()
    assert not model.predict(library.subset(np.concatenate([hot, cool])))["labels_ood"].any()


def test_the_label_commands_take_the_shipped_label_model_by_name(calspec_store, tmp_path):
    """`labels predict builtin` (of the store's shard, and of the store folder) and `encode
    builtin --labels builtin` on the CALSPEC archive records: one label table, the same
    from all three, every star with its labels and errors."""
    import pandas as pd

    from xpsvae.io.store import store_shards
    run = [sys.executable, "-m", "xpsvae", "--quiet"]
    shard = store_shards(calspec_store)[0]
    alone = tmp_path / "labels.parquet"
    done = subprocess.run(run + ["labels", "predict", "builtin", shard, "--out", str(alone)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    encoded = tmp_path / "encoded.parquet"
    done = subprocess.run(run + ["encode", "builtin", shard, "--labels", "builtin",
                                 "--out", str(encoded)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "store_labels"
    done = subprocess.run(run + ["labels", "predict", "builtin", calspec_store, "--out",
                                 str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    labels, both = pd.read_parquet(alone), pd.read_parquet(encoded)
    of_store = pd.read_parquet(folder)  # its shards as one table, the first shard first
    assert f"labels of {len(of_store)} stars" in done.stdout
    assert len(labels) == len(both) > 0 and len(of_store) >= len(labels)
    of_store = of_store.iloc[:len(labels)]
    np.testing.assert_array_equal(of_store["source_id"], labels["source_id"])
    for column in ("teff", "teff_err", "alpha_m", "high_alpha_prob", "labels_ood"):
        np.testing.assert_array_equal(both[column], labels[column])
        np.testing.assert_array_equal(of_store[column], labels[column])
    assert np.isfinite(labels[["teff", "logg", "fe_h", "alpha_m"]]).all().all()
    assert (labels["teff_err"] > 0).all() and labels["high_alpha_prob"].between(0, 1).all()
    # the hot standards' [Fe/H] is a guess (APOGEE gives none above ~6,900 K), and says so:
    # 14 of the 30 records, each predicted above 6,850 K
    marked = labels["fe_h_extrapolated"].to_numpy()
    assert 5 <= marked.sum() < len(labels) and (labels["teff"][marked] > 6500).all()
    np.testing.assert_array_equal(labels["alpha_m_extrapolated"], marked)


def test_a_label_model_fitted_on_other_stars_is_told_from_the_shipped_one(small_library,
                                                                          tmp_path):
    from xpsvae.pretrained import build_pretrained_labels, shipped_label_model_differences
    folder = str(tmp_path / "labels")
    build_pretrained_labels(folder, svae=SVAE.pretrained(), stars=small_library.subset(
        np.arange(600)))
    differences = shipped_label_model_differences(folder)
    assert len(differences) == 2  # its stars' source is not named as the library's
    assert "head fitted on 600 stars, the library has 40226 complete stars with a label" in \
        differences[1]
