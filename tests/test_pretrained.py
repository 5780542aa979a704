"""The model shipped with the package: loaded by name everywhere, and what it claims to be."""

import json
import os
import subprocess
import sys

import numpy as np

from xpsvae import SVAE
from xpsvae.core.files import BUILTIN_MODEL_DIR, CONFIG_FILE, MODEL_FILE
from xpsvae.pretrained import shipped_model_differences


def test_the_shipped_model_is_small_safetensors_and_json():
    names = sorted(os.listdir(BUILTIN_MODEL_DIR))
    assert CONFIG_FILE in names and MODEL_FILE in names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".pth"))]
    size = sum(os.path.getsize(os.path.join(BUILTIN_MODEL_DIR, n)) for n in names)
    assert size < 2 * 2**20, size  # package data: small


def test_the_shipped_model_matches_its_recorded_recipe_and_data(library):
    assert shipped_model_differences() == []


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
    assert json.loads(info.stdout)["what"] == "model"
    out = tmp_path / "drawn.parquet"
    done = subprocess.run(run + ["generate", "builtin", "--n", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr
