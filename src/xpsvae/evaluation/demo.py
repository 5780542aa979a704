"""The main job: train on the embedded APOGEE library, evaluate on the held-out split, write the report.

``xpsvae demo --out DIR`` writes::

    DIR/model/                  the sVAE trained with the default (fast) recipe
    DIR/model_paper_recipe/     the same architecture trained with the paper's SGD recipe
    DIR/cannon/                 The Cannon fitted on the labelled training stars (exact maximum
                                likelihood; scored beside it: the same fit with TheCannon's search)
    DIR/labels/                 a label model (Teff, log g, [Fe/H], [alpha/M]) on the same
                                recipe trained semi-supervised, in labels/svae/
    DIR/metrics.json            figures of all four on the benchmark test set, the paper's claims
    DIR/figures/*.png           learning curves, reconstructions, normalised errors, Figures 2 and 3
    DIR/report.md               what was trained on what, the table, the verdicts

The work falls in two lanes that share nothing until the end: the unsupervised
one (the sVAE, the Cannon, the paper's recipe, and the label baselines built on
the first two or on the survey's labels alone) and the labelled one (the
semi-supervised sVAE, its label model, the baselines that see the spectrum). On the CPU they run
side by side in two processes (:mod:`xpsvae.evaluation.lane`), the cores
shared between them; ``lanes=1`` runs them one after the other in this one.
Every step draws from its own seed, so at the same threads per lane the
numbers are the same either way. Another thread count may move the last
digits (a few baselines' by more: a small network's sums run in another
order); ``metrics.json`` records the lanes and threads of the run.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cannon import Cannon
from ..core.constants import VERSION
from ..core.files import METRICS_FILE, write_json
from ..core.machine import usable_cores
from ..io.library import benchmark_sets, benchmark_split, library_path, load_apogee_library
from ..labels import DEFAULT_LABELS, LabelHeadConfig
from ..model.recipe import TrainConfig
from ..model.runtime import torch_threads
from ..svae import SVAE
from .assess import assess, cannon_blocks
from .figures import plot_history
from .labels import (
    DEMO_SIDE,
    fit_label_model,
    model_guesses,
    spectrum_baselines,
    survey_baselines,
    unsupervised_baselines,
    with_baselines,
    write_label_figures,
)
from .lane import Lane
from .metrics import evaluate_svae
from .report import REFERENCE, write_report

#: The labelled lane's stages, as it reports them.
LABELLED_STAGES = ("semi-supervised sVAE", "label model", "baselines on the spectrum",
                   "figures")


def default_lanes(device: str) -> int:
    """2 on a CPU of two cores or more, else 1 (a GPU runs one training at a time best)."""
    return 2 if device == "cpu" and usable_cores() >= 2 else 1


def run_demo(out_dir: str, epochs: Optional[int] = None, max_stars: Optional[int] = None,
             device: str = "cpu", paper_recipe: bool = True, progress: bool = True,
             threads: int = 0, label_epochs: int = LabelHeadConfig.epochs,
             lanes: int = 0, encoder_lr: float = 0.0) -> dict:
    """Train, evaluate and report on the embedded library (see module docstring).

    Args:
        out_dir: output directory.
        epochs: override the recipes' epochs (quick looks, tests).
        max_stars: use only the first N library stars (quick looks, tests).
        device: training device.
        paper_recipe: also train the paper's SGD recipe for comparison.
        progress: show progress bars.
        threads: CPU threads for torch in all (0: the cores this process may use, or
            torch's default in one lane).
        label_epochs: epochs of the label heads (quick looks, tests).
        lanes: 2 runs the labelled work in a second process beside the rest, 1 in this
            one after it (0: :func:`default_lanes`).
        encoder_lr: above 0, the label model and the same head on the unsupervised sVAE
            tune a copy of their sVAE's encoder at this peak rate (``LabelHeadConfig``); the
            baselines that read no sVAE are the same either way.

    Returns:
        The metrics written to ``metrics.json``.
    """
    lanes = lanes or default_lanes(device)
    if lanes not in (1, 2):
        raise ValueError(f"lanes must be 1 or 2, not {lanes}")
    # Two lanes share the cores; one keeps the caller's choice (0: torch's, or the idle cores)
    lane_threads = max(1, (threads or usable_cores()) // 2) if lanes == 2 else threads
    overrides = {"device": device, "threads": lane_threads}
    if epochs:
        overrides["epochs"] = epochs
    # the recipes first: a bad option is refused before anything is read or written
    config = TrainConfig.preset("fast", **overrides)
    head_config = LabelHeadConfig(threads=lane_threads, epochs=label_epochs,
                                  encoder_lr=encoder_lr)
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    library, train, test = _benchmark(max_stars)
    metrics = {
        "xpsvae_version": VERSION,
        "data": {"file": os.path.basename(library_path()), "n_stars": len(library),
                 "n_train": len(train), "n_test": len(test),
                 "split": "numpy.random.seed(0); perm = permutation(N); test = perm[:int(0.1 N)]",
                 "n_test_shared_source": len(benchmark_split(len(library))[1]) - len(test),
                 "accounting": library.accounting.to_dict(max_rows_listed=20)},
        "hardware": {"device": device, "lanes": lanes,
                     "torch_threads": lane_threads or torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "reference_authors_implementation": REFERENCE,
    }
    unsupervised_args = (out_dir, library, train, test, config, head_config, overrides,
                         paper_recipe, progress)
    labelled_args = (out_dir, max_stars, config, head_config)
    # every step of this process at the lane's threads, as the second lane runs all of its
    # own (two lanes on two cores: one thread each, not three between them)
    with torch_threads(lane_threads):
        if lanes == 1:
            blocks, (baselines, guesses), seconds = _unsupervised_lane(*unsupervised_args)
            labels, own_guesses, labelled_seconds = _labelled_lane(
                *labelled_args, progress=progress, sets=(library, train, test))
        else:
            with Lane(_labelled_lane, labelled_args, threads=lane_threads) as lane:
                blocks, (baselines, guesses), seconds = _unsupervised_lane(*unsupervised_args)
                labels, own_guesses, labelled_seconds = _wait(lane, progress)
    metrics.update(blocks)
    metrics["hardware"]["lane_seconds"] = {"unsupervised": seconds,
                                           "labelled": labelled_seconds}
    metrics["labels"] = with_baselines(labels, test, {**labels["baselines"], **baselines},
                                       {**own_guesses, **guesses})
    metrics["labels"]["svae"]["unsupervised_test"] = metrics["svae"]["test"]
    write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    write_report(out_dir, metrics)
    return metrics


def _benchmark(max_stars: Optional[int]) -> tuple:
    """(library, training stars, test stars): the library, or its first ``max_stars``."""
    library = load_apogee_library()
    if max_stars:
        library = library.subset(np.arange(min(max_stars, len(library))))
    return (library, *benchmark_sets(library))


def _unsupervised_lane(out_dir: str, library, train, test, config: TrainConfig,
                       head_config: LabelHeadConfig, overrides: dict, paper_recipe: bool,
                       progress: bool) -> tuple:
    """The sVAE and the Cannon, their figures and the paper's claims; the label baselines
    built on them and on the survey's labels alone; the paper's recipe beside them.

    Returns:
        (metrics blocks, (label baselines, their high-alpha guesses per test star), the
        lane's seconds).
    """
    began = start = time.perf_counter()
    model = SVAE(train_config=config).fit(train, out_dir=os.path.join(out_dir, "model"),
                                          progress=progress)
    wall = time.perf_counter() - start
    # The Cannon on the same training stars, scored in the same standardised units.
    start = time.perf_counter()
    cannon = Cannon().fit(train, standardizer=model.standardizer)
    cannon_seconds = time.perf_counter() - start
    cannon.save(os.path.join(out_dir, "cannon"))
    outputs = model.standardised_outputs(test)  # shared by both Cannons' scoring
    metrics = assess(model, test, out_dir, cannon=cannon, latent_stars=library, outputs=outputs)
    metrics["cannon"]["fit"]["wall_time_s"] = cannon_seconds
    metrics["svae"]["training"] = _training_block(model, "fast", config, wall)
    plot_history(model.history, os.path.join(out_dir, "figures", "learning_curves.png"),
                 "sVAE learning curves (fast recipe)")
    # The same Cannon with TheCannon 0.7.3's grid search for the scatter: the figures that
    # package gives (benchmarks/cannon_vs_thecannon.py), beside the exact fit's.
    start = time.perf_counter()
    grid_cannon = Cannon(scatter_method="thecannon").fit(train, standardizer=model.standardizer)
    grid_seconds = time.perf_counter() - start
    metrics["cannon_thecannon_search"] = cannon_blocks(model, grid_cannon, test, outputs)[3]
    metrics["cannon_thecannon_search"]["fit"]["wall_time_s"] = grid_seconds
    baselines, guesses = unsupervised_baselines(model, cannon, train, test, DEFAULT_LABELS,
                                                DEMO_SIDE, head_config)
    survey, survey_guesses = survey_baselines(train, test, DEFAULT_LABELS, head_config)
    label_baselines = ({**baselines, **survey}, {**guesses, **survey_guesses})
    if paper_recipe:
        paper = TrainConfig.preset("paper", **overrides)
        start = time.perf_counter()
        model = SVAE(train_config=paper).fit(
            train, out_dir=os.path.join(out_dir, "model_paper_recipe"), progress=progress)
        wall = time.perf_counter() - start
        plot_history(model.history, os.path.join(out_dir, "figures",
                                                 "learning_curves_paper_recipe.png"),
                     "sVAE learning curves (paper recipe)")
        metrics["svae_paper_recipe"] = assess(model, test, out_dir,
                                              figure_suffix="_paper_recipe",
                                              progress_title="(paper recipe)")["svae"]
        metrics["svae_paper_recipe"]["training"] = _training_block(model, "paper", paper, wall)
    return metrics, label_baselines, time.perf_counter() - began


def _training_block(model: SVAE, recipe: str, config: TrainConfig, wall: float) -> dict:
    """The ``training`` block of one sVAE: its recipe, time and architecture."""
    return {"recipe": recipe, "wall_time_s": wall, "epochs": model.history[-1]["epoch"],
            "optimizer": config.optimizer, "lr": config.lr, "batch_size": config.batch_size,
            "loss_form": config.loss_form, "architecture": model.config.to_dict()}


def _labelled_lane(out_dir: str, max_stars: Optional[int], config: TrainConfig,
                   head_config: LabelHeadConfig, say: Optional[Callable] = None,
                   progress: bool = False, sets: Optional[tuple] = None) -> tuple:
    """The same recipe with the latent also learning the labels (semi-supervised), a label
    model on it, its figures, and the baselines that see the spectrum (docs/labels.md). Reads the library itself (where not given its ``sets``, as
    :func:`_benchmark` returns them), so that it can run in a process of its own.

    Returns:
        (the ``labels`` block, its baselines so far; the label model's high-alpha guesses
        per test star; the lane's seconds).
    """
    say = say or (lambda stage: None)
    began = time.perf_counter()
    library, train, test = sets or _benchmark(max_stars)
    start = time.perf_counter()
    joint = SVAE(train_config=config).fit(train, labels=DEFAULT_LABELS, progress=progress)
    joint_seconds = time.perf_counter() - start
    say(LABELLED_STAGES[0])
    block, label_model, predicted = fit_label_model(joint, train, test, DEFAULT_LABELS,
                                                    DEMO_SIDE, head_config)
    block["svae"] = {"training": {"wall_time_s": joint_seconds,
                                  "label_weight": config.label_weight, "epochs": config.epochs},
                     "test": evaluate_svae(joint, test)["test"]}
    label_model.save(os.path.join(out_dir, "labels"))
    say(LABELLED_STAGES[1])
    block["baselines"] = spectrum_baselines(joint, train, test, DEFAULT_LABELS, DEMO_SIDE,
                                            head_config)
    say(LABELLED_STAGES[2])
    no_fe = np.flatnonzero(~np.isfinite(np.asarray(library.labels["fe_h"], float)))
    write_label_figures(os.path.join(out_dir, "figures"), predicted, test.labels,
                        label_model.labels, label_model.predict(library.subset(no_fe)))
    say(LABELLED_STAGES[3])
    return block, model_guesses(label_model, predicted), time.perf_counter() - began


def _wait(lane: Lane, progress: bool) -> tuple:
    """The labelled lane's result, with a bar of its stages while this process waits."""
    bar = tqdm(total=len(LABELLED_STAGES), desc="labels (second process)", unit="stage",
               disable=not progress)
    def done(stage: str) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{stage}: done")

    try:
        return lane.result(on_stage=done)
    finally:
        bar.close()
