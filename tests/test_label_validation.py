"""Which stars calibrate a label model: never those whose labels its sVAE learnt. The sVAE
records the stars its validation share held out; a label model on it calibrates on those
(or on stars it never saw), whatever the head's seed. On real stars of the embedded APOGEE
library."""

import json
import os
import warnings

import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy

from xpsvae import SVAE, ModelFileError, TrainConfig
from xpsvae.cli import main
from xpsvae.core.files import TRAINING_STARS_FILE
from xpsvae.labels import LabelHeadConfig, LabelModel
from xpsvae.labels.validation import apart_from_training

from .conftest import labelled_table

LABELS = ("teff", "logg", "fe_h", "alpha_m")
# a head of another seed than the sVAE's: before the sVAE's record it drew other stars
QUICK = LabelHeadConfig(members=2, epochs=5, threads=2, seed=11)


def _config(**overrides):
    return TrainConfig(**{"epochs": 2, "calibrate_epochs": 0, "seed": 5, "threads": 2,
                          **overrides})


@pytest.fixture(scope="module")
def joint(small_library):
    """An sVAE that learnt the labels of 3,000 real stars (a few epochs: which stars it
    held out, not how well it fits, is at stake)."""
    return SVAE(train_config=_config()).fit(small_library, labels=LABELS, progress=False)


def _held_out(model, stars):
    return np.isin(stars.source_id, model.held_out_source_ids)


def test_an_svae_records_the_stars_it_held_out_and_reads_them_back(joint, small_library,
                                                                   tmp_path):
    """Its validation share: val_fraction of the stars, less a star whose Gaia source a
    training star shares (the 3,000 stars hold 4 sources twice)."""
    held = _held_out(joint, small_library)
    n_val = int(0.1 * len(small_library))
    assert n_val - 4 <= held.sum() <= n_val
    assert np.isin(joint.held_out_source_ids, joint.training_source_ids).all()
    joint.save(str(tmp_path / "m"))
    back = SVAE.load(str(tmp_path / "m"))
    np.testing.assert_array_equal(back.held_out_source_ids, joint.held_out_source_ids)
    np.testing.assert_array_equal(back.training_source_ids, joint.training_source_ids)
    # a model from before the record reads back without it
    save_numpy({"source_id": joint.training_source_ids},
               str(tmp_path / "m" / TRAINING_STARS_FILE))
    assert SVAE.load(str(tmp_path / "m")).held_out_source_ids is None
    # a record whose held-out stars are not among its stars is refused by name
    save_numpy({"source_id": joint.training_source_ids[:10],
                "held_out_source_id": joint.held_out_source_ids[-3:]},
               str(tmp_path / "m" / TRAINING_STARS_FILE))
    with pytest.raises(ModelFileError, match=f"{TRAINING_STARS_FILE}: held_out_source_id "
                                             "holds stars that source_id does not"):
        SVAE.load(str(tmp_path / "m"))


def test_the_shipped_label_model_calibrated_on_the_stars_the_shipped_svae_held_out():
    """Two records made apart agree: the shipped sVAE's held-out stars and the shipped
    label model's validation stars (its head drew them by its own seed)."""
    svae, labels = SVAE.pretrained(), LabelModel.pretrained()
    ids, val = labels.fitted
    assert svae.held_out_source_ids is not None
    np.testing.assert_array_equal(np.unique(ids[val]), svae.held_out_source_ids)
    np.testing.assert_array_equal(labels.svae.held_out_source_ids, svae.held_out_source_ids)


