"""Label models on two sVAEs predicting together (xpsvae.labels.ensemble), on real stars of
the embedded APOGEE library: the shipped sVAE and one trained here for a few epochs."""

import json
import os
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from xpsvae import SVAE, ModelFileError, TrainConfig
from xpsvae.cli import main
from xpsvae.core.errors import SpectraError
from xpsvae.io.spectra import SpectraSet
from xpsvae.labels import LabelEnsemble, LabelHeadConfig, LabelModel, load_labels
from xpsvae.labels.ensemble import combine_tables, label_svae_folder

from .conftest import labelled_table

QUICK = LabelHeadConfig(members=2, epochs=10, threads=2)


@pytest.fixture(scope="module")
def folders(split, tmp_path_factory):
    """Two label models, on the shipped sVAE and on one trained here (3,000 stars), saved.
    The first holds out the stars whose labels the shipped sVAE did not learn; the second
    is told to hold out the same ones (a label_calibration column), as members on sVAEs of
    one split seed would, so that the ensemble can be calibrated on them."""
    train = split[0]
    other = SVAE(train_config=TrainConfig(epochs=3, calibrate_epochs=1, batch_size=256,
                                          seed=5, threads=2)).fit(train, progress=False)
    root = tmp_path_factory.mktemp("ensemble")
    shipped = LabelModel.fit(SVAE.pretrained(), train, config=QUICK, holes=False)
    shipped.save(str(root / "shipped"))
    marked = train.subset(np.arange(len(train)))
    ids, held_out = shipped.fitted
    marked.labels["label_calibration"] = np.isin(marked.source_id, ids[held_out])
    LabelModel.fit(other, marked, config=QUICK, holes=False).save(str(root / "other"))
    return [str(root / "shipped"), str(root / "other")]


@pytest.fixture(scope="module")
def unseen(library, split):
    """1,000 library stars that neither member learnt, drawn at random (the library's
    order is not): held out by the shipped sVAE, and not among the 3,000 the second was
    trained on."""
    new = np.isin(library.source_id, SVAE.pretrained().held_out_source_ids) \
        & ~np.isin(library.source_id, split[0].source_id)
    rows = np.random.default_rng(0).choice(np.flatnonzero(new), 1000, replace=False)
    return library.subset(np.sort(rows))


def test_the_members_are_combined_as_their_mixture(split, folders):
    """Mean of the means; variance the mean variance plus the spread of the means; the
    interval's k the mean of the members'; flags any member's; the class probability the
    mean. The same float64 sums as the members' tables, so equal to rounding."""
    members = [LabelModel.load(f) for f in folders]
    test = split[1]
    tables = [m.predict(test) for m in members]
    got = LabelEnsemble(members).predict(test)
    assert list(got.columns) == ["source_id", "input_row", *members[0].columns()]
    for name in members[0].labels:
        mu = np.column_stack([t[name] for t in tables])
        var = np.column_stack([t[f"{name}_err"] for t in tables]) ** 2
        want = mu.mean(1)
        err = np.sqrt(var.mean(1) + mu.var(1))
        np.testing.assert_allclose(got[name], want, rtol=1e-12)
        np.testing.assert_allclose(got[f"{name}_err"], err, rtol=1e-12)
        k = np.mean([(t[f"{name}_upper"] - t[name]) / t[f"{name}_err"] for t in tables], 0)
        np.testing.assert_allclose(got[f"{name}_upper"] - got[name], k * err, rtol=1e-9)
        np.testing.assert_allclose(got[name] - got[f"{name}_lower"], k * err, rtol=1e-9)
        assert (got[f"{name}_extrapolated"] == np.any(
            [t[f"{name}_extrapolated"] for t in tables], 0)).all()
        # two sVAEs disagree: the ensemble's sigma is wider than the mean of the members'
        assert (err >= np.sqrt(var.mean(1)) * (1 - 1e-12)).all() and (mu.var(1) > 0).any()
    np.testing.assert_allclose(got["high_alpha_prob"],
                               np.mean([t["high_alpha_prob"] for t in tables], 0), rtol=1e-12)
    assert (got["labels_ood"] == (tables[0]["labels_ood"] | tables[1]["labels_ood"])).all()
    assert (got["source_id"] == tables[0]["source_id"]).all()


