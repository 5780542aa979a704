"""report.md: the page a person reads first after ``xpsvae demo`` or ``xpsvae evaluate``."""

from __future__ import annotations

import os
from typing import Optional

from ..core.files import REPORT_FILE, atomic_path
from .label_report import CAPTIONS as LABEL_CAPTIONS
from .label_report import labels_section

#: The authors' public implementation, 11 minutes on 2 CPU cores, same split.
REFERENCE = {"mean_nll": -1115.0, "std_r": 1.01, "frac_abs_r_gt_5": 0.0004, "train_minutes": 11}
#: What the default recipe must reach on the test set.
TARGETS = {"max_std_r_offset": 0.05, "max_train_seconds": 300.0}

ROWS = (("mean_nll", "mean per-star NLL (lower is better)", "{:.1f}"),
        ("std_r", "std of normalised error r", "{:.3f}"),
        ("frac_abs_r_gt_5", "fraction of \\|r\\| > 5", "{:.3%}"),
        ("frac_abs_r_gt_10", "fraction of \\|r\\| > 10", "{:.3%}"),
        ("median_scatter_over_error", "median scatter / median error", "{:.2f}"),
        ("n_stars", "stars", "{:d}"))

CAPTIONS = {
    "reconstructions.png": "Four held-out stars: observed flux with errors, the reconstruction "
                           "from the latent mean with its intrinsic scatter, and the normalised "
                           "error.",
    "figure2_*": "Figure 2 of the paper: normalised errors of one input against the APOGEE "
                 "labels for the sVAE (top) and the Cannon (middle), with the mode per label bin "
                 "(purple); bottom: the sVAE's per-star scatter against the Cannon's population "
                 "scatter (grey). Cool and low-gravity stars are coloured. Only stars with "
                 "every label the Cannon is fitted on are drawn: the hottest stars lack an "
                 "APOGEE [Fe/H], so the Teff axis stops short of them.",
    "figure3_latent.png": "Figure 3 of the paper: latent means of stars with APOGEE [Fe/H] "
                          "(orange) and without (blue), every pair of dimensions.",
    "normalised_errors.png": "Normalised errors of all test stars and inputs against N(0, 1).",
    "scatter_vs_error.png": "Intrinsic scatter against observational error, per input.",
    "learning_curves.png": "Train and validation loss per epoch, each term of the loss.",
    "normalised_errors_paper_recipe.png": "Normalised errors, paper recipe.",
    "scatter_vs_error_paper_recipe.png": "Scatter against error, paper recipe.",
    "learning_curves_paper_recipe.png": "Learning curves, paper recipe.",
}


def _grid_against_exact(grid: dict, exact: Optional[dict]) -> str:
    """How the grid-searched Cannon's test figures stand against the exact fit's, in words."""
    if not exact:
        return ""
    ratio = grid["median_scatter_over_error"] / exact["median_scatter_over_error"]
    tails = "fewer" if grid["frac_abs_r_gt_5"] < exact["frac_abs_r_gt_5"] else "no fewer"
    nll = "worse" if grid["mean_nll"] > exact["mean_nll"] else "no worse"
    return (f" Its median scatter is {ratio - 1:+.1%} against the exact fit's, with {tails} "
            f"normalised errors beyond 5 and a {nll} NLL.")


def _table(metrics: dict, models: list, block: str) -> list:
    lines = ["| figure | " + " | ".join(label for _, label in models) + " |",
             "|---" * (len(models) + 1) + "|"]
    for key, label, fmt in ROWS:
        cells = []
        for name, _ in models:
            value = metrics.get(name, {}).get(block, {}).get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _verdict(ok: bool) -> str:
    return "**supported**" if ok else "**not supported**"


def _held_out_sentence(held_out: dict) -> str:
    """What is known of whether the evaluated stars are held out."""
    if not held_out.get("training_stars_recorded"):
        return ("The model records no training stars, so whether these stars are held out "
                "cannot be told.")
    given, left_out = held_out["training_stars_given"], held_out["training_stars_left_out"]
    if left_out:
        return (f"{left_out} of the stars given were the model's own training stars and are "
                "left out: every figure below is on held-out stars.")
    if given:
        return (f"**{given} of the stars evaluated are the model's own training stars** "
                "(kept by --include-training-stars): the figures below are not held-out "
                "figures.")
    return "None of them is among the model's training stars."


def write_report(out_dir: str, metrics: dict) -> str:
    """Write ``out_dir/report.md`` from the metrics of ``demo`` or ``evaluate``."""
    models = [("svae", "sVAE" + (f", {metrics['svae']['training']['recipe']} recipe"
                                  if "training" in metrics["svae"] else ""))]
    if "svae_paper_recipe" in metrics:
        models.append(("svae_paper_recipe", "sVAE, paper recipe"))
    if "cannon" in metrics:
        models.append(("cannon", "The Cannon"))
    if "cannon_thecannon_search" in metrics:
        models.append(("cannon_thecannon_search", "The Cannon, TheCannon's scatter search"))
    lines = ["# xpsvae report", ""]
    hw = metrics.get("hardware")
    if hw:
        lines += [f"xpsvae {metrics.get('xpsvae_version')}; torch {hw['torch']} on {hw['device']} "
                  f"with {hw['torch_threads']} thread{'s' if hw['torch_threads'] != 1 else ''}"
                  + (" in each of two processes side by side (the unsupervised and the "
                     "labelled work)" if hw.get("lanes") == 2 else "") + ".", ""]
    lines += ["## What was trained on what", ""]
    data = metrics.get("data", {})
    acc = data.get("accounting")
    if acc:
        lines.append(f"- Data: `{data.get('file')}`: {acc['rows_read']} rows read, "
                     f"{acc['rows_kept']} kept, {acc['rows_set_aside']} set aside"
                     + (f" ({acc['reasons']})" if acc['rows_set_aside'] else "") + ". "
                     + " ".join(acc.get("notes", [])))
    if "split" in data:
        shared = data.get("n_test_shared_source")
        lines.append(f"- Split: {data['split']}: {data['n_train']} training stars (10% of them "
                     f"held out for validation), {data['n_test']} test stars"
                     + (f" (the other {shared} of perm[:int(0.1 N)] share their Gaia source_id, "
                        "and so their XP spectrum, with a training star, under another APOGEE "
                        "entry, and are left out: not held out)" if shared else "")
                     + ". Every figure below is on the test stars.")
    if "model_dir" in metrics:
        lines.append(f"- Model: `{metrics['model_dir']}`, evaluated on `{data.get('file')}`. "
                     + _held_out_sentence(data.get("held_out", {})))
    for name, label in models:
        t = metrics[name].get("training")
        if t:
            a = t["architecture"]
            lines.append(f"- {label}: encoder {a['input_dim']}-{'-'.join(map(str, a['hidden']))}-"
                         f"2x{a['latent_dim']}, {a['activation']}, norm {a['norm']}, scatter map "
                         f"{a['scatter_map']}; {t['optimizer']} lr {t['lr']}, batch "
                         f"{t['batch_size']}, {t['epochs']} epochs, loss form `{t['loss_form']}`; "
                         f"trained in {t['wall_time_s']:.0f} s.")
    if "cannon" in metrics:
        fit = metrics["cannon"]["fit"]
        seconds = f", fitted in {fit['wall_time_s']:.1f} s" if "wall_time_s" in fit else ""
        method = ("exact maximum likelihood with the errors" if fit.get("scatter_method", "ml")
                  == "ml" else "TheCannon's grid search for the scatter")
        lines.append(f"- The Cannon: quadratic in {', '.join(fit['labels'])} with a population "
                     f"scatter per input, {method}; "
                     f"{fit['n_train_stars_used']} labelled training stars used, "
                     f"{fit['n_train_stars_without_labels']} left out for a missing label"
                     f"{seconds}. It is scored on the {metrics['cannon']['test']['n_stars']} test "
                     f"stars with labels ({fit['n_test_stars_without_labels']} test stars have "
                     "none), in the sVAE's standardised units.")
    if "cannon_thecannon_search" in metrics:
        grid = metrics["cannon_thecannon_search"]
        fit = grid["fit"]
        lines.append("- Beside it, the same Cannon with the scatter found by TheCannon 0.7.3's "
                     "search (a grid in ln s, step 0.5, and a parabola through its best three "
                     f"points; fitted in {fit.get('wall_time_s', float('nan')):.1f} s), which "
                     "reproduces that package's fit (`benchmarks/cannon_vs_thecannon.py`)."
                     + _grid_against_exact(grid["test"], metrics.get("cannon", {}).get("test"))
                     + " The claims use the exact fit.")
    own = data.get("held_out", {}).get("training_stars_given", 0) and \
        not data["held_out"]["training_stars_left_out"]
    lines += ["", "## Quality on the stars evaluated, training stars among them" if own
              else "## Quality on the held-out stars", "",
              "NLL per star = sum over inputs of r^2/2 + ln(w)/2 with w = error^2 + scatter^2 "
              "in standardised units, x_hat decoded from the latent mean (the Cannon: predicted "
              "from the labels), no KL term.", ""]
    for block, title in (("test", "All test stars"), ("cool", "Cool stars (Teff < 4000 K)"),
                         ("low_logg", "Low gravity (logg < 1)")):
        if block in metrics["svae"]:
            lines += [f"### {title}", ""] + _table(metrics, models, block) + [""]
    part = metrics["svae"].get("partial")
    if part:
        lines += ["### Partial stars", "",
                  f"{part['n_stars']} stars with some inputs unmeasured (on average "
                  f"{part['mean_observed_inputs']:.0f} measured) are left out of the tables "
                  "and figures above. Encoded with their holes filled in by the model, they "
                  f"have a mean NLL of {part['mean_nll']:.1f} over their measured inputs "
                  f"(std r {part['std_r']:.3f}).", ""]

    if "training" in metrics["svae"] and "reference_authors_implementation" in metrics:
        lines += _reference_section(metrics)
    if "claims" in metrics:
        lines += _claims_section(metrics)
    if "labels" in metrics:
        lines += labels_section(metrics["labels"])
    lines += ["## Figures", ""]
    fig_dir = os.path.join(out_dir, "figures")
    present = sorted(os.listdir(fig_dir)) if os.path.isdir(fig_dir) else []
    for pattern, caption in {**CAPTIONS, **LABEL_CAPTIONS}.items():
        names = [n for n in present if n.startswith(pattern[:-1])] if pattern.endswith("*") \
            else [pattern] if pattern in present else []
        for name in names:
            lines += [f"![{name}](figures/{name})", "", f"{name}: {caption}", ""]
    path = os.path.join(out_dir, REPORT_FILE)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _reference_section(metrics: dict) -> list:
    test = metrics["svae"]["test"]
    training = metrics["svae"]["training"]
    better = test["mean_nll"] < REFERENCE["mean_nll"]
    calibrated = abs(test["std_r"] - 1) <= TARGETS["max_std_r_offset"]
    fast = training["wall_time_s"] <= TARGETS["max_train_seconds"]
    return [
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
        "(meaningful only for a full run on 2 CPU cores).", ""]


