"""The public model class: fit, encode, decode, scatter, generate, save, load.

:class:`SVAE` joins the network (:mod:`xpsvae.model`), the standardisation
(:mod:`xpsvae.preprocess`) and the trainer (:mod:`xpsvae.trainer`). Everything
it takes and returns is in the physical units of the input (after the
brightness normalisation); standardisation happens inside.

A model directory holds ``model.safetensors`` (weights) and ``config.json``
(format version, architecture, training recipe, standardisation statistics,
data description). Loading never unpickles anything.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .conform import MEDIAN_NAMES, as_spectra, contract
from .core.constants import VERSION
from .core.errors import SpectraError
from .core.files import BUILTIN_MODEL, CONFIG_FILE, model_folder, write_json
from .io.spectra import SpectraSet
from .io.store import store_source_ids
from .model.folder import (
    FORMAT_VERSION,
    MAX_RECORDED_STARS,
    check_resumable,
    read_history,
    read_parts,
    read_training_stars,
    read_weights,
    training_stars_record,
    write_history,
    write_training_stars,
    write_weights,
)
from .model.network import ScatterVAE, SVAEConfig
from .model.partial import SPREAD_DRAWS, imputation_variance, median_scale, run_filled
from .model.preprocess import Standardizer
from .model.recipe import TrainConfig
from .model.runtime import distributed_rank_world, resolve_device
from .model.stream import StoreStream, refuse_a_part_too_large
from .model.supervision import calibration_marks, label_targets
from .model.trainer import Trainer

#: Training options that may change when a run is resumed.
RESUMABLE_CHANGES = ("epochs", "device", "amp", "threads", "cuda_graph")


class SVAE:
    """A scatter VAE for XP spectra (Laroche & Speagle 2023).

    Args:
        config: the architecture; None builds the ``arch`` preset for the
            data's width at :meth:`fit`.
        train_config: the training recipe (default: ``TrainConfig()``, the
            ``fast`` preset).
        arch: architecture preset used when ``config`` is None (``paper`` or
            ``later``).

    Example:
        >>> from xpsvae import SVAE, load_apogee_library
        >>> stars = load_apogee_library()
        >>> model = SVAE().fit(stars, out_dir="my_model")
        >>> latent_mean, latent_std = model.encode(stars)
        >>> spectra, scatter = model.decode(latent_mean), model.scatter(latent_mean)
    """

    def __init__(self, config: Optional[SVAEConfig] = None,
                 train_config: Optional[TrainConfig] = None, arch: str = "paper"):
        self.config = config
        self.train_config = train_config or TrainConfig()
        self.arch = arch
        self.network: Optional[ScatterVAE] = None
        self.standardizer: Optional[Standardizer] = None
        self.history: list = []
        self.info: Dict[str, object] = {}  # kind, normalisation, wavelength, data description
        #: Sorted source_ids of the stars fitted on (training and validation), if recorded.
        self.training_source_ids: Optional[np.ndarray] = None
        #: Of those, the sorted source_ids whose labels it did not learn (fit), if recorded.
        self.held_out_source_ids: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ training
    def fit(self, spectra, errors=None, *, labels: Sequence[str] = (),
            out_dir: Optional[str] = None, resume: bool = False, progress: bool = True,
            on_epoch_end: Optional[Callable[[Trainer], None]] = None) -> "SVAE":
        """Fit standardisation and network on the given (training) stars.

        A validation share (``train_config.val_fraction``, drawn from its
        ``validation_seed``) is held out, and recorded with the stars fitted on; the
        standardisation is fitted on the rest. Partial spectra are left out (and
        counted): the model fills their holes when it encodes them.

        Args:
            spectra: a :class:`SpectraSet`, or an array (n_stars, n_inputs)
                with ``errors`` of the same shape.
            errors: errors when ``spectra`` is an array.
            labels: label columns of ``spectra`` (with ``<label>_err``) that the latent
                learns too: semi-supervised, weighted by ``train_config.label_weight``
                (docs/labels.md). Stars without them still train the sVAE.
            out_dir: model directory: ``config.json`` first, a checkpoint and
                ``history.csv`` after every epoch, and the final model.
            resume: continue from ``out_dir``'s checkpoint (same data and recipe but
                for :data:`RESUMABLE_CHANGES`).
            progress: show a progress bar.
            on_epoch_end: callback after each epoch's checkpoint.

        Returns:
            self, trained.
        """
        spectra = as_spectra(spectra, errors)
        complete = spectra.complete()  # a partial spectrum is scored, not learnt from
        n_partial, spectra = len(spectra) - len(complete), complete
        tc, n = self.train_config, len(spectra)
        source = spectra.accounting.source if spectra.accounting else "the input"
        n_val = int(tc.val_fraction * n)
        if n - n_val < 2:
            raise SpectraError(f"need at least 2 training stars after the validation split, got "
                               f"{n - n_val} of {n}")
        if tc.val_fraction > 0 and n_val < 1:
            raise SpectraError(f"{source}: {n} stars leave no validation star at val_fraction "
                               f"{tc.val_fraction} (the validation loss would be NaN); give "
                               f"at least {int(np.ceil(1 / tc.val_fraction))} stars")
        perm = np.random.default_rng(tc.validation_seed).permutation(n)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        # held out: the validation share and, learning labels, a pseudo-label table's
        # calibration stars (xpsvae.labels.pseudo), whose labels the label term leaves out
        held_out = np.isin(np.arange(n), val_idx)
        marked = calibration_marks(spectra.labels, source) if labels else None
        self.training_source_ids, self.held_out_source_ids = training_stars_record(
            spectra.source_id, held_out if marked is None else held_out | marked)
        rank, world = distributed_rank_world()
        data_description = {"source": spectra.accounting.source if spectra.accounting else None,
                            "n_stars": n, "n_train": len(train_idx), "n_val": n_val,
                            "checksum": float(np.float64(spectra.values).sum()),
                            **({"n_partial_left_out": n_partial} if n_partial else {})}

        self._start_run(out_dir, resume, data_description, spectra.n_inputs,
                        lambda: Standardizer.fit(spectra.values, train_idx),
                        {"kind": spectra.kind, "normalisation": spectra.normalisation,
                         "wavelength_nm": spectra.wavelength_nm,
                         "input_names": spectra.input_names()}, labels)

        # Under torchrun each rank trains on every world-th training star; the
        # standardisation above saw them all, so it is the same on every rank.
        local = train_idx[rank::world]
        # This rank's training stars, then the validation stars, standardised straight into
        # one array in that order: the two sets are views of it, not copies.
        x, err = self.standardizer.transform(spectra.values, spectra.errors,
                                             rows=np.concatenate([local, val_idx]))
        x, err = torch.from_numpy(x), torch.from_numpy(err)
        n_local, targets = len(local), None
        if self.config.labels:
            targets, mean, std = label_targets(spectra.labels, self.config.labels, local,
                                               source, train_idx)
            for name, value in (("label_mean", mean), ("label_std", std)):
                getattr(self.network.label_head, name).copy_(torch.from_numpy(value))
        trainer = Trainer(self.network, tc, out_dir=out_dir, progress=progress)
        return self._train(trainer, out_dir, lambda: trainer.fit(
            x[:n_local], err[:n_local], x[n_local:], err[n_local:], resume=resume,
            on_epoch_end=on_epoch_end, labels=targets))

    def fit_store(self, store: str, *, out_dir: Optional[str] = None, resume: bool = False,
                  progress: bool = True, buffer_shards: int = 4,
                  cache_dir: Optional[str] = None, resident: bool = False,
                  on_epoch_end: Optional[Callable[[Trainer], None]] = None) -> "SVAE":
        """Fit on a store written by ``xpsvae ingest``, streamed shard by shard.

        For stores larger than memory: ``buffer_shards`` shards at a time, rows
        shuffled across them, shards in a new order each epoch (:mod:`xpsvae.stream`);
        validation stars picked by a hash of source_id; under ``torchrun`` each rank
        reads only its own shards. With ``resident`` the training stars are read once
        and kept on the device, each rank its own shards (docs/scaling.md).

        Args:
            store: the store folder.
            out_dir, resume, progress, on_epoch_end: as for :meth:`fit`.
            buffer_shards: shards shuffled together in memory.
            cache_dir: keep the checked training rows there as float32 ``.npy`` files
                from the first pass, and read the epochs from them (~8 bytes per input
                per star of disk).
            resident: keep this rank's training stars on the device (above).

        Returns:
            self, trained.
        """
        tc = self.train_config
        rank, world = distributed_rank_world()
        stream = StoreStream.scan(store, tc.val_fraction, tc.seed, buffer_shards, rank=rank,
                                  world=world, progress=progress and rank == 0,
                                  cache_dir=cache_dir)
        data_description = {"source": os.path.abspath(store), "streamed": not resident,
                            "resident_parts": resident,
                            "n_stars": int(stream.total_train_rows), "n_train": int(
                                stream.total_train_rows), "n_val": int(len(stream.x_val)),
                            "checksum": stream.checksum, "accounting": stream.accounting}
        self._start_run(out_dir, resume, data_description, stream.n_inputs,
                        lambda: stream.standardizer,
                        {"kind": stream.kind, "normalisation": stream.normalisation,
                         "wavelength_nm": stream.wavelength_nm,
                         "input_names": stream.input_names})
        if self.config.labels:
            raise ValueError("a model with labels learns them from a table in memory "
                             "(fit, xpsvae train TABLE --labels), not from a store")
        stream.standardizer = self.standardizer  # a resumed run's saved statistics
        self.training_source_ids, self.held_out_source_ids = training_stars_record(
            store_source_ids(store, MAX_RECORDED_STARS))
        trainer = Trainer(self.network, tc, out_dir=out_dir, progress=progress)
        if not resident:
            return self._train(trainer, out_dir, lambda: trainer.fit_stream(
                stream, resume=resume, on_epoch_end=on_epoch_end))
        refuse_a_part_too_large(store, stream.train_rows, stream.n_inputs, trainer.device,
                                 rank, world)
        return self._train(trainer, out_dir, lambda: trainer.fit(
            *stream.training_tensors(), torch.from_numpy(stream.x_val),
            torch.from_numpy(stream.err_val), resume=resume, on_epoch_end=on_epoch_end))

    def _train(self, trainer: Trainer, out_dir: Optional[str], run: Callable[[], list]
               ) -> "SVAE":
        """Run the trainer; keep its history and network even if it stops; save (rank 0)."""
        try:
            run()
        finally:
            self.history = trainer.history
            self.network = trainer.model.cpu()
        if out_dir and distributed_rank_world()[0] == 0:
            self.save(out_dir)
        return self

    def _start_run(self, out_dir: Optional[str], resume: bool, data_description: dict,
                   n_inputs: int, fit_standardizer: Callable[[], Standardizer],
                   info: dict, labels: Sequence[str] = ()) -> None:
        """Adopt the saved run to resume, or set up a new one: architecture (with the
        label head for ``labels``), standardisation, what the inputs are, and
        ``config.json`` (rank 0)."""
        saved = os.path.join(out_dir, CONFIG_FILE) if out_dir else None
        if resume and saved and os.path.exists(saved):
            saved = check_resumable(out_dir, self.train_config, data_description,
                                    RESUMABLE_CHANGES, labels)
            self.config = SVAEConfig.from_dict(saved["model"])
            self.standardizer = Standardizer.from_dict(saved["preprocessing"])
            self.info = saved["info"]
            self.network = self._build_network()
            return
        if self.config is None:
            self.config = SVAEConfig.preset(self.arch, n_inputs)
        if labels:
            self.config = replace(self.config, labels=tuple(labels))
        if self.config.input_dim != n_inputs:
            raise SpectraError(f"{data_description['source']}: {n_inputs} inputs per spectrum, "
                               f"but the architecture expects {self.config.input_dim}")
        self.standardizer = fit_standardizer()
        wavelength = info.get("wavelength_nm")
        self.info = {**info, "wavelength_nm": None if wavelength is None
                     else [float(w) for w in wavelength], "data": data_description}
        self.network = self._build_network()
        if out_dir and distributed_rank_world()[0] == 0:
            self._write_config(out_dir)

    def _build_network(self) -> ScatterVAE:
        # Weights are drawn from the run's seed without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.train_config.seed)
            return ScatterVAE(self.config)

    # ------------------------------------------------------------------ inference
    def _require_trained(self) -> None:
        if self.network is None or self.standardizer is None:
            raise RuntimeError("the model is not trained: call fit() or SVAE.load() first")

    def _values(self, spectra) -> np.ndarray:
        if isinstance(spectra, (str, os.PathLike)):  # a table file or a store's shard
            spectra = as_spectra(spectra, what="encode",
                                 wanted=contract(self.info, self.config.input_dim))
        values = spectra.values if isinstance(spectra, SpectraSet) else np.asarray(spectra)
        if values.ndim == 1:
            values = values[None, :]
        if values.ndim != 2 or values.shape[1] != self.config.input_dim:
            source = spectra.accounting.source if isinstance(spectra, SpectraSet) and \
                spectra.accounting else "input"
            raise SpectraError(f"{source}: spectra of shape {values.shape}; this model expects "
                               f"(n_stars, {self.config.input_dim}) "
                               f"({self.info.get('kind', 'unknown')} inputs)")
        return values

    def _run(self, fn: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]], array: np.ndarray,
             device: str = "cpu") -> Tuple[np.ndarray, ...]:
        """``fn`` of the network's input, chunk by chunk, holes filled (:func:`run_filled`)."""
        return run_filled(self.network, fn, array, resolve_device(device))

    def encode(self, spectra, device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
        """Latent mean and standard deviation per star.

        Args:
            spectra: a :class:`SpectraSet`, an array (n_stars, n_inputs) in the
                input's units, or a table file or store shard, converted to the
                model's inputs (:mod:`xpsvae.conform`).
            device: where to run.

        Returns:
            (latent_mean, latent_std), each (n_stars, latent_dim). A partial spectrum's
            std, given its errors, includes what its holes leave unknown
            (:func:`~xpsvae.model.partial.imputation_variance`), as in :meth:`score`.
        """
        if isinstance(spectra, (str, os.PathLike)):
            spectra = as_spectra(spectra, what="encode",
                                 wanted=contract(self.info, self.config.input_dim))
        if isinstance(spectra, SpectraSet) and not spectra.observed.all():
            out = self.standardised_outputs(spectra, device)
            return out["latent_mean"], out["latent_std"]

        def fn(t):
            mean, logvar = self.network.encode(t)
            return mean, torch.exp(0.5 * logvar)
        return self.apply(fn, spectra, device)

    def apply(self, fn: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]], spectra,
              device: str = "cpu") -> Tuple[np.ndarray, ...]:
        """``fn`` of the network's input, the stars' standardised spectra (holes filled in),
        chunk by chunk; its outputs as arrays, one row per star. Spectra as for
        :meth:`encode`."""
        self._require_trained()
        x = self.standardizer.transform(self._rescaled(self._values(spectra), None, device)[0])
        return self._run(fn, x, device)

    def _rescaled(self, values: np.ndarray, errors: Optional[np.ndarray], device: str
                  ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Partial spectra divided by their whole median, holes filled (:func:`median_scale`)."""
        if self.info.get("normalisation") not in MEDIAN_NAMES or np.isfinite(values).all():
            return values, errors

        def reconstruct(part: np.ndarray) -> np.ndarray:
            (x_hat,) = self._run(lambda t: (self.network.decode(self.network.encode(t)[0]),),
                                 self.standardizer.transform(part), device)
            return self.standardizer.inverse_values(x_hat)
        scale = median_scale(values, reconstruct)[:, None]
        return values / scale, None if errors is None else errors / scale

    def _check_latent(self, latent) -> np.ndarray:
        latent = np.atleast_2d(np.asarray(latent, dtype=np.float32))
        if latent.ndim != 2 or latent.shape[1] != self.config.latent_dim:
            raise ValueError(f"latent vectors must have shape (n, {self.config.latent_dim}), "
                             f"got {latent.shape}")
        return latent

    def decode(self, latent, device: str = "cpu") -> np.ndarray:
        """Spectra generated from latent vectors (n, latent_dim), in the input's units."""
        self._require_trained()
        (x_hat,) = self._run(lambda t: (self.network.decode(t),), self._check_latent(latent), device)
        return self.standardizer.inverse_values(x_hat)

    def scatter(self, latent, device: str = "cpu") -> np.ndarray:
        """Intrinsic scatter (a standard deviation per input) for latent vectors, input's units."""
        self._require_trained()
        (s,) = self._run(lambda t: (self.network.intrinsic_scatter(t),),
                         self._check_latent(latent), device)
        return self.standardizer.inverse_scale(s)

    def generate(self, n: int, seed: int = 0, device: str = "cpu"
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` latent vectors from the N(0, 1) prior and generate spectra.

        Returns:
            (latent, spectra, intrinsic_scatter).
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        self._require_trained()
        latent = np.random.default_rng(seed).standard_normal(
            (n, self.config.latent_dim)).astype(np.float32)
        return latent, self.decode(latent, device), self.scatter(latent, device)

    def standardised_outputs(self, spectra: SpectraSet, device: str = "cpu"
                             ) -> Dict[str, np.ndarray]:
        """Everything the metrics need, in standardised units, decoding the latent mean.

        Returns:
            dict with ``x``, ``err``, ``x_hat``, ``scatter``, ``latent_mean``,
            ``latent_std`` (arrays, one row per star).
        """
        self._require_trained()
        x, err = self.standardizer.transform(*self._rescaled(self._values(spectra),
                                                             spectra.errors, device))

        def fn(t):
            out = self.network(t)
            return (out["x_hat"], out["scatter"], out["latent_mean"],
                    torch.exp(0.5 * out["latent_logvar"]))
        x_hat, scatter, mean, std = self._run(fn, x, device)
        observed = np.isfinite(x) & np.isfinite(err)
        rows = np.flatnonzero(~observed.all(axis=1))
        if len(rows):  # a partial star's latent is less certain: multiple imputation
            var = imputation_variance(lambda a: self._run(lambda t: (
                self.network.encode(t)[0],), a, device)[0], x[rows], err[rows], x_hat[rows],
                scatter[rows], observed[rows])
            std[rows] = np.sqrt(std[rows] ** 2 + (1 + 1 / SPREAD_DRAWS) * var)
        return {"x": x, "err": err, "x_hat": x_hat, "scatter": scatter, "latent_mean": mean,
                "latent_std": std}

    def score(self, spectra, errors=None, device: str = "cpu") -> Dict[str, np.ndarray]:
        """Per star: latents, how well the model reconstructs it, and how unlike it is.

        ``anomaly_score`` is the star's negative log-likelihood under the model,
        per measured input: the mean of ``r^2/2 + ln(2 pi w)/2``, ``w = err^2 +
        scatter^2`` (standardised units, decoded from the latent mean). Rare or broken
        spectra score high: ``np.argsort(-score(stars)["anomaly_score"])``.

        Args:
            spectra: a :class:`SpectraSet` (``read_spectra``), an array
                (n_stars, n_inputs) with ``errors`` of the same shape, in the
                input's units, or a table file or store shard, converted to the
                model's inputs (:mod:`xpsvae.conform`).
            errors: errors when ``spectra`` is an array.
            device: where to run.

        Returns:
            dict of arrays, one row per star: ``latent_mean``, ``latent_std`` (n,
            latent_dim; widened by a partial star's holes, :meth:`encode`),
            ``reconstruction_chi2_per_dof`` (the mean of r^2 over the measured
            inputs), ``anomaly_score`` and ``n_observed`` (the measured inputs; fewer
            for a partial spectrum, whose holes both figures leave out) (n,).
        """
        given = spectra
        spectra = as_spectra(spectra, errors, "scoring",
                             contract(self.info, self.config.input_dim))
        if not isinstance(given, SpectraSet) and spectra.accounting.rows_set_aside:
            # one score per row given, or none: a row left out would shift every later one
            row, reason, column = spectra.accounting.set_aside[0]
            raise SpectraError(f"score: {spectra.accounting.rows_set_aside} of the rows given "
                               f"set aside, the first row {row} ({reason}, column {column}); "
                               "give only rows with finite values and positive errors, or "
                               "read_spectra's SpectraSet, whose source_id says which star "
                               "each score is")
        out = self.standardised_outputs(spectra, device=device)
        w = out["err"].astype(np.float64) ** 2 + out["scatter"].astype(np.float64) ** 2
        r2 = (out["x"] - out["x_hat"]) ** 2 / w  # NaN at an unmeasured input: left out
        return {"latent_mean": out["latent_mean"], "latent_std": out["latent_std"],
                "reconstruction_chi2_per_dof": np.nanmean(r2, axis=1),
                "anomaly_score": 0.5 * np.nanmean(r2 + np.log(2 * np.pi * w), axis=1),
                "n_observed": np.isfinite(r2).sum(axis=1)}

    # ------------------------------------------------------------------ files
    def _config_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "xpsvae_version": VERSION,
                "model": self.config.to_dict(), "training": self.train_config.to_dict(),
                "preprocessing": self.standardizer.to_dict(), "info": self.info}

    def _write_config(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        write_json(os.path.join(directory, CONFIG_FILE), self._config_dict())

    def save(self, directory: str) -> None:
        """Write ``model.safetensors``, ``config.json`` (and ``history.csv``, and
        ``training_stars.safetensors``: :mod:`xpsvae.model.folder`) to ``directory``."""
        self._require_trained()
        self._write_config(directory)
        write_weights(directory, self.network.state_dict())
        if self.training_source_ids is not None:
            write_training_stars(directory, self.training_source_ids, self.held_out_source_ids)
        write_history(directory, self.history, keep=True)

    @classmethod
    def pretrained(cls) -> "SVAE":
        """The model shipped with the package: the default recipe on all 40,226 stars of the
        embedded APOGEE library (docs/pretrained.md says where to trust it)."""
        return cls.load(BUILTIN_MODEL)

    @classmethod
    def load(cls, directory: str) -> "SVAE":
        """Load a model directory written by :meth:`save` (safetensors + JSON only).

        Raises:
            ModelFileError: missing file, other format version, or a weight
                whose shape disagrees with the saved architecture.
        """
        directory = model_folder(directory)  # "builtin": the model shipped with the package
        config, train_config, standardizer, info = read_parts(directory)
        model = cls(config, train_config)
        model.standardizer, model.info = standardizer, info
        model.network = ScatterVAE(config)
        model.network.load_state_dict(read_weights(directory, model.network.state_dict()))
        model.network.eval()
        model.training_source_ids, model.held_out_source_ids = read_training_stars(directory)
        model.history = read_history(directory)
        return model