def test_an_ensemble_reads_back_whole_and_nests(split, folders, tmp_path):
    """save then load predicts the same; combining an ensemble with a model adds its
    members; a folder that exists is not written over."""
    ensemble = LabelEnsemble.combine(folders)
    ensemble.save(str(tmp_path / "both"))
    assert sorted(os.listdir(tmp_path / "both")) == ["ensemble.json", "member_0", "member_1"]
    back = load_labels(str(tmp_path / "both"))
    assert isinstance(back, LabelEnsemble) and back.labels == ensemble.labels
    test = split[1].subset(np.arange(100))
    # the same weights on the same stars in one process: the same numbers
    pd.testing.assert_frame_equal(back.predict(test), ensemble.predict(test))
    assert back.high_alpha_prior == pytest.approx(
        np.mean([m.classifier.prior for m in back.members]), rel=1e-12)
    with pytest.warns(UserWarning, match="read the same sVAE"):  # folders[0] twice
        three = LabelEnsemble.combine([str(tmp_path / "both"), folders[0]])
    assert len(three.members) == 3
    with pytest.raises(FileExistsError, match="exists"):
        ensemble.save(str(tmp_path / "both"))
    assert label_svae_folder(str(tmp_path / "both")).endswith(os.path.join("member_0", "svae"))


def test_members_must_predict_the_same_labels(split, folders, tmp_path):
    """A member with other labels is refused, naming it."""
    fe_h_only = LabelModel.fit(SVAE.pretrained(), split[0], labels=["teff", "fe_h"],
                               config=QUICK, holes=False)
    fe_h_only.save(str(tmp_path / "two_labels"))
    with pytest.raises(ValueError, match="two_labels: labels"):
        LabelEnsemble.combine([folders[0], str(tmp_path / "two_labels")])
    with pytest.raises(ValueError, match="two label models or more"):
        LabelEnsemble([LabelModel.load(folders[0])])


def test_combine_predict_encode_and_info_from_the_command_line(split, folders, tmp_path,
                                                               capsys):
    """`labels combine`, then `labels predict` and `encode --labels` with the ensemble:
    the same table as in Python; encode with the first member's sVAE, refused with
    another; info describes it; --out an unrelated folder is refused."""
    out = str(tmp_path / "both")
    assert main(["--quiet", "labels", "combine", *folders, "--out", out]) == 0
    table = labelled_table(split[1].subset(np.arange(120)), tmp_path / "stars.parquet")
    assert main(["--quiet", "labels", "predict", out, table,
                 "--out", str(tmp_path / "labels.parquet")]) == 0
    got = pd.read_parquet(tmp_path / "labels.parquet")
    want = LabelEnsemble.load(out).predict(split[1].subset(np.arange(120)))
    np.testing.assert_allclose(got["teff"], want["teff"], rtol=1e-6)  # float32 table in
    assert list(got.columns) == list(want.columns)
    encoded = str(tmp_path / "encoded.parquet")
    assert main(["--quiet", "encode", label_svae_folder(out), table, "--labels", out,
                 "--out", encoded]) == 0
    catalogue = pd.read_parquet(encoded)
    np.testing.assert_allclose(catalogue["teff_err"], got["teff_err"], rtol=1e-12)
    capsys.readouterr()
    assert main(["--quiet", "encode", os.path.join(out, "member_1", "svae"), table,
                 "--labels", out, "--out", str(tmp_path / "no.parquet")]) == 2
    assert "a label model of another sVAE" in capsys.readouterr().err
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "label ensemble" in text and "2 label models of teff, logg, fe_h, alpha_m" in text
    os.makedirs(tmp_path / "busy")
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["--quiet", "labels", "combine", *folders, "--out",
                 str(tmp_path / "busy"), "--overwrite"]) == 2
    assert "holds other files than a label ensemble" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").exists()
    assert main(["--quiet", "labels", "combine", *folders, "--out", out]) == 2
    assert main(["--quiet", "labels", "combine", folders[1], folders[0], "--out", out,
                 "--overwrite"]) == 0
    with open(os.path.join(out, "ensemble.json")) as f:
        assert json.load(f)["members"] == ["member_0", "member_1"]