def _claims_section(metrics: dict) -> list:
    claims = metrics["claims"]
    limits = claims["limits"]
    c1, c2, c3 = (claims["as_good_with_smaller_scatter"], claims["robust_in_the_tails"],
                  claims["covers_more_latent_volume"])
    edges = metrics["comparison"]["edges_mean_abs_r"]
    lines = ["## The paper's three claims", "",
             "| edge inputs | mean \\|r\\| sVAE | mean \\|r\\| Cannon | ratio (paper: 1.02 BP, "
             "1.09 RP) |", "|---|---|---|---|"]
    for side, e in edges.items():
        lines.append(f"| {side} (inputs {e['inputs'][0]}-{e['inputs'][1]}) | {e['svae']:.3f} | "
                     f"{e['cannon']:.3f} | {e['ratio']:.3f} |")
    lines += ["",
              f"1. *Reconstructions as good as a supervised model's, with far smaller scatter*: "
              f"{_verdict(c1['supported'])}. On the same {metrics['comparison']['stars']} "
              f"labelled test stars the sVAE's mean |r| over the edge inputs is "
              + " and ".join(f"{r:.2f}x" for r in c1["edge_ratios"].values())
              + f" the Cannon's (we ask at most {limits['max_edge_ratio']:.2f}x), while the "
              f"Cannon's median scatter is {c1['median_scatter_cannon_over_svae']:.0f}x the "
              f"sVAE's (we ask at least {limits['min_scatter_ratio']:.0f}x; paper: up to 100x).",
              ""]
    tail_text = "; ".join(f"{name}: sVAE {t['svae_frac_abs_r_gt_5']:.3%} against Cannon "
                          f"{t['cannon_frac_abs_r_gt_5']:.3%}" for name, t in c2["tails"].items())
    lines += [f"2. *No blow-up where labels are poor*: {_verdict(c2['supported'])}. Fraction "
              f"of |r| > 5 in the tails — {tail_text}; we ask the sVAE to stay at or below "
              f"{limits['max_tail_fraction_ratio']:.0%} of the Cannon's.", ""]
    if c3["gain"] is not None:
        lo, hi = c3["interval_16_84"]
        gain = metrics["latent_volume_gain"]
        lines += [f"3. *More coverage than any labelled set*: {_verdict(c3['supported'])}. The "
                  f"{gain['n_unlabelled']} stars without [Fe/H] add {c3['gain']:.1%} "
                  f"(basic bootstrap 16-84%: {lo:.1%} to {hi:.1%}; resampling bias "
                  f"{gain['bootstrap_bias']:+.1%}) to the latent volume of the "
                  f"{gain['n_labelled']} labelled stars (paper: ~30% for 10^6 unlabelled stars). "
                  f"Method: {gain['method']}; cell width {gain['cell_width']:.3f}.", ""]
    return lines
