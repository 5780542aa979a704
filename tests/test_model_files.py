"""Model directories: safetensors + JSON round trip, clear failures, no pickle."""
import json
import os

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from xpsvae import SVAE, ModelFileError, SVAEConfig
from xpsvae.core.files import CONFIG_FILE, MODEL_FILE


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_library):
    from xpsvae import TrainConfig
    out = str(tmp_path_factory.mktemp("model"))
    model = SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=1, seed=5, threads=2)).fit(
        small_library.subset(np.arange(1000)), out_dir=out, progress=False)
    return model, out


def test_round_trip_gives_identical_outputs(trained, small_library):
    model, out = trained
    loaded = SVAE.load(out)
    stars = small_library.subset(np.arange(1000, 1100))
    for a, b in zip(model.encode(stars), loaded.encode(stars)):
        np.testing.assert_array_equal(a, b)
    z = model.encode(stars)[0]
    np.testing.assert_array_equal(model.decode(z), loaded.decode(z))
    np.testing.assert_array_equal(model.scatter(z), loaded.scatter(z))
    assert loaded.info["kind"] == "sampled"
    assert loaded.history and loaded.history[-1]["epoch"] == 2


def test_model_directory_holds_only_safetensors_and_json(trained):
    _, out = trained
    files = set(os.listdir(out))
    assert {MODEL_FILE, CONFIG_FILE, "history.csv", "checkpoint.safetensors"} <= files
    assert not any(f.endswith((".pt", ".pth", ".pkl", ".pickle")) for f in files)
    with open(os.path.join(out, CONFIG_FILE)) as f:
        saved = json.load(f)
    assert saved["format_version"] == 1
    assert len(saved["preprocessing"]["mean"]) == 343


def _copy(out, tmp_path):
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in (MODEL_FILE, CONFIG_FILE):
        (dst / name).write_bytes(open(os.path.join(out, name), "rb").read())
    return dst


def test_wrong_version_fails_clearly(trained, tmp_path):
    dst = _copy(trained[1], tmp_path)
    saved = json.loads((dst / CONFIG_FILE).read_text())
    saved["format_version"] = 99
    (dst / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ModelFileError, match="format version 99"):
        SVAE.load(str(dst))


def test_wrong_weight_shape_fails_clearly(trained, tmp_path):
    dst = _copy(trained[1], tmp_path)
    weights = load_file(str(dst / MODEL_FILE))
    weights["decoder.1.weight"] = weights["decoder.1.weight"][:100]
    save_file(weights, str(dst / MODEL_FILE))
    with pytest.raises(ModelFileError, match=r"decoder.1.weight.*\(100, 80\).*\(343, 80\)"):
        SVAE.load(str(dst))


def test_config_that_disagrees_with_weights_fails_clearly(trained, tmp_path):
    dst = _copy(trained[1], tmp_path)
    saved = json.loads((dst / CONFIG_FILE).read_text())
    saved["model"]["latent_dim"] = 8
    (dst / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ModelFileError, match="shape"):
        SVAE.load(str(dst))


def test_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(ModelFileError, match="missing"):
        SVAE.load(str(tmp_path))


def test_generate_and_decode_are_in_input_units(trained):
    model, _ = trained
    latent, spectra, scatter = model.generate(5, seed=1)
    assert spectra.shape == scatter.shape == (5, 343)
    assert (scatter > 0).all()
    # medflux-normalised spectra: the standardisation is undone, so values sit near the data's mean
    mean = model.standardizer.mean
    assert np.median(np.abs(spectra - mean) / model.standardizer.std) < 5
    np.testing.assert_allclose(model.decode(latent), spectra)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        model.decode(np.zeros((2, 5)))


def test_untrained_model_says_so():
    with pytest.raises(RuntimeError, match="not trained"):
        SVAE(SVAEConfig(input_dim=10)).encode(np.zeros((1, 10)))