def test_the_tables_of_old_members_combine_without_the_interval(split, folders):
    """Members from before the interval or the marks give neither column: combined, the
    columns all of them give."""
    members = [LabelModel.load(f) for f in folders]
    tables = [m.predict(split[1].subset(np.arange(20))) for m in members]
    old = tables[1].drop(columns=[c for c in tables[1] if c.endswith(("_lower", "_upper"))])
    columns = [c for c in members[0].columns() if c in old.columns]
    got = combine_tables([tables[0], old], members[0].labels, columns)
    assert "teff_lower" not in got and "teff_err" in got and "labels_ood" in got


def test_an_ensemble_labels_a_store_shard_by_shard(folders, calspec_store, tmp_path):
    """`labels predict ENSEMBLE STORE` (the 300 CALSPEC archive records): a catalogue of
    the first member's latents with the ensemble's labels, as a table of the same stars
    gives them."""
    from xpsvae.conform import contract, read_for_model
    from xpsvae.io.store import store_shards
    out = str(tmp_path / "both")
    LabelEnsemble.combine(folders).save(out)
    assert main(["--quiet", "labels", "predict", out, calspec_store,
                 "--out", str(tmp_path / "catalogue")]) == 0
    catalogue = pd.read_parquet(tmp_path / "catalogue")
    assert len(catalogue) == 300 and "latent_mean" in catalogue
    ensemble = LabelEnsemble.load(out)
    first = store_shards(calspec_store)[0]
    stars = read_for_model(first, contract(ensemble.svae.info, ensemble.svae.config.input_dim))
    want = ensemble.predict(stars)
    got = catalogue.set_index("source_id").loc[want["source_id"]]
    # one torch thread in the catalogue's workers, the caller's here: float32 sums in
    # another order, so equal to float32 rounding carried through the heads
    np.testing.assert_allclose(got["teff"], want["teff"], rtol=1e-5)
    np.testing.assert_allclose(got["fe_h_err"], want["fe_h_err"], rtol=1e-4)


def test_an_ensemble_is_scored_as_a_label_model_is(split, folders):
    """`xpsvae evaluate --labels ENSEMBLE`'s block: the same figures, each member's recipe
    and how many; the class called above the mean of the members' priors."""
    from xpsvae.evaluation.labels import score_label_model
    ensemble = LabelEnsemble.combine(folders)
    block, predicted = score_label_model(ensemble, split[1])
    assert block["ensemble_members"] == 2 and block["labels"] == ensemble.labels
    assert block["svae_label_model"]["teff"]["test"]["n_stars"] == len(split[1])
    guesses = (predicted["high_alpha_prob"] > ensemble.high_alpha_prior).to_numpy()
    assert 0 < guesses.sum() < len(guesses)
    assert set(block["alpha_classes"]["all_bins"]) == {"label_model", "label_model_labels"}


def test_the_report_says_the_labels_are_an_ensembles(split, folders):
    """An ensemble's labels section opens by saying how many label models predicted."""
    from xpsvae.evaluation.label_report import labels_section
    from xpsvae.evaluation.labels import score_label_model
    block, _ = score_label_model(LabelEnsemble.combine(folders), split[1].subset(
        np.arange(200)))
    text = labels_section(block)[2]
    assert text.startswith("2 label models, each on its own sVAE, predicting together") \
        and "The first: a label model on the sVAE's encoder" in text
    del block["ensemble_members"]
    assert labels_section(block)[2].startswith("A label model on the sVAE's encoder")


def test_members_on_one_svae_are_warned_of(split, folders, tmp_path):
    """Two heads on the same sVAE: allowed, but their spread is not the sVAEs'."""
    again = LabelModel.fit(SVAE.pretrained(), split[0], config=replace(QUICK, seed=1),
                           holes=False)
    with pytest.warns(UserWarning, match="read the same sVAE"):
        LabelEnsemble([LabelModel.load(folders[0]), again])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelEnsemble.combine(folders)  # two sVAEs: no warning


def test_the_high_alpha_prior_is_kept_once_and_described(folders):
    """head.json keeps the class's prior once, as the head's ``class_prior``; info reads it
    there, and from ``high_alpha`` in label models written before (the shipped one)."""
    from xpsvae.cli.describe import describe
    with open(os.path.join(folders[0], "head.json")) as f:
        meta = json.load(f)
    assert "prior" not in meta["high_alpha"] and 0 < meta["class_prior"] < 1
    assert describe(folders[0])["high_alpha"]["prior"] == meta["class_prior"]
    assert LabelModel.load(folders[0]).high_alpha_prior == meta["class_prior"]
    shipped = describe("builtin")["shipped_label_model"]["high_alpha"]
    assert 0 < shipped["prior"] < 1 and "clip" in shipped["boundary"]