def test_a_split_seed_holds_out_the_same_stars_for_every_seed(small_library):
    """Two seeds hold out other stars; with one split seed, the same ones. Old configs
    (no split_seed) split by the seed, as before."""
    stars = small_library.subset(np.arange(1000))
    a = SVAE(train_config=_config(epochs=1, seed=1)).fit(stars, progress=False)
    b = SVAE(train_config=_config(epochs=1, seed=2)).fit(stars, progress=False)
    c = SVAE(train_config=_config(epochs=1, seed=2, split_seed=1)).fit(stars, progress=False)
    assert not np.array_equal(a.held_out_source_ids, b.held_out_source_ids)
    np.testing.assert_array_equal(a.held_out_source_ids, c.held_out_source_ids)
    assert TrainConfig.from_dict({"seed": 4}).validation_seed == 4
    with pytest.raises(ValueError, match="split_seed must be >= 0"):
        TrainConfig(split_seed=-1)


def test_a_label_model_calibrates_on_the_stars_its_svae_held_out(joint, small_library):
    """The table is the sVAE's: its validation share is the sVAE's held-out stars, all of
    them, though the head's seed would have drawn others."""
    model = LabelModel.fit(joint, small_library, config=QUICK, holes=False)
    ids, val = model.fitted
    held = np.isin(ids, joint.held_out_source_ids)
    np.testing.assert_array_equal(val, held)
    # with stars the sVAE never saw, the share is drawn from those and its held-out ones
    more = small_library.subset(np.arange(2000))
    model = LabelModel.fit(SVAE(train_config=_config(epochs=1)).fit(
        more.subset(np.arange(1000)), labels=LABELS, progress=False), more, config=QUICK,
        holes=False)
    ids, val = model.fitted
    # 10% of the 2,000, less a star whose Gaia source a training star shares (<= 4 pairs)
    assert int(QUICK.val_fraction * len(more)) - 4 <= val.sum() <= int(
        QUICK.val_fraction * len(more))
    learnt = np.isin(ids, small_library.source_id[:1000]) & ~np.isin(
        ids, model.svae.held_out_source_ids)
    assert not (val & learnt).any()


def test_a_table_of_stars_whose_labels_the_svae_learnt_is_warned_of(joint, small_library,
                                                                    tmp_path):
    """Only learnt stars: the sigma can only be calibrated on them, and the user is told
    so and what to do. label_calibration stars the sVAE learnt train the head instead."""
    learnt = small_library.subset(np.flatnonzero(~_held_out(joint, small_library)))
    with pytest.warns(UserWarning, match="the sVAE learnt the labels of all but 0 of the "
                                         "table's 600 labelled stars"):
        LabelModel.fit(joint, learnt.subset(np.arange(600)), config=QUICK, holes=False)
    table = small_library.subset(np.arange(1000))
    marked = np.zeros(len(table), dtype=bool)
    marked[:400] = True
    table.labels["label_calibration"] = marked
    with pytest.warns(UserWarning, match="label_calibration stars train the head instead"):
        model = LabelModel.fit(joint, table, config=QUICK, holes=False)
    val = model.fitted[1]
    np.testing.assert_array_equal(val, apart_from_training(marked & _held_out(joint, table),
                                                           table.source_id))
    # an sVAE trained on that table (pseudo-labels' step 2) leaves out those stars' labels,
    # and records them as held out: they all calibrate, with no warning
    svae = SVAE(train_config=_config(epochs=1)).fit(table, labels=LABELS, progress=False)
    assert _held_out(svae, table)[marked].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LabelModel.fit(svae, table, config=QUICK, holes=False)
    np.testing.assert_array_equal(model.fitted[1], apart_from_training(marked, table.source_id))


def test_the_train_command_takes_a_split_seed(small_library, tmp_path, capsys):
    table = labelled_table(small_library.subset(np.arange(600)), tmp_path / "t.parquet")
    out = str(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--quiet", "train", table, "--epochs", "1", "--calibrate-epochs", "0",
                     "--threads", "2", "--seed", "3", "--split-seed", "7", "--out", out]) == 0
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["training"]["seed"] == 3 and config["training"]["split_seed"] == 7
    assert SVAE.load(out).held_out_source_ids is not None
    assert main(["info", out]) == 0
    assert "seed 3, split_seed 7" in capsys.readouterr().out
