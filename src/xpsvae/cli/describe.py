"""What a path holds, in a few lines: a store, an encoded catalogue, a model, a Cannon, a
report, or a table.

``xpsvae info PATH`` prints it (``--json`` for the dictionary). Only
manifests, configurations and Parquet footers are read, never the spectra,
so it answers at once for the whole catalogue too.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional

import pyarrow.parquet as pq
from safetensors import safe_open

from ..core.constants import file_kind
from ..core.errors import SpectraError
from ..core.files import (
    BUILTIN_LABEL_MODEL_DIR,
    BUILTIN_MODEL,
    CANNON_CONFIG_FILE,
    CONFIG_FILE,
    HISTORY_NAME,
    LABEL_ENSEMBLE_FILE,
    LABEL_HEAD_CONFIG,
    LABEL_SVAE_FOLDER,
    MANIFEST,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    model_folder,
    read_encoded_manifest,
)
from ..io.store import store_manifest, store_shards


def describe(path: str) -> dict:
    """What ``path`` holds.

    Args:
        path: a store (``xpsvae ingest``), an encoded catalogue (``xpsvae
            encode`` of a store), a model folder, a Cannon folder, a report
            folder (``xpsvae demo``, ``xpsvae evaluate``), or a Parquet table;
            ``builtin``: the shipped sVAE, with the label model shipped beside it
            (``shipped_label_model``).

    Returns:
        A dictionary whose ``"what"`` says which, with that kind's facts.

    Raises:
        SpectraError: none of these (or no such path).
    """
    if os.fspath(path) == BUILTIN_MODEL and not os.path.exists(path):
        # the model shipped with the package, and the label model shipped beside it
        return {**_model(model_folder(path)),
                "shipped_label_model": _label_model(BUILTIN_LABEL_MODEL_DIR)}
    if not os.path.exists(path):
        raise SpectraError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        encoded = read_encoded_manifest(path)
        if encoded:
            return _encoded(path, encoded)
        if os.path.exists(os.path.join(path, MANIFEST)):
            return _store(path)
        if os.path.exists(os.path.join(path, CONFIG_FILE)):
            return _model(path)
        if os.path.exists(os.path.join(path, CANNON_CONFIG_FILE)):
            return _cannon(path)
        if os.path.exists(os.path.join(path, LABEL_HEAD_CONFIG)):
            return _label_model(path)
        if os.path.exists(os.path.join(path, LABEL_ENSEMBLE_FILE)):
            return _label_ensemble(path)
        if os.path.exists(os.path.join(path, METRICS_FILE)):
            return _report(path)
        raise SpectraError(f"{path}: a folder that is no xpsvae store, encoded catalogue, "
                           "model, Cannon, label model, label ensemble or report (no "
                           "manifest.json, _manifest.json, config.json, cannon.json, "
                           "head.json, ensemble.json or metrics.json)")
    if file_kind(path) == "parquet":
        meta = pq.read_metadata(path)
        return {"what": "table", "path": os.path.abspath(path), "rows": meta.num_rows,
                "columns": meta.schema.to_arrow_schema().names,
                "bytes_on_disk": os.path.getsize(path)}
    raise SpectraError(f"{path}: info reads stores, encoded catalogues, models and Parquet "
                       "tables; for other tables use xpsvae ingest or read_spectra")


def counted(n: int, noun: str) -> str:
    """``1 file``, ``2,004 files``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _gaia_source_rows_text(rows: dict) -> str:
    if not rows:
        return ""
    return (f" ({rows['stars']:,} stars with G of {counted(rows['rows_read'], 'row')}; "
            f"{rows['rows_without_xp']:,} without XP spectra, {rows['rows_without_g']:,} "
            "without G)")