def test_a_broken_ensemble_file_is_refused_by_name(folders, split, tmp_path, capsys):
    """ensemble.json cut short, or naming a member outside its folder: `labels predict`
    exits 2 naming the file, before any star is read."""
    out = tmp_path / "both"
    LabelEnsemble.combine(folders).save(str(out))
    table = labelled_table(split[1].subset(np.arange(20)), tmp_path / "stars.parquet")
    path = out / "ensemble.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    capsys.readouterr()
    assert main(["--quiet", "labels", "predict", str(out), table,
                 "--out", str(tmp_path / "labels.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not a label ensemble's file" in err and "labels combine" in err
    path.write_text(json.dumps({"format": "xpsvae label ensemble",
                                "members": ["member_0", "../elsewhere"]}))
    assert main(["--quiet", "labels", "predict", str(out), table,
                 "--out", str(tmp_path / "labels.parquet")]) == 2
    assert "member '../elsewhere' is not a folder name inside" in capsys.readouterr().err
    assert not (tmp_path / "labels.parquet").exists()


def test_a_label_model_records_the_stars_it_was_fitted_on(split, folders):
    """Which stars a member trained on and which it held out to calibrate: what lets an
    ensemble be calibrated on stars none of them saw. Kept through save and load. On the
    shipped sVAE, which learnt the labels of the library's stars, the held-out ones are
    those whose labels it did not learn (its own validation share)."""
    model = LabelModel.load(folders[0])
    ids, held_out = model.fitted
    train = split[0]
    assert sorted(ids) == sorted(train.source_id)  # every star of the table has a label
    unlearnt = np.isin(ids, model.svae.held_out_source_ids)
    assert not (held_out & ~unlearnt).any()
    # the shipped sVAE held out a tenth of the library: about a tenth of these 3,000, to
    # within 4 binomial standard errors (65 stars); the head holds out its tenth of them
    # (300), or all where fewer, less a star whose Gaia source a training star shares
    # (the 3,000 hold 4 sources twice)
    assert abs(unlearnt.sum() - 0.0986 * len(train)) < 4 * np.sqrt(0.0986 * 0.9014 * 3000)
    wanted = min(int(unlearnt.sum()), int(QUICK.val_fraction * len(train)))
    assert wanted - 4 <= held_out.sum() <= wanted
    np.testing.assert_array_equal(LabelModel.load(folders[1]).fitted[1], held_out)


def test_an_ensemble_is_calibrated_on_the_stars_no_member_trained_on(split, folders, unseen,
                                                                    tmp_path):
    """Both members hold out the same ~300 stars: the ensemble's sigma factor and k are
    fitted on those alone. On them the interval then holds 68.3% up to one star either
    side of the quantile (2/n); on 1,000 stars neither learnt, it holds 68.3% within 3
    standard errors: binomial on 1,000 stars (1.5 points) and k's own from 300 (2.7
    points), together 3.1 points, so 9.3. The labels themselves do not move; save and load
    give the same table."""
    ensemble = LabelEnsemble.combine(folders)
    train, test = split[0], unseen
    before = ensemble.predict(test)
    info = ensemble.calibrate(train)
    held = int(ensemble.members[0].fitted[1].sum())
    assert info["stars"]["teff"] == held and info["stars"]["logg"] == held
    assert info["trained_on"] == {folders[0]: len(train) - held, folders[1]: len(train) - held}
    for name, got in info["labels"].items():
        n = info["stars"][name]
        assert abs(got["in_interval"][1] - 0.6827) <= 2 / n
    after = ensemble.predict(test)
    y = test.labels
    for name in ensemble.labels:
        np.testing.assert_array_equal(after[name], before[name])
        centre, half = after[name], after[f"{name}_upper"] - after[name]
        has = np.isfinite(y[name])
        inside = ((centre - y[name]) ** 2 <= half ** 2 + y[f"{name}_err"].fillna(0) ** 2)[has]
        assert abs(inside.mean() - 0.6827) < 0.093, name
        np.testing.assert_allclose(after[f"{name}_lower"], 2 * centre - after[f"{name}_upper"],
                                   rtol=1e-12)
    ensemble.save(str(tmp_path / "calibrated"))
    assert sorted(os.listdir(tmp_path / "calibrated")) == [
        "ensemble.json", "ensemble.safetensors", "member_0", "member_1"]
    back = LabelEnsemble.load(str(tmp_path / "calibrated"))
    pd.testing.assert_frame_equal(back.predict(test), after)


def test_an_ensemble_is_not_calibrated_on_its_members_training_stars(split, folders, unseen):
    """The stars each member trained on, and those whose labels its sVAE learnt, are set
    aside, and with fewer than 100 left the calibration is refused, saying why and what to
    do. A member that does not record its stars (a label model from before) is warned of."""
    ensemble = LabelEnsemble.combine(folders)
    train = split[0]
    trained = train.subset(np.flatnonzero(~ensemble.members[0].fitted[1]))
    with pytest.raises(SpectraError, match="0 stars with teff that no member trained on.*"
                                           "one --split-seed"):
        ensemble.calibrate(trained)
    # the benchmark's test stars: the shipped sVAE learnt the labels of all but ~10%
    info = ensemble.calibrate(unseen)
    learnt = ~np.isin(split[1].source_id, SVAE.pretrained().held_out_source_ids)
    assert learnt.mean() > 0.8
    ensemble.calibration = None
    with pytest.raises(SpectraError, match="that no member trained on"):
        ensemble.calibrate(split[1].subset(np.flatnonzero(learnt)))
    ensemble.members[1].fitted = None
    with pytest.warns(UserWarning, match="does not record which stars it was fitted on"):
        info = ensemble.calibrate(unseen)
    # the library holds some Gaia sources twice (two APOGEE entries): a star whose
    # source_id a member trained on is set aside too
    ids, held_out = ensemble.members[0].fitted
    fresh = ~np.isin(unseen.source_id, ids[~held_out])
    assert info["stars"]["teff"] == int((np.isfinite(unseen.labels["teff"]) & fresh).sum())


def test_calibrating_without_a_label_column_or_with_a_cut_record_is_refused(split, folders,
                                                                           tmp_path):
    """A calibration table that lacks one of the labels is refused naming the column; a
    label model whose record of its fitted stars is cut is refused naming its file."""
    test = split[1].subset(np.arange(200))
    test.labels = test.labels.drop(columns=["alpha_m"])
    with pytest.raises(SpectraError, match="no label column 'alpha_m'"):
        LabelEnsemble.combine(folders).calibrate(test)
    from safetensors.numpy import load_file, save_file
    model = str(tmp_path / "cut")
    LabelModel.load(folders[0]).save(model)
    weights = os.path.join(model, "head.safetensors")
    arrays = load_file(weights)
    arrays["fitted_validation"] = arrays["fitted_validation"][:-1]
    save_file(arrays, weights)
    with pytest.raises(ModelFileError, match="head.safetensors: fitted_source_id and "
                                             "fitted_validation must be two arrays of one"):
        LabelModel.load(model)


def test_a_table_without_source_id_is_warned_of_when_calibrating(split, folders):
    """Without a source_id column the stars are matched to the members' training stars by
    row number: said, since that is right only for the table they were fitted on."""
    test = split[1].subset(np.arange(300))
    rows = SpectraSet.from_arrays(test.values, test.errors, wavelength_nm=test.wavelength_nm,
                                  labels=test.labels, normalisation=test.normalisation)
    with pytest.warns(UserWarning, match="no source_id column"):
        LabelEnsemble.combine(folders).calibrate(rows)


def test_combine_calibrates_from_the_command_line(folders, unseen, tmp_path, capsys):
    """`labels combine --calibrate TABLE` says what it fitted on and what moved; info says
    the ensemble is calibrated; a calibration file gone is refused by name."""
    table = labelled_table(unseen.subset(np.arange(400)), tmp_path / "stars.parquet")
    out = str(tmp_path / "calibrated")
    assert main(["labels", "combine", *folders, "--out", out, "--calibrate", table]) == 0
    err = capsys.readouterr().err
    assert "that no member trained on" in err and "teff: std z" in err
    assert "in the interval" in err
    assert main(["info", out]) == 0
    assert "calibrated again for the ensemble" in capsys.readouterr().out
    os.remove(os.path.join(out, "ensemble.safetensors"))
    with pytest.raises(ModelFileError, match="ensemble.safetensors"):
        LabelEnsemble.load(out)
