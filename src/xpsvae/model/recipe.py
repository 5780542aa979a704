"""How to train: :class:`TrainConfig`, the recipes (the paper's Section 2.3, and ours), and
the learning-rate rule for larger batches. Every field is checked when it is set."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Optional

from ..core.constants import LOSS_FORMS, RECIPES

LR_SCALINGS = ("auto", "sqrt", "linear", "none")


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        optimizer: ``adamw`` (cosine schedule with a short linear warm-up) or
            ``sgd`` (momentum, exponential decay per epoch: the paper's recipe).
        lr: peak (adamw) or initial (sgd) learning rate.
        batch_size: stars per step.
        epochs: passes over the training stars.
        weight_decay: AdamW's decoupled weight decay (SGD: L2 penalty).
        momentum: SGD momentum.
        lr_decay: SGD's learning rate is ``lr * lr_decay ** epoch``.
        warmup_fraction: share of the steps over which AdamW's rate ramps up.
        min_lr_fraction: AdamW's final rate as a share of ``lr``.
        loss_form: ``paper`` (the means of the paper's eqs 1-5) or ``elbo`` (sums).
        seed: seeds weights, shuffling, latent noise and (without ``split_seed``) the
            validation split.
        split_seed: seeds the validation split of a table apart from ``seed`` (None:
            ``seed``). sVAEs of several seeds with one ``split_seed`` hold out the same
            stars, so that label models on them calibrate on stars none of them learnt
            (docs/labels.md, "Several sVAEs together"). A store's split is set by each
            star's source_id, whatever the seed.
        val_fraction: share of the given stars held out for validation.
        device: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto``.
        amp: bfloat16 autocast on GPU (ignored on CPU).
        grad_clip: clip the gradient norm to this (0: off).
        spike_clip: bound each step's gradient norm at this many times the running
            mean of the earlier steps', after a warm-up (0: off): a rare
            batch whose gradient is hundreds of times the usual would otherwise
            throw the network far off (:mod:`xpsvae.model.spikes`).
        threads: CPU threads for torch while training (0: torch's default, lowered to
            the container's CPU quota and the cores other processes leave idle); the
            caller's count is put back after.
        calibrate_epochs: extra epochs, after ``epochs``, that train only the
            scatter head on reconstructions decoded from the latent mean (the
            encoder and decoder frozen), at ``calibrate_lr_fraction * lr``.
            Training decodes a *sampled* z, so the scatter head otherwise also
            absorbs the latent sampling noise, which is absent when a star is
            decoded from its latent mean (0: off, the paper's behaviour).
        calibrate_lr_fraction: learning rate of those epochs, as a share of ``lr``.
        compile: run each batch's forward pass and loss through
            ``torch.compile`` as one graph (needs a C++ compiler on CPU; see
            the README for the measured gain).
        mask_fraction: train on partial spectra: each star of a batch loses, on
            average, this share of its inputs (at random, or the bluest or reddest
            run, a third of the stars each; the share per star uniform in [0,
            2 mask_fraction)), filled in by one round of the model's own
            imputation and left out of the likelihood. 0 (off) is the default
            (docs/model.md, "Partial spectra", says why).
        label_weight: weight of the label term when the model is fitted with labels
            (semi-supervised: ``SVAE.fit(..., labels=...)``, ``xpsvae train --labels``):
            the loss gains ``label_weight`` times the labels' Gaussian NLL per star
            (:func:`xpsvae.model.network.label_nll`). The default, 50, was chosen by
            measurement (docs/labels-measured.md): the labels improve and the test NLL does not
            move. Unused without labels.
        cuda_graph: capture each training step (batch copy aside) once as a
            CUDA graph and replay it: one launch per step instead of about a
            hundred, which is what limits a GPU at the paper's small network
            and batch. Needs a single process and batches of one size. Off
            CUDA the same step runs uncaptured, with the eager loop's numbers.
        lr_scaling: how the rate follows the batch size: ``lr`` is the rate
            at ``lr_reference_batch`` stars per step, and a batch k times
            larger runs at ``lr * sqrt(k)`` (``sqrt``) or ``lr * k``
            (``linear``); ``auto`` is ``sqrt`` for AdamW and ``linear`` for
            SGD; ``none`` (the default) uses ``lr`` as given. See
            :attr:`scaled_lr` and the README for the measurements: ``sqrt``
            helps at a fixed epoch budget, but long runs at the scaled AdamW
            rate can let the scatter of a few stars collapse.
        lr_reference_batch: the batch size ``lr`` is meant for (the recipe's own).
        sync_batchnorm: under DDP on GPUs, BatchNorm layers (``later``
            architecture) normalise over the global batch (SyncBatchNorm).
            PyTorch has SyncBatchNorm for GPUs only: on CPU (gloo) each rank
            normalises over its own ``batch_size / world`` stars.
    """

    optimizer: str = "adamw"
    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 60
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_decay: float = 0.96
    warmup_fraction: float = 0.02
    min_lr_fraction: float = 0.01
    loss_form: str = "elbo"
    seed: int = 0
    split_seed: Optional[int] = None
    val_fraction: float = 0.1
    device: str = "auto"
    amp: bool = False
    grad_clip: float = 0.0
    spike_clip: float = 5.0
    threads: int = 0
    calibrate_epochs: int = 10
    calibrate_lr_fraction: float = 0.1
    compile: bool = False
    cuda_graph: bool = False
    mask_fraction: float = 0.0
    label_weight: float = 50.0
    sync_batchnorm: bool = True
    lr_scaling: str = "none"
    lr_reference_batch: int = 256

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {self.loss_form!r}")
        if self.calibrate_epochs < 0:
            raise ValueError(f"calibrate_epochs must be >= 0, got {self.calibrate_epochs}")
        if self.batch_size < 2 or self.epochs < 1 or not self.lr > 0:
            raise ValueError(f"need batch_size >= 2, epochs >= 1 and lr > 0; got "
                             f"{self.batch_size}, {self.epochs}, {self.lr}")
        if self.lr_scaling not in LR_SCALINGS or self.lr_reference_batch < 1:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS} and lr_reference_batch "
                             f">= 1, got {self.lr_scaling!r}, {self.lr_reference_batch}")
        if not 0.0 <= self.mask_fraction < 0.5:
            raise ValueError(f"mask_fraction must lie in [0, 0.5), got {self.mask_fraction}")
        if self.mask_fraction and self.cuda_graph:
            raise ValueError("mask_fraction draws masks outside the captured step: leave "
                             "cuda_graph off to train with masks")
        if not (self.spike_clip == 0.0 or self.spike_clip > 1.0):
            raise ValueError(f"spike_clip must be 0 (off) or above 1, got {self.spike_clip}")
        if not self.label_weight >= 0.0:
            raise ValueError(f"label_weight must be >= 0, got {self.label_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.split_seed is not None and not self.split_seed >= 0:
            raise ValueError(f"split_seed must be >= 0 (or None: the seed), got {self.split_seed}")

    @property
    def validation_seed(self) -> int:
        """The seed of a table's validation split: ``split_seed``, or ``seed`` without it."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def scaled_lr(self) -> float:
        """The peak (AdamW) or initial (SGD) rate used at ``batch_size``."""
        rule = self.lr_scaling
        if rule == "auto":
            rule = "sqrt" if self.optimizer == "adamw" else "linear"
        k = self.batch_size / self.lr_reference_batch
        return self.lr * {"sqrt": math.sqrt(k), "linear": k, "none": 1.0}[rule]

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """Named recipes.

        ``fast`` (the default, the field defaults of this class): AdamW, peak
        rate 3e-3, batch 256, cosine decay over 60 epochs, summed-ELBO loss,
        then 10 scatter-calibration epochs (the README's results table gives
        its time on the library's 36,204 training stars, and why this recipe).
        ``long``: the same, its cosine stretched over 1,000 epochs: 15x the time for
        labels 5-10% better and a 4-5% better test NLL (docs/labels.md, "Trained
        longer"); the shipped model's recipe.
        ``paper``: SGD with momentum 0.9, batch 1024, initial rate 0.1 decayed
        by 0.96 per epoch, 100 epochs (paper §2.3; momentum and decay are our
        choice, the paper gives neither), without the bound on gradient spikes.
        """
        presets = {
            "fast": dict(),
            "long": dict(epochs=1000),
            "paper": dict(optimizer="sgd", lr=0.1, batch_size=1024, epochs=100, momentum=0.9,
                          lr_decay=0.96, weight_decay=0.0, loss_form="paper", calibrate_epochs=0,
                          lr_reference_batch=1024, spike_clip=0.0),
        }
        if name not in presets:
            raise ValueError(f"unknown training preset {name!r}; choose from {list(RECIPES)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from a saved dict; options this version does not know are dropped, with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"training options {unknown} are not known to this xpsvae and are "
                          "ignored (saved by another version?)", stacklevel=2)
        d = dict(d)
        # saved before the batch-size rule: the rate was used as given
        d.setdefault("lr_reference_batch", d.get("batch_size", cls.lr_reference_batch))
        d.setdefault("spike_clip", 0.0)  # saved before the bound on gradient spikes: none
        return cls(**{k: v for k, v in d.items() if k in known})
