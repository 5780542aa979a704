"""The labels section of report.md: figures per label and sub-population, the baselines,
and the goals, each said reached or not with the figure, and what limits it where not."""

from __future__ import annotations

from typing import List, Optional

#: Goals on the benchmark test split (robust sigma; [alpha/M] as RMSE on giants).
GOALS = {"teff": ("robust_sigma", "test", 60.0, "K"), "logg": ("robust_sigma", "test", 0.15, "dex"),
         "fe_h": ("robust_sigma", "test", 0.08, "dex"),
         "alpha_m": ("rmse", "giants", 0.04, "dex")}
#: The training length docs/labels.md ("Trained longer") measured the labels at, beside 60.
LONGER_EPOCHS = 1000
NAMES = {"teff": "Teff", "logg": "log g", "fe_h": "[Fe/H]", "alpha_m": "[α/M]"}
BASELINE_NAMES = {"head_on_unsupervised_svae": "the same head on the unsupervised sVAE",
                  "mlp_spectrum": "supervised MLP on the spectrum", "pca6_head":
                  "the same head on a 6-component PCA", "cannon": "the Cannon's test step",
                  "alpha_from_fe_h": "[α/M] from APOGEE [Fe/H] alone"}
CAPTIONS = {
    "labels_vs_apogee.png": "The label model on the test stars: predicted against APOGEE "
                            "(top) and the residual (bottom), density of stars (log).",
    "labels_coverage.png": "Share of test stars whose |z| is below k, against the Gaussian's: "
                           "a curve on the black one means honest uncertainties.",
    "labels_kiel_unlabelled.png": "Kiel diagram of the library stars APOGEE gives no [Fe/H], "
                                  "as the label model predicts them (flagged stars left out; "
                                  "in grey those whose [Fe/H] is extrapolated).",
}


def _trained_shorter(epochs: Optional[int]) -> bool:
    """Whether the sVAE's recorded training length is below :data:`LONGER_EPOCHS`."""
    return epochs is not None and epochs < LONGER_EPOCHS


def _untuned(tuned: bool, what: str) -> str:
    """Where the head read the frozen features, what tuning the encoder did for ``what`` in
    docs/labels.md's runs ("Tuning the encoder")."""
    return "" if tuned else (f" A head that tunes the encoder (`--tune-encoder 2e-3` to "
                             f"`labels fit` or `demo`) {what} (docs/labels.md, \"Tuning the "
                             "encoder\").")


