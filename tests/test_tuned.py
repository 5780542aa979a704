"""A label head whose members tune a copy of the sVAE's encoder (xpsvae.labels.tuned): it
starts from the frozen features, trains the copy and not the sVAE, and its files load back."""

import numpy as np
import pandas as pd
import pytest
import torch

from xpsvae import SVAE
from xpsvae.cli import main
from xpsvae.cli.describe import describe, format_description
from xpsvae.core.errors import ModelFileError
from xpsvae.evaluation.label_report import labels_section
from xpsvae.evaluation.labels import headline, score_label_model
from xpsvae.labels import LabelHeadConfig, LabelModel
from xpsvae.labels.features import encoder_features, svae_features, tuned_inputs
from xpsvae.labels.head import LabelHead, feature_statistics, standardise
from xpsvae.labels.tuned import Tuning

from .conftest import labelled_table

TUNED = LabelHeadConfig(members=2, epochs=3, threads=2, encoder_lr=2e-3)


def test_a_tuned_member_starts_from_the_frozen_features(split):
    """The head's standardisation of the spectrum is folded into the copy's first linear
    map: in float64 that is the same arithmetic to ~1e-16 per term (343 terms of up to ~1e3
    each: 1e-9 is far above the rounding and far below any error in the algebra). In float32,
    against the frozen features themselves (their order and layout): float32 carries 7
    digits, and three layers of sums of up to 343 terms lose at most ~3 of them, so 1e-3 of
    each feature's largest size separates rounding from a wrong feature, off by its whole
    size."""
    import copy
    model = SVAE.pretrained()
    stars = split[0].subset(np.arange(1000))
    spectrum = tuned_inputs(model, stars)
    mean, std = feature_statistics(spectrum)
    rows = standardise(spectrum, mean, std)
    encoder64 = copy.deepcopy(model.network.encoder).double()
    rows64 = torch.from_numpy((spectrum.astype(np.float64) - mean) / std)  # not rounded
    start64 = Tuning(encoder64, mean, std, rows64).start
    with torch.no_grad():  # the copy folded, against the sVAE's encoder on the spectrum
        unfolded = encoder_features(encoder64, torch.from_numpy(spectrum).double())
        folded = start64.features(rows64)
    np.testing.assert_allclose(folded.numpy(), unfolded.numpy(), atol=1e-9)
    start = Tuning(model.network.encoder, mean, std, torch.from_numpy(rows)).start
    frozen = svae_features(model, stars)
    with torch.no_grad():
        tuned = start.features(torch.from_numpy(rows)).numpy()
    size = np.abs(frozen).max(axis=0)
    assert (np.abs(tuned - frozen) <= 1e-3 * size).all()
    # its standardisation is the frozen features' (float32 sums of 1,000 rows: 1e-3 of a
    # spread is again far above the rounding)
    fm, fs = feature_statistics(frozen)
    assert (np.abs(start.feature_mean.numpy() - fm) <= 1e-3 * fs).all()
    np.testing.assert_allclose(start.feature_std.numpy(), fs, rtol=1e-3)


@pytest.fixture(scope="module")
def tuned_model(split):
    return LabelModel.fit(SVAE.pretrained(), split[0], side=("j-h", "j-k"), config=TUNED)


def test_a_tuned_head_trains_its_copy_of_the_encoder_not_the_svae(tuned_model, split):
    shipped = SVAE.pretrained().network.encoder.state_dict()
    assert all(torch.equal(p, shipped[name])
               for name, p in tuned_model.svae.network.encoder.state_dict().items())
    for member in tuned_model.head.members:
        # the second linear map: the first has the standardisation folded into it
        assert not torch.allclose(member.encoder[0][2].weight, shipped["0.2.weight"])
    predicted = tuned_model.predict(split[1].subset(np.arange(200)))
    assert np.isfinite(predicted[["teff", "teff_err", "fe_h", "fe_h_err"]].to_numpy()).all()
    # it reads the spectrum (and noise and side columns), not the frozen features
    assert len(tuned_model.head.feature_mean) == split[0].n_inputs + 3 + 2