def _store(path: str) -> dict:
    manifest = store_manifest(path)
    total = manifest.get("total", {})
    shards = store_shards(path) if manifest["shards"] else []
    out = {"what": "store", "path": os.path.abspath(path),
           "kind": manifest.get("kind", "coefficients"),
           "format_version": manifest.get("format_version", 1),
           "files": total.get("files", len(manifest["files"])),
           "rows_read": total.get("rows_read", 0), "rows_kept": total.get("rows_kept", 0),
           "rows_set_aside": total.get("rows_set_aside", 0), "reasons": total.get("reasons", {}),
           "shards": len(shards), "bytes_on_disk": sum(os.path.getsize(s) for s in shards),
           "gaia_source_files": len(manifest.get("gaia_source", [])),
           "gaia_source_rows": manifest.get("gaia_source_rows", {}),
           "not_read": len(manifest.get("not_read", []))}
    if manifest.get("wavelength_nm"):
        grid = manifest["wavelength_nm"]
        out["wavelength_nm"] = {"first": grid[0], "last": grid[-1], "samples": len(grid)}
    return out


def _encoded(path: str, manifest: dict) -> dict:
    return {"what": "encoded catalogue", "path": os.path.abspath(path),
            "rows": manifest.get("rows", 0), "shards": len(manifest.get("shards", [])),
            "complete": manifest.get("complete", False), "input": manifest.get("input"),
            "model_dir": manifest.get("model_dir"),
            "xpsvae_version": manifest.get("xpsvae_version")}


def _weights_problem(path: str) -> Optional[str]:
    """Why a safetensors file cannot be read (its header and the extent of its tensors are
    checked, not the numbers), or None."""
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="numpy") as f:
            list(f.keys())
    except Exception as exc:  # safetensors' own error type
        return str(exc)
    return None


def _model(path: str) -> dict:
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = json.load(f)
    info, training = config.get("info", {}), config.get("training", {})
    out = {"what": "model", "path": os.path.abspath(path),
           "format_version": config.get("format_version"),
           "xpsvae_version": config.get("xpsvae_version"),
           "trained": os.path.exists(os.path.join(path, MODEL_FILE)),
           "weights_problem": _weights_problem(os.path.join(path, MODEL_FILE)),
           "architecture": config.get("model", {}), "kind": info.get("kind"),
           "normalisation": info.get("normalisation"),
           "recipe": {k: training.get(k) for k in (
               "optimizer", "lr", "batch_size", "epochs", "calibrate_epochs", "loss_form",
               "seed", "split_seed", "spike_clip") if training.get(k) is not None},
           "label_weight": training.get("label_weight"),
           "data": info.get("data", {})}
    history = _history(os.path.join(path, HISTORY_NAME))
    if history:
        last = history[-1]
        out["epochs_run"] = len(history)
        out["last_epoch"] = {k: float(v) for k, v in last.items()
                             if k in ("train_loss", "val_loss", "seconds") and v != ""}
    return out


def _cannon(path: str) -> dict:
    with open(os.path.join(path, CANNON_CONFIG_FILE)) as f:
        meta = json.load(f)
    return {"what": "Cannon", "path": os.path.abspath(path),
            "format_version": meta.get("format_version"), "labels": meta.get("label_names"),
            "kind": meta.get("kind"), "scatter_method": meta.get("scatter_method"),
            "fit": meta.get("fit", {})}


def _label_model(path: str) -> dict:
    with open(os.path.join(path, LABEL_HEAD_CONFIG)) as f:
        meta = json.load(f)
    return {"what": "label model", "path": os.path.abspath(path),
            "labels": meta.get("labels"), "side": meta.get("side"),
            "noise_features": bool(meta.get("noise_features", False)),
            "head": meta.get("config", {}), "ood": {k: v for k, v in meta.get("ood", {}).items()
                                                   if k in ("quantile", "anomaly_score",
                                                            "latent_distance")},
            "high_alpha": _high_alpha(meta),
            "half_missing": _half_missing(meta), "data": meta.get("data", {}),
            "interval_scale": meta.get("interval_scale"),
            "label_ranges": meta.get("label_ranges"),
            "svae": _model(os.path.join(path, LABEL_SVAE_FOLDER))}


