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
"""

from __future__ import annotations

import os
import platform
import time
from typing import Optional

import numpy as np
import torch

from ..cannon import Cannon
from ..core.constants import VERSION
from ..core.files import METRICS_FILE, write_json
from ..io.library import benchmark_sets, library_path, load_apogee_library
from ..labels import DEFAULT_LABELS, LabelHeadConfig
from ..model.recipe import TrainConfig
from ..svae import SVAE
from .assess import assess, cannon_blocks
from .figures import plot_history
from .labels import assess_labels, write_label_figures
from .metrics import evaluate_svae
from .report import REFERENCE, write_report


def run_demo(out_dir: str, epochs: Optional[int] = None, max_stars: Optional[int] = None,
             device: str = "cpu", paper_recipe: bool = True, progress: bool = True,
             threads: int = 0, label_epochs: int = LabelHeadConfig.epochs) -> dict:
    """Train, evaluate and report on the embedded library (see module docstring).

    Args:
        out_dir: output directory.
        epochs: override the recipes' epochs (quick looks, tests).
        max_stars: use only the first N library stars (quick looks, tests).
        device: training device.
        paper_recipe: also train the paper's SGD recipe for comparison.
        progress: show progress bars.
        threads: CPU threads for torch (0: torch's default).
        label_epochs: epochs of the label heads (quick looks, tests).

    Returns:
        The metrics written to ``metrics.json``.
    """
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    library = load_apogee_library()
    if max_stars:
        library = library.subset(np.arange(min(max_stars, len(library))))
    train, test = benchmark_sets(library)

    overrides = {"device": device, "threads": threads}
    if epochs:
        overrides["epochs"] = epochs
    recipes = {"svae": ("fast", "model")}
    if paper_recipe:
        recipes["svae_paper_recipe"] = ("paper", "model_paper_recipe")

    metrics = {
        "xpsvae_version": VERSION,
        "data": {"file": os.path.basename(library_path()), "n_stars": len(library),
                 "n_train": len(train), "n_test": len(test),
                 "split": "numpy.random.seed(0); perm = permutation(N); test = perm[:int(0.1 N)]",
                 "accounting": library.accounting.to_dict(max_rows_listed=20)},
        "hardware": {"device": device, "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "reference_authors_implementation": REFERENCE,
    }
    for name, (recipe, subdir) in recipes.items():
        config = TrainConfig.preset(recipe, **overrides)
        start = time.perf_counter()
        model = SVAE(train_config=config).fit(train, out_dir=os.path.join(out_dir, subdir),
                                              progress=progress)
        wall = time.perf_counter() - start
        training = {"recipe": recipe, "wall_time_s": wall, "epochs": model.history[-1]["epoch"],
                    "optimizer": config.optimizer, "lr": config.lr,
                    "batch_size": config.batch_size, "loss_form": config.loss_form,
                    "architecture": model.config.to_dict()}
        suffix = "" if name == "svae" else "_paper_recipe"
        plot_history(model.history, os.path.join(out_dir, "figures", f"learning_curves{suffix}.png"),
                     f"sVAE learning curves ({recipe} recipe)")
        if name == "svae":
            # The Cannon on the same training stars, scored in the same standardised units.
            start = time.perf_counter()
            cannon = Cannon().fit(train, standardizer=model.standardizer)
            cannon_seconds = time.perf_counter() - start
            cannon.save(os.path.join(out_dir, "cannon"))
            outputs = model.standardised_outputs(test)  # shared by both Cannons' scoring
            result = assess(model, test, out_dir, cannon=cannon, latent_stars=library,
                            outputs=outputs)
            result["cannon"]["fit"]["wall_time_s"] = cannon_seconds
            metrics.update(result)
            # The same Cannon with TheCannon 0.7.3's grid search for the scatter: the figures
            # that package gives (benchmarks/cannon_vs_thecannon.py), beside the exact fit's.
            start = time.perf_counter()
            grid_cannon = Cannon(scatter_method="thecannon").fit(
                train, standardizer=model.standardizer)
            grid_seconds = time.perf_counter() - start
            metrics["cannon_thecannon_search"] = cannon_blocks(model, grid_cannon, test,
                                                               outputs)[3]
            metrics["cannon_thecannon_search"]["fit"]["wall_time_s"] = grid_seconds
            # Labels: the same recipe with the latent also learning the labels (semi-
            # supervised), a label model on it, and the baselines (docs/labels.md).
            start = time.perf_counter()
            joint = SVAE(train_config=config).fit(train, labels=DEFAULT_LABELS,
                                                  progress=progress)
            joint_seconds = time.perf_counter() - start
            metrics["labels"], label_model, predicted = assess_labels(
                joint, train, test, cannon=cannon, unsupervised=model,
                config=LabelHeadConfig(threads=threads, epochs=label_epochs))
            metrics["labels"]["svae"] = {
                "training": {"wall_time_s": joint_seconds, "label_weight": config.label_weight,
                             "epochs": config.epochs},
                "test": evaluate_svae(joint, test)["test"],
                "unsupervised_test": metrics["svae"]["test"]}
            label_model.save(os.path.join(out_dir, "labels"))
            no_fe = np.flatnonzero(~np.isfinite(np.asarray(library.labels["fe_h"], float)))
            write_label_figures(os.path.join(out_dir, "figures"), predicted, test.labels,
                                label_model.labels, label_model.predict(library.subset(no_fe)))
        else:
            result = assess(model, test, out_dir, figure_suffix=suffix,
                            progress_title=f"({recipe} recipe)")
            metrics[name] = result["svae"]
        metrics[name]["training"] = training
    write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    write_report(out_dir, metrics)
    return metrics