def test_a_tuned_label_model_loads_back_to_the_same_predictions(tuned_model, split, tmp_path):
    tuned_model.save(str(tmp_path / "tuned"))
    again = LabelModel.load(str(tmp_path / "tuned"))
    stars = split[1].subset(np.arange(50))
    pd.testing.assert_frame_equal(again.predict(stars), tuned_model.predict(stars))
    with pytest.raises(ModelFileError, match="tuned the sVAE's encoder"):
        LabelHead.load(str(tmp_path / "tuned"))  # its members need the encoder's shape
    assert "each MLP tuned a copy of the sVAE's encoder (peak rate 0.002)" in \
        format_description(describe(str(tmp_path / "tuned")))
    block, _ = score_label_model(again, split[1].subset(np.arange(300)))
    assert block["head"]["encoder_lr"] == 2e-3
    # what the benchmarks print of it
    figures = headline(block)
    assert figures["fe_h"]["std_z"] == round(block["svae_label_model"]["fe_h"]["test"]["std_z"], 4)
    assert set(figures["high_low_alpha"]) == set(block["alpha_classes"]["bins"])
    assert "MLPs (each also training a copy of the encoder, peak rate 0.002), a Student-t" \
        in "\n".join(labels_section(block))


def test_a_tuned_head_needs_the_encoder_and_a_rate_not_below_zero():
    with pytest.raises(ValueError, match="encoder_lr must be >= 0"):
        LabelHeadConfig(encoder_lr=-1e-3)
    x, y = np.zeros((60, 5), np.float32), np.random.default_rng(0).normal(size=(60, 1))
    with pytest.raises(ValueError, match="pass encoder="):
        LabelHead(LabelHeadConfig(encoder_lr=1e-3, members=1, epochs=1)).fit(x, y)


def test_labels_fit_tunes_the_encoder_when_asked(split, tmp_path):
    table = labelled_table(split[0].subset(np.arange(600)), tmp_path / "train.parquet")
    out = str(tmp_path / "head")
    assert main(["--quiet", "labels", "fit", "builtin", table, "--members", "1", "--epochs",
                 "1", "--tune-encoder", "1e-3", "--out", out]) == 0
    assert LabelModel.load(out).head.config.encoder_lr == 1e-3
    assert main(["--quiet", "labels", "fit", "builtin", table, "--tune-encoder", "-1",
                 "--out", str(tmp_path / "bad")]) == 2


def test_the_demos_scoring_tunes_both_heads_and_leaves_the_baselines_without_an_encoder(
        split):
    """With a tuned recipe, the label model and the same head on the other sVAE tune their
    copies; the baselines that read no sVAE (the MLP on the spectrum, the head on a PCA, the
    survey's labels alone) take the recipe without the encoder, which they have not got."""
    from xpsvae.evaluation.labels import assess_labels
    model = SVAE.pretrained()
    train, test = split[0].subset(np.arange(800)), split[1].subset(np.arange(200))
    block, label_model, _ = assess_labels(model, train, test, side=(), config=TUNED,
                                          unsupervised=model)
    assert label_model.head.config.encoder_lr == TUNED.encoder_lr
    assert block["head"]["encoder_lr"] == TUNED.encoder_lr
    assert set(block["baselines"]) >= {"head_on_unsupervised_svae", "mlp_spectrum",
                                       "pca6_head", "alpha_from_fe_h"}
    ours = block["baselines"]["head_on_unsupervised_svae"]["teff"]["test"]["robust_sigma"]
    assert np.isfinite(ours) and ours > 0


def test_the_demo_command_passes_the_encoders_rate_on(tmp_path, monkeypatch):
    import xpsvae.evaluation.demo as demo
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(kw) or {})
    assert main(["--quiet", "demo", "--out", str(tmp_path / "d"), "--tune-encoder",
                 "2e-3"]) == 0
    assert seen["encoder_lr"] == 2e-3
    assert main(["--quiet", "demo", "--out", str(tmp_path / "e")]) == 0
    assert seen["encoder_lr"] == 0.0


def test_the_demo_refuses_a_negative_rate_before_it_writes_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), "--tune-encoder", "-1"]) == 2
    assert "encoder_lr must be >= 0" in capsys.readouterr().err
    assert not out.exists()