def _high_alpha(meta: dict) -> dict:
    """The high/low-alpha boundary and prior of a label model's head.json: the prior is the
    head's ``class_prior`` (label models from before kept it under ``high_alpha`` too, and
    those with a classifier of its own keep it only there); {} without the class."""
    high = meta.get("high_alpha") or {}
    if not high:
        return {}
    return {"boundary": high.get("boundary"), "prior": high.get("prior",
                                                                meta.get("class_prior"))}


def _label_ensemble(path: str) -> dict:
    with open(os.path.join(path, LABEL_ENSEMBLE_FILE)) as f:
        meta = json.load(f)
    members = [_label_model(os.path.join(path, name)) for name in meta.get("members", [])]
    priors = [m["high_alpha"]["prior"] for m in members if m["high_alpha"].get("prior")]
    return {"what": "label ensemble", "path": os.path.abspath(path),
            "labels": meta.get("labels"), "members": members,
            "high_alpha_prior": sum(priors) / len(priors) if priors else None,
            "calibration": meta.get("calibration")}


def _narrower(ranges: Dict[str, Dict[str, List[float]]]) -> str:
    """``; fe_h: teff 3113-6850`` for each label whose stars span less of another label
    than all the stars do (empty where none)."""
    parts = []
    for name, entry in ranges.items():
        narrow = [f"{other} {lo:.4g}-{hi:.4g}" for other, (lo, hi) in entry.items()
                  if other != name and [lo, hi] != ranges.get(other, {}).get(other)]
        if narrow:
            parts.append(f"{name}: " + ", ".join(narrow))
    return "; " + "; ".join(parts) if parts else ""