def _beside(value: float, goal: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, or more where fewer would print a value
    on one side of ``goal`` as the goal itself (0.8497 against 0.85 is not "0.85")."""
    for d in range(digits, digits + 4):
        if value == goal or (float(f"{value:.{d}g}") - goal) * (value - goal) > 0:
            return f"{value:.{d}g}"
    return f"{value:.{digits + 4}g}"


def _f(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _tails(t: dict) -> str:
    """What limits the calibration where the core is over-covered and the tails heavy."""
    beyond = 1 - t["coverage_3sigma"]
    if t["coverage_1sigma"] <= 0.703 or beyond <= 2 * GAUSSIAN_BEYOND_3:
        return ""
    return (f" What limits it: {100 * beyond:.1f}% of the stars lie beyond 3σ, where a "
            f"Gaussian puts {100 * GAUSSIAN_BEYOND_3:.2f}%; with tails that heavy, no σ gives "
            "both std z 1 and 68.3% within 1σ (docs/labels.md).")


def _std_z_spread(t: dict) -> str:
    """Where std z misses 0.9-1.1: how far the test stars pin it down (metrics from before
    the bootstrap: "")."""
    if "std_z_interval" not in t or 0.9 <= t["std_z"] <= 1.1:
        return ""
    low, high = t["std_z_interval"]
    return (f" Over bootstrap resamples of these stars std z spans {low:.2f}–{high:.2f} "
            f"(90%), and the star of largest |z| ({t['largest_abs_z']:.1f}) carries "
            f"{100 * t['largest_z_variance_share']:.0f}% of z's variance: "
            + ("these stars cannot tell std z from the goal's range."
               if low <= 1.1 and high >= 0.9 else
               "std z lies outside the goal's range in nearly every resample."))


def _near_goal(figure: str, value: float, n: Optional[int], goal: float, unit: str) -> str:
    """Where a robust sigma lies within two of its standard errors of the goal, says so:
    these stars cannot tell it from the goal. The error is the large-sample one of
    1.4826 MAD for Gaussian residuals, sigma sqrt(1.36 / n) (MAD's efficiency 37%)."""
    if figure != "robust_sigma" or not n:
        return ""
    error = value * (1.36 / n) ** 0.5
    if abs(value - goal) >= 2 * error:
        return ""
    return (f" Its standard error over these {n:,} stars is ±{error:.2g} {unit}: it lies "
            f"{abs(value - goal) / error:.1f} of them from the goal, which these stars "
            "cannot tell it from.")


def _brightness(name: str, unit: str, goal: float, by_magnitude: Optional[dict]) -> str:
    """`` By brightness: ...``: the robust sigma of the stars brighter and fainter than the
    block's cut, whether the bright ones meet the ``goal``, and whether the faint ones'
    noisier spectra limit it: only where their robust sigma is :data:`FAINTER_WORSE` times
    the bright ones' or more ("" without the block)."""
    cells = ((by_magnitude or {}).get("labels") or {}).get(name)
    if not cells or not cells["bright"].get("n_stars") or not cells["faint"].get("n_stars"):
        return ""
    bright, faint, cut = cells["bright"], cells["faint"], by_magnitude["cut"]
    return (f" By brightness: the {bright['n_stars']:,} stars brighter than G = {cut:g} give "
            f"{bright['robust_sigma']:.3g} {unit}"
            + (" (the goal met)" if bright["robust_sigma"] <= goal else "")
            + f", the {faint['n_stars']:,} fainter {faint['robust_sigma']:.3g} {unit}: "
            + ("the spectra's signal-to-noise limits it too."
               if faint["robust_sigma"] >= FAINTER_WORSE * bright["robust_sigma"] else
               "the faint stars' noisier spectra do not set it."))


def _accuracy_limit(name: str, figure: str, subset: str, unit: str, ours: dict,
                    baselines: dict, epochs: Optional[int] = None,
                    brightness: str = "") -> str:
    """What limits an accuracy goal not reached, from the same run's figures (with
    ``brightness``, :func:`_brightness`'s words); and, where the sVAE trained fewer than
    :data:`LONGER_EPOCHS` epochs, that training longer helps."""
    longer = "" if not _trained_shorter(epochs) else (
        f" This sVAE trained {epochs} epochs; trained for {LONGER_EPOCHS:,} (`--recipe "
        "long`), the same recipe does better on every label (docs/labels.md, \"Trained "
        "longer\").")
    if figure == "rmse":
        robust = ours.get(name, {}).get(subset, {}).get("robust_sigma")
        split = ours.get(name, {}).get(subset, {}).get("by_fe_h") or {}
        where = "" if not split else (
            f"; the {split['n_below']:,} of them below [Fe/H] {split['fe_h_cut']:g} have an "
            f"RMSE of {split['rmse_below']:.3g} {unit} and carry "
            f"{100 * split['share_of_squared_error_below']:.0f}% of its square, the "
            f"{split['n_above']:,} at or above {split['rmse_above']:.3g} {unit}")
        rmse = ours.get(name, {}).get(subset, {}).get("rmse")
        if robust is None:
            return ""
        if rmse is not None and rmse < TAIL_RATIO * robust:
            return (f" What limits it: the spread of the residuals itself, not a tail (the "
                    f"robust σ on {subset} is {robust:.3g} {unit}){where} (docs/labels.md)."
                    f"{longer}")
        return (f" What limits it: a tail of stars far off, which the RMSE counts squared; the "
                f"robust σ on {subset} is {robust:.3g} {unit}{where} (docs/labels.md).{longer}")
    mlp = baselines.get("mlp_spectrum", {}).get(name, {}).get("test", {}).get("robust_sigma")
    if mlp is None:  # xpsvae evaluate: no baselines beside it
        return brightness + longer if brightness else ""
    return (
        f" What limits it: the labelled stars as much as the model; a supervised MLP on the "
        f"whole spectrum, trained on the same stars, gives {mlp:.3g} {unit}, and the published "
        f"figures near the goal used ~7x more labels (docs/labels.md).{brightness}{longer}")


def _magnitude_table(by_magnitude: Optional[dict], labels: list) -> List[str]:
    """The robust sigma per Gaia G bin, a row a bin ([] without the block)."""
    if not by_magnitude or not by_magnitude.get("labels"):
        return []
    shown = [n for n in labels if n in by_magnitude["labels"]]
    lines = ["### By Gaia G magnitude (robust σ on the test stars, and how many)", "",
             "| G | " + " | ".join(NAMES.get(n, n) for n in shown) + " |",
             "| --- | " + " | ".join("---" for _ in shown) + " |"]
    for bin_name in by_magnitude["bins"]:
        cells = [by_magnitude["labels"][n]["bins"][bin_name] for n in shown]
        lines.append(f"| {bin_name} | " + " | ".join(
            f"{_f(c.get('robust_sigma'))} ({c['n_stars']:,})" for c in cells) + " |")
    return lines + [""]


def _flag_line(ood: dict, shown: list) -> str:
    """The flag's line: how many test stars it marks, their errors and |z| against the
    others', their share beyond 3 sigma where the metrics have it, and the goal (larger
    median |z|), with the reason for each label that misses it: errors larger but sigma
    grown more, or errors no larger to begin with."""
    def missed(n: str) -> bool:
        return not (ood[n]["median_abs_z_flagged"] or 0) > ood[n]["median_abs_z_unflagged"]

    def larger_errors(n: str) -> bool:
        return (ood[n].get("median_abs_residual_flagged") or 0) > \
            ood[n].get("median_abs_residual_unflagged", float("inf"))

    line = (f"- Out of distribution: {ood['n_flagged']} test stars flagged "
            f"({100 * ood['share_flagged']:.1f}%). Median |predicted − APOGEE|, flagged against "
            "not: " + "; ".join(
                f"{NAMES.get(n, n)} {_f(ood[n].get('median_abs_residual_flagged'))} vs "
                f"{_f(ood[n].get('median_abs_residual_unflagged'))}" for n in shown)
            + ". Median |z|: " + "; ".join(
                f"{NAMES.get(n, n)} {_f(ood[n]['median_abs_z_flagged'])} vs "
                f"{_f(ood[n]['median_abs_z_unflagged'])}" for n in shown) + ".")
    tails = [n for n in shown if ood[n].get("share_beyond_3_flagged") is not None]
    if tails:
        line += " Beyond 3σ: " + "; ".join(
            f"{NAMES.get(n, n)} {100 * ood[n]['share_beyond_3_flagged']:.1f}% vs "
            f"{100 * ood[n]['share_beyond_3_unflagged']:.1f}%" for n in tails) + "."
    misses = [n for n in shown if missed(n)]
    if not misses:
        return line + " Flagged stars have larger |z| (the goal): reached."
    reasons = []
    grown = [NAMES.get(n, n) for n in misses if larger_errors(n)]
    if grown:
        reasons.append(", ".join(grown) + ": their errors are larger, but the predicted σ "
                       "grows more")
    same = [NAMES.get(n, n) for n in misses if not larger_errors(n)]
    if same:
        reasons.append(", ".join(same) + ": the flagged stars' errors are no larger than "
                       "the others'")
    return (line + " The goal, larger |z| for flagged stars, is **not reached** for "
            + "; for ".join(reasons) + " (" + _flagged_std_z(ood, shown) + "docs/labels.md).")


def _flagged_std_z(ood: dict, shown: list) -> str:
    """``std z of the flagged stars against the rest: ...; `` (metrics from before: "")."""
    have = [n for n in shown if ood[n].get("std_z_flagged") is not None]
    if not have:
        return ""
    return "std z of the flagged stars against the rest: " + "; ".join(
        f"{NAMES.get(n, n)} {ood[n]['std_z_flagged']:.2f} vs {ood[n]['std_z_unflagged']:.2f}"
        for n in have) + "; "


def _alpha_limit(bins: dict, judged: dict, epochs: Optional[int] = None) -> str:
    """The worst judged bin's distance from the goal in standard errors of its balanced
    accuracy (each class's recall binomial), and what APOGEE's own labels give there; and,
    where the sVAE trained fewer than :data:`LONGER_EPOCHS` epochs, that longer training
    comes nearer, by one to two such standard errors."""
    worst = min(judged, key=judged.get)
    b, value = bins[worst], judged[worst]
    n_high, n_low = b["n_high_alpha"], b["n_stars"] - b["n_high_alpha"]
    error = 0.5 * (value * (1 - value) * (1 / n_high + 1 / n_low)) ** 0.5
    apogee = b.get("teff_logg_fe_h_alone")
    return (f" What limits it: {worst} is {(0.85 - value) / error:.1f} standard errors "
            f"(±{error:.3f}, {n_high} high-α stars) below the goal"
            + ("" if apogee is None else
               f"; a classifier on APOGEE's own Teff, log g and [Fe/H] gives {apogee:.3f} "
               "there") + " (docs/labels.md)."
            + ("" if not _trained_shorter(epochs) else
               f" This sVAE trained {epochs} epochs; trained for 400 to {LONGER_EPOCHS:,}, "
               "the same recipe comes nearer, by one to two standard errors; one run of 400 "
               "epochs reached it (docs/labels.md, \"Trained longer\")."))


def labels_section(block: dict) -> List[str]:
    labels = block["labels"]
    ours = block["svae_label_model"]
    side = ", ".join(block.get("side_columns") or []) or "none"
    head = block.get("head", {})
    likelihood = (f"a Student-t likelihood ({head['dof']:g} degrees of freedom)"
                  if head.get("dof") else "a Gaussian likelihood")
    lines = ["## Labels", "",
             f"A label model on the sVAE's encoder (its hidden layers and latent) with side "
             f"columns {side}: an ensemble of {head.get('members', '?')} MLPs"
             + (f" (each also training a copy of the encoder, peak rate "
                f"{head['encoder_lr']:g})" if head.get("encoder_lr") else "") + ", "
             f"{likelihood} with APOGEE's error added in quadrature, the predicted σ "
             "scaled on the validation share by a factor that follows the star's predicted "
             "labels. z = (predicted − APOGEE) / √(σ² + σ_APOGEE²).", ""]
    if block.get("ensemble_members"):
        lines[2] = (f"{block['ensemble_members']} label models, each on its own sVAE, "
                    "predicting together: the mean of their labels, σ² the mean of their "
                    "variances plus the spread of their means (docs/labels.md, \"Several "
                    "sVAEs together\"). The first: " + lines[2][0].lower() + lines[2][1:])
    generative = block.get("svae")
    if generative:
        lines += [f"The sVAE it reads was trained semi-supervised: the same recipe, with the "
                  f"latent also learning the labels of the training stars (label weight "
                  f"{generative['training']['label_weight']:g}, "
                  f"{generative['training']['wall_time_s']:.0f} s). As a generative model of "
                  f"the test spectra: mean NLL {generative['test']['mean_nll']:.1f} and std r "
                  f"{generative['test']['std_r']:.3f}, against "
                  f"{generative['unsupervised_test']['mean_nll']:.1f} and "
                  f"{generative['unsupervised_test']['std_r']:.3f} unsupervised.", ""]
    for name in labels:
        interval = "coverage_interval" in ours.get(name, {}).get("test", {})
        lines += [f"### {NAMES.get(name, name)}", "",
                  "| stars | n | robust σ | RMSE | bias | std z | within 1σ | 2σ | 3σ |"
                  + (" in the 68% interval |" if interval else ""),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
                  + (" --- |" if interval else "")]
        for subset, m in ours.get(name, {}).items():
            if not m.get("n_stars"):
                continue
            lines.append(f"| {subset} | {m['n_stars']:,} | {_f(m['robust_sigma'])} | "
                         f"{_f(m['rmse'])} | {_f(m['bias'], 2)} | {_f(m.get('std_z'))} | "
                         + " | ".join(f"{100 * m[f'coverage_{k}sigma']:.1f}%"
                                      for k in (1, 2, 3)) + " |"
                         + (f" {100 * m['coverage_interval']:.1f}% |" if interval else ""))
        lines.append("")
    if block.get("baselines"):
        lines += ["### Beside the baselines (robust σ on the test stars)", "",
                  "| model | " + " | ".join(NAMES.get(n, n) for n in labels) + " |",
                  "| --- | " + " | ".join("---" for _ in labels) + " |",
                  "| sVAE label model | " + " | ".join(
                      _f(ours.get(n, {}).get("test", {}).get("robust_sigma")) for n in labels)
                  + " |"]
        for key, blocks in block["baselines"].items():
            lines.append(f"| {BASELINE_NAMES.get(key, key)} | " + " | ".join(
                _f(blocks.get(n, {}).get("test", {}).get("robust_sigma")) for n in labels)
                + " |")
        lines.append("")
    lines += _magnitude_table(block.get("by_magnitude"), labels)
    lines += ["### Goals", ""]
    epochs = (generative or {}).get("training", {}).get("epochs")  # the sVAE's training length
    tuned = bool(head.get("encoder_lr"))
    for name, (figure, subset, goal, unit) in GOALS.items():
        value = ours.get(name, {}).get(subset, {}).get(figure)
        if value is None:
            continue
        verdict = ("reached." if value <= goal else "**not reached**.") + _near_goal(
            figure, value, ours.get(name, {}).get(subset, {}).get("n_stars"), goal, unit)
        if value > goal:
            verdict += _accuracy_limit(name, figure, subset, unit, ours,
                                       block.get("baselines") or {}, epochs,
                                       _brightness(name, unit, goal, block.get("by_magnitude")))
            verdict += _untuned(tuned, "did better on every label in each run measured, "
                                       "by 1–7% in robust σ")
        lines.append(f"- {NAMES[name]}: {figure.replace('_', ' ')} on {subset} "
                     f"{_beside(value, goal)} {unit} "
                     f"against the goal {goal:g} {unit}: {verdict}")
    if generative:
        nll, ref = generative["test"]["mean_nll"], generative["unsupervised_test"]["mean_nll"]
        std_r = generative["test"]["std_r"]
        ok = nll <= ref + 0.02 * abs(ref) and abs(std_r - 1) <= 0.05
        lines.append(f"- The generative model with the labels: test NLL {nll:.1f} against "
                     f"{ref:.1f} unsupervised ({100 * (nll - ref) / abs(ref):+.2f}%; goal within "
                     f"2%), std r {std_r:.3f} (goal within 0.05 of 1): "
                     + ("reached." if ok else "**not reached**."))
    for name in labels:
        t = ours.get(name, {}).get("test", {})
        if "std_z" in t:
            ok = 0.9 <= t["std_z"] <= 1.1 and all(
                abs(100 * t[f"coverage_{k}sigma"] - ideal) <= 2
                for k, ideal in ((1, 68.3), (2, 95.4), (3, 99.7)))
            lines.append(f"- {NAMES.get(name, name)} calibration on the test stars: std z "
                         f"{t['std_z']:.3f}, coverage {100 * t['coverage_1sigma']:.1f} / "
                         f"{100 * t['coverage_2sigma']:.1f} / {100 * t['coverage_3sigma']:.1f}% "
                         f"(goal 68.3 / 95.4 / 99.7 ± 2, std z 0.9–1.1): "
                         + ("reached." if ok else "**not reached**.")
                         + _std_z_spread(t)
                         + _tails(t)
                         + (f" The central 68% interval holds {100 * t['coverage_interval']:.1f}%."
                            if "coverage_interval" in t else ""))
    alpha = block.get("alpha_classes")
    if alpha and alpha["all_bins"].get("label_model") is not None:
        judged = {b: v["label_model"] for b, v in alpha["bins"].items()
                  if v["n_high_alpha"] >= ALPHA_MIN_STARS}
        ok = bool(judged) and min(judged.values()) >= 0.85
        lines.append(f"- High/low α: balanced accuracy of the label model's high_alpha_prob within "
                     "the [Fe/H] bins that hold at least "
                     f"{ALPHA_MIN_STARS} high-α stars, " + ", ".join(
                         f"{_beside(v, 0.85)} for {b}" for b, v in judged.items())
                     + " (goal 0.85 in each): " + ("reached" if ok else "**not reached**")
                     + f". Over [Fe/H] −1 to +0.5 together, where [Fe/H] itself tells much, "
                     f"{alpha['all_bins']['label_model']:.3f}."
                     + ("" if ok or not judged else _alpha_limit(
                         alpha["bins"], judged, epochs)
                        + _untuned(tuned, "reached it in one run of the three measured, and "
                                          "came within 0.001 of it in another")))
    ood = block.get("ood")
    if ood:
        lines.append(_flag_line(ood, [n for n in labels if n in ood]))
    extrapolated = {n: v for n, v in (block.get("extrapolated") or {}).items()
                    if v.get("share_marked_without_survey_label") is not None}
    if extrapolated:
        lines.append("- Extrapolated (`<label>_extrapolated`: a predicted label outside "
                     "APOGEE's range among the stars with that label): " + "; ".join(
                         f"{NAMES.get(n, n)} for {100 * v['share_marked']:.1f}% of the test "
                         f"stars, {100 * v['share_marked_without_survey_label']:.0f}% of the "
                         f"{v['n_without_survey_label']:,} that APOGEE gives none and "
                         f"{100 * v['share_marked_with_survey_label']:.1f}% of the others"
                         for n, v in extrapolated.items())
                     + ". Where APOGEE gives no label, nothing here can say how good it is.")
    lines.append("")
    return lines + (_alpha_table(alpha) if alpha else [])


#: The faint stars' robust sigma over the bright ones' from which the report says their
#: spectra's signal-to-noise limits a label: with ~1,700 stars each side, a robust sigma
#: (1.4826 MAD) has a standard error of ~3% of itself (sqrt(1.36 / n) for Gaussian
#: residuals), their ratio ~4%; 1.1 is 2.5 of those.
FAINTER_WORSE = 1.1
#: RMSE over robust sigma from which the report puts an RMSE goal missed down to a tail:
#: for Gaussian residuals the two agree to a few per cent with a thousand stars or more.
TAIL_RATIO = 1.3
#: The share of a Gaussian beyond 3 sigma.
GAUSSIAN_BEYOND_3 = 0.0027
#: A bin's balanced accuracy is judged against the goal only with this many high-alpha stars
#: in it: with fewer, the recall of the class has a standard error of 0.06 or more.
ALPHA_MIN_STARS = 50
#: Who guesses high or low alpha in the metrics' ``alpha_classes`` block.
ALPHA_GUESSERS = {"label_model": "the label model's high_alpha_prob",
                  "unsupervised_svae": "the same head on the unsupervised sVAE",
                  "label_model_labels": "the label model's [Fe/H] and [α/M] against the line",
                  "fe_h_alone": "a classifier on APOGEE [Fe/H] alone",
                  "teff_logg_fe_h_alone": "a classifier on APOGEE Teff, log g, [Fe/H]"}


def _alpha_table(alpha: dict) -> List[str]:
    """Balanced accuracy of high/low alpha per [Fe/H] bin, for each guesser."""
    bins = alpha["bins"]
    lines = ["### High and low α", "",
             f"Balanced accuracy (the mean of the two classes' recalls) by APOGEE [Fe/H]; "
             f"high-α above {alpha['boundary']}.", "",
             "| guessed by | " + " | ".join(bins) + " | all |",
             "| --- | " + " | ".join("---" for _ in bins) + " | --- |",
             "| high-α stars | " + " | ".join(f"{v['n_high_alpha']} of {v['n_stars']}"
                                              for v in bins.values()) + " | |"]
    for key, value in alpha["all_bins"].items():
        lines.append(f"| {ALPHA_GUESSERS.get(key, key)} | " + " | ".join(
            _f(v.get(key)) for v in bins.values()) + f" | {_f(value)} |")
    return lines + [""]