def _half_missing(meta: dict) -> Dict[str, List[float]]:
    """Per end, the sigma a label model adds to each label of a star missing that half of
    its inputs (about a band: xpsvae.labels.holes); empty for a model without end runs."""
    holes = meta.get("hole_variance")
    if not isinstance(holes, dict):
        return {}
    return {end: [value ** 0.5 for value in holes[end][len(holes[end]) // 2]]
            for end in ("blue", "red")}


#: The models a report (``xpsvae demo``, ``xpsvae evaluate``) may compare.
_REPORTED = ("svae", "svae_paper_recipe", "cannon", "cannon_thecannon_search")


def _report(path: str) -> dict:
    with open(os.path.join(path, METRICS_FILE)) as f:
        metrics = json.load(f)
    test = {name: {k: metrics[name]["test"].get(k) for k in
                   ("n_stars", "mean_nll", "std_r", "frac_abs_r_gt_5")}
            for name in _REPORTED if isinstance(metrics.get(name), dict)
            and "test" in metrics[name]}
    claims = {name: claim.get("supported") for name, claim in metrics.get("claims", {}).items()
              if isinstance(claim, dict) and "supported" in claim}
    return {"what": "report", "path": os.path.abspath(path), "test": test, "claims": claims,
            "report": os.path.exists(os.path.join(path, REPORT_FILE)),
            "xpsvae_version": metrics.get("xpsvae_version")}


def _history(path: str) -> List[Dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def format_description(d: dict) -> str:
    """The description as a few lines for a person."""
    lines = [f"{d['path']}: {d['what']}"]
    if d["what"] == "store":
        lines.append(f"  {d['kind']} (format {d['format_version']}), "
                     f"{counted(d['rows_kept'], 'star')} kept of {d['rows_read']:,} read from "
                     f"{counted(d['files'], 'file')}; {d['rows_set_aside']:,} set aside")
        lines += [f"    {n:,} {why}" for why, n in d["reasons"].items()]
        lines.append(f"  {counted(d['shards'], 'shard')}, {d['bytes_on_disk'] / 2**20:,.1f} MB")
        lines.append("  G flux: "
                     + (f"joined from {counted(d['gaia_source_files'], 'gaia_source table')}"
                        + _gaia_source_rows_text(d["gaia_source_rows"]) + "; "
                        if d["gaia_source_files"] else "")
                     + "synthetic where none was given (g_flux_origin says which, per star)")
        if "wavelength_nm" in d:
            w = d["wavelength_nm"]
            lines.append(f"  grid {w['first']:g}-{w['last']:g} nm, {w['samples']} samples")
        if d["not_read"]:
            lines.append(f"  {counted(d['not_read'], 'file')} of the folders given not read "
                         + ("(not a table)" if d["not_read"] == 1 else "(not tables)"))
    elif d["what"] == "encoded catalogue":
        lines.append(f"  {counted(d['rows'], 'star')} in {counted(d['shards'], 'shard')}"
                     + ("" if d["complete"] else " (incomplete: run encode again)"))
        lines.append(f"  from {d['input']} by the model {d['model_dir']} "
                     f"(xpsvae {d['xpsvae_version']})")
    elif d["what"] == "model":
        a = d["architecture"]
        lines.append(f"  {a.get('input_dim')} inputs ({d['kind']}, {d['normalisation']}) -> "
                     f"{'-'.join(map(str, a.get('hidden', [])))} -> {a.get('latent_dim')} latent; "
                     f"{a.get('activation')}, {a.get('scatter_map')} scatter"
                     + ("" if d["trained"] else "; not trained yet")
                     + (f"; ITS WEIGHTS CANNOT BE READ: {d['weights_problem']}"
                        if d.get("weights_problem") else ""))
        lines.append("  recipe: " + ", ".join(f"{k} {v}" for k, v in d["recipe"].items()))
        if a.get("labels"):
            lines.append(f"  semi-supervised: the latent also learnt {', '.join(a['labels'])} "
                         f"(label weight {d['label_weight']})")
        data = d["data"]
        if isinstance(data.get("n_stars"), int):
            lines.append(f"  trained on {data['n_stars']:,} stars ({data.get('n_train', '?')} "
                         f"training, {data.get('n_val', '?')} validation) of {data.get('source')}"
                         + (", streamed" if data.get("streamed") else "")
                         + (", each rank's part resident" if data.get("resident_parts")
                            else ""))
        if "epochs_run" in d:
            last = d["last_epoch"]
            lines.append(f"  {d['epochs_run']} epochs run; last: "
                         + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
        lines.append(f"  format {d['format_version']}, xpsvae {d['xpsvae_version']}")
        if "shipped_label_model" in d:
            shipped = d["shipped_label_model"]
            lines.append(f"  shipped beside it: a label model of {', '.join(shipped['labels'])} "
                         "on this sVAE (labels predict builtin, encode builtin --labels "
                         f"builtin; xpsvae info {shipped['path']} says more)")
    elif d["what"] == "Cannon":
        fit = d["fit"]
        lines.append(f"  labels {', '.join(d['labels'] or [])} ({d['kind']}, scatter by "
                     f"{d['scatter_method']}); fitted on {fit.get('n_stars_used', '?'):,} "
                     f"stars, {fit.get('n_stars_without_labels', 0):,} left out for lack of "
                     "a label" if isinstance(fit.get("n_stars_used"), int)
                     else f"  labels {', '.join(d['labels'] or [])}")
    elif d["what"] == "label model":
        h = d["head"]
        lines.append(f"  labels {', '.join(d['labels'] or [])}; side columns "
                     f"{', '.join(d['side']) or 'none'}; {h.get('members')} MLPs "
                     f"{'-'.join(map(str, h.get('hidden', [])))}, {h.get('epochs')} epochs, "
                     + (f"Student-t likelihood (nu = {h['dof']:g})" if h.get("dof")
                        else "Gaussian likelihood")
                     + (", reading each spectrum's signal-to-noise" if d["noise_features"]
                        else "")
                     + (f"; each MLP tuned a copy of the sVAE's encoder (peak rate "
                        f"{h['encoder_lr']:g})" if h.get("encoder_lr") else ""))
        if d.get("data"):
            lines.append(f"  fitted on {d['data']['n_stars']:,} stars of {d['data']['source']}"
                         " (with each label: " + ", ".join(
                             f"{name} {n:,}" for name, n in d["data"]["n_with_label"].items())
                         + ")" + (f"; {d['data']['n_pseudo_labelled']:,} of them pseudo-labelled "
                                  "(they trained; survey labels alone calibrated)"
                                  if d["data"].get("n_pseudo_labelled") else ""))
        if d["ood"]:
            lines.append(f"  flagged beyond {100 * d['ood']['quantile']:.0f}% of the training "
                         f"stars: anomaly score {d['ood']['anomaly_score']:.3g}, latent "
                         f"distance {d['ood']['latent_distance']:.3g}")
        if d.get("interval_scale"):
            ks = ", ".join(f"{name} {k:.2f}" for name, k in zip(d["labels"],
                                                                d["interval_scale"]))
            lines.append(f"  central 68% interval (_lower, _upper): ± k sigma, median k {ks}")
        if d.get("label_ranges"):
            lines.append("  <label>_extrapolated: a predicted label outside the survey's range "
                         "among the stars with that label" + _narrower(d["label_ranges"]))
        if d.get("high_alpha"):
            lines.append(f"  high_alpha_prob: above {d['high_alpha']['boundary']}; "
                         f"{100 * d['high_alpha']['prior']:.1f}% of the training stars")
        for end, sigma in d.get("half_missing", {}).items():
            which = "bluest" if end == "blue" else "reddest"
            lines.append(f"  the {which} half of the inputs missing (a band) adds sigma " +
                         ", ".join(f"{name} {value:.3g}" for name, value in
                                   zip(d["labels"], sigma)))
        lines.append("  its sVAE: " + format_description(d["svae"]).splitlines()[1].strip())
    elif d["what"] == "label ensemble":
        lines.append(f"  {len(d['members'])} label models of {', '.join(d['labels'] or [])}, "
                     "predicting together: the mean of their labels, sigma with their spread")
        calibration = d.get("calibration")
        if calibration:
            lines.append(f"  sigma and the 68% interval calibrated again for the ensemble on "
                         f"the stars of {calibration.get('source')} that no member trained "
                         f"on: {calibration.get('stars')}")
        else:
            lines.append("  sigma and the 68% interval: the members' own calibration")
        if d.get("high_alpha_prior") is not None:
            lines.append(f"  high_alpha_prob: the members' mean; call a star high-alpha above "
                         f"{d['high_alpha_prior']:.3f}, the mean of their priors")
        for member in d["members"]:
            lines += ["  " + line for line in format_description(member).splitlines()]
    elif d["what"] == "report":
        for name, t in d["test"].items():
            lines.append(f"  {name}: {_number(t['n_stars'], ',')} test stars, mean NLL "
                         f"{_number(t['mean_nll'], '.1f')}, std r {_number(t['std_r'], '.3f')}, "
                         f"|r| > 5 {_number(t['frac_abs_r_gt_5'], '.3%')}")
        if d["claims"]:
            lines.append("  claims: " + ", ".join(
                f"{name} {'supported' if ok else 'not supported'}"
                for name, ok in d["claims"].items()))
        if d["report"]:
            lines.append(f"  read {os.path.join(d['path'], 'report.md')}")
    else:
        lines.append(f"  {d['rows']:,} rows; columns {', '.join(d['columns'][:12])}"
                     + (", ..." if len(d["columns"]) > 12 else ""))
    return "\n".join(lines)


def _number(value, spec: str) -> str:
    return "?" if value is None else format(value, spec)
