"""The training loop: data resident on the device, batches drawn by index, a checkpoint per epoch.

Read :meth:`Trainer.fit` top to bottom: it is the whole loop. The data are two
tensors (standardised spectra and errors) that live on the training device;
each epoch draws a random permutation on the device and slices batches from
it, so no batch is ever converted from numpy. Loss terms are summed on the
device and read back once per epoch, not once per batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..core.errors import ModelFileError, TrainingDiverged
from ..core.files import CHECKPOINT_NAME, atomic_path
from .folder import write_history
from .graphstep import GraphedStep
from .network import ScatterVAE, label_nll, svae_loss
from .partial import draw_observed, impute
from .recipe import TrainConfig
from .runtime import distributed_rank_world, fused_optimizer, resolve_device, torch_threads
from .spikes import SpikeGuard

TERMS = ("loss", "chi2", "penalty", "kl")
#: Labels of a batch in semi-supervised training: standardised labels, their survey
#: variances and whether each star has each label, each (batch, L).
LabelBatch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Trainer:
    """Trains a :class:`ScatterVAE` on standardised tensors, with checkpoints and resume.

    Under ``torchrun`` (an initialised process group) the model is wrapped in
    DistributedDataParallel: each rank trains on its own stars with
    ``batch_size / world`` stars per step, so the global batch is
    ``batch_size``; gradients are averaged across ranks, loss terms are
    averaged for the history, and rank 0 alone writes files.

    Args:
        model: the network (moved to the training device).
        config: the recipe.
        out_dir: where ``checkpoint.safetensors`` and ``history.csv`` go
            (None: no files, no resume).
        progress: show a progress bar.
    """

    def __init__(self, model: ScatterVAE, config: TrainConfig, out_dir: Optional[str] = None,
                 progress: bool = True):
        self.config = config
        self.device = resolve_device(config.device)
        self.rank, self.world = distributed_rank_world()
        if self.world > 1 and self.device.type == "cuda" and config.sync_batchnorm:
            # same parameter names, so checkpoints and model files are unchanged
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.out_dir = out_dir
        self.progress = progress
        self.history: List[Dict[str, float]] = []
        self.terms = TERMS  # the loss terms the history keeps (fit with labels adds one)
        self.epoch = 0  # epochs completed
        # Each rank draws its own shuffles and latent noise.
        self.generator = torch.Generator(device=self.device).manual_seed(
            config.seed + 1 + 1000 * self.rank)
        if config.cuda_graph and self.world > 1:
            raise ValueError("cuda_graph trains in one process: under torchrun, DDP's gradient "
                             "all-reduce is not captured; leave cuda_graph off")
        self.forward = self._wrap()
        self.batch_loss = torch.compile(self._batch_loss) if config.compile else self._batch_loss
        self.optimizer = self._make_optimizer()
        self.guard = SpikeGuard(config.spike_clip, self.device)

    def _wrap(self):
        """The module the loop calls: the model, or DDP over its trainable parameters."""
        module = self.model
        if self.world > 1:
            module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return module

    def _batch_loss(self, x: torch.Tensor, err: torch.Tensor, noise: Optional[torch.Tensor],
                    use_amp: bool, labels: Optional[LabelBatch] = None
                    ) -> Dict[str, torch.Tensor]:
        """Forward pass and loss terms of one batch (compiled as one graph with ``compile``,
        so the loss's element-wise work fuses with the heads' last layers); with
        ``labels``, the label term of semi-supervised training joins the loss."""
        # no autocast weight cache: a CUDA graph must not capture a cache that empties
        observed = None
        if self.config.mask_fraction:  # a partial spectrum, filled in as encoding fills it
            observed = draw_observed(x, self.config.mask_fraction, self.generator)
            with torch.no_grad():
                x = impute(self.model, x, observed, rounds=1)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp,
                            cache_enabled=not self.config.cuda_graph):
            out = self.forward(x, noise)
        terms = svae_loss(x, err, out["x_hat"].float(), out["scatter"].float(),
                          out["latent_mean"].float(), out["latent_logvar"].float(),
                          self.config.loss_form, observed)
        if labels is not None:
            per_star = label_nll(out["label_mean"].float(), out["label_logvar"].float(),
                                 *labels).sum(dim=-1).mean()
            terms["label"] = per_star
            terms["loss"] = terms["loss"] + self.config.label_weight * per_star
        return terms

    # ------------------------------------------------------------------ recipe
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adamw":
            make = partial(torch.optim.AdamW, lr=c.scaled_lr, weight_decay=c.weight_decay)
        else:
            make = partial(torch.optim.SGD, lr=c.scaled_lr, momentum=c.momentum,
                           weight_decay=c.weight_decay)
        extra = {}
        if c.cuda_graph:
            # A graph replays the rate from memory: a tensor the loop fills in each step.
            # PyTorch's CUDA kernels read it as float32; on CPU float64 keeps the eager numbers.
            dtype = torch.float32 if self.device.type == "cuda" else torch.float64
            extra["lr"] = torch.tensor(c.scaled_lr, dtype=dtype, device=self.device)
            if c.optimizer == "adamw" and self.device.type == "cuda":
                extra["capturable"] = True
        # A CUDA graph needs the fused kernels: without them, say so rather than fall back.
        return fused_optimizer(partial(make, **extra), list(self.model.parameters()),
                               required=c.cuda_graph)

    def learning_rate(self, step: int, total_steps: int, epoch: int) -> float:
        """The rate at a global step: a pure function, so resuming needs no scheduler state."""
        c = self.config
        lr = c.scaled_lr
        if epoch >= c.epochs:  # scatter calibration phase
            return lr * c.calibrate_lr_fraction
        if c.optimizer == "sgd":
            return lr * c.lr_decay ** epoch
        warmup = max(1, int(c.warmup_fraction * total_steps))
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        floor = c.min_lr_fraction
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    # ------------------------------------------------------------------ loop
    def fit(self, x_train: torch.Tensor, err_train: torch.Tensor,
            x_val: Optional[torch.Tensor] = None, err_val: Optional[torch.Tensor] = None,
            resume: bool = False,
            on_epoch_end: Optional[Callable[["Trainer"], None]] = None,
            labels: Optional[LabelBatch] = None) -> List[Dict[str, float]]:
        """Train for ``config.epochs`` epochs (continuing from a checkpoint if ``resume``).

        Args:
            x_train, err_train: standardised spectra and errors, (n_train, N).
            x_val, err_val: validation stars, or None.
            resume: continue from ``out_dir/checkpoint.safetensors`` if present.
            on_epoch_end: called after each epoch's checkpoint is written.
            labels: semi-supervised training (a model with a label head): the
                training stars' standardised labels, their survey variances and
                whether each star has each label, each (n_train, L); the history
                gains the ``label`` term.

        Returns:
            The history: one dict per epoch with the learning rate, each loss
            term on train and validation, and the elapsed seconds.

        Raises:
            TrainingDiverged: the loss became NaN or inf; the model is restored
                to the last good checkpoint, which stays on disk.
        """
        tensors = [t.to(self.device) for t in (x_train, err_train, *(labels or ()))]
        if labels is not None:
            self.terms = TERMS + ("label",)
            if not hasattr(self.model, "label_head") or any(len(t) != len(x_train)
                                                             for t in tensors):
                raise ValueError("labels need a model with a label head (SVAEConfig.labels) "
                                 "and one row per training star")
            if self.config.cuda_graph:
                raise ValueError("the captured step has no label term: leave cuda_graph off "
                                 "to train with labels")
        n = x_train.shape[0]
        batch_size = self.rank_batch_size

        def batches(epoch: int, n_batches: int):
            perm = torch.randperm(n, device=self.device, generator=self.generator)
            for b in range(n_batches):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                # index_select is ~3x faster than x_train[idx] for a row gather on CPU
                yield tuple(t.index_select(0, idx) for t in tensors)
        # drop the ragged tail: BatchNorm-safe
        return self._loop(batches, max(1, n // batch_size), x_val, err_val, resume, on_epoch_end)

    def fit_stream(self, stream, resume: bool = False,
                   on_epoch_end: Optional[Callable[["Trainer"], None]] = None
                   ) -> List[Dict[str, float]]:
        """Train from a :class:`xpsvae.stream.StoreStream` (a store larger than memory).

        Same loop, checkpoints and resume as :meth:`fit`; the validation stars
        are the stream's.
        """
        batch_size = self.rank_batch_size

        def batches(epoch: int, n_batches: int):
            return stream.epoch(epoch, batch_size, n_batches, self.device)
        x_val, err_val = torch.from_numpy(stream.x_val), torch.from_numpy(stream.err_val)
        return self._loop(batches, stream.batches_per_epoch(batch_size), x_val, err_val, resume,
                          on_epoch_end)

    @property
    def rank_batch_size(self) -> int:
        """Stars per step on this rank; the global batch is ``config.batch_size``."""
        return max(2, self.config.batch_size // self.world)

    def _loop(self, batches: Callable[[int, int], Iterator], batches_per_epoch: int,
              x_val: Optional[torch.Tensor], err_val: Optional[torch.Tensor], resume: bool,
              on_epoch_end: Optional[Callable[["Trainer"], None]]) -> List[Dict[str, float]]:
        """The training loop over ``batches(epoch, n_batches)``, whatever feeds them, at
        ``config.threads`` (0: the idle cores), the caller's thread count put back after."""
        with torch_threads(self.config.threads, idle=True):
            return self._steps(batches, batches_per_epoch, x_val, err_val, resume, on_epoch_end)

    def _steps(self, batches: Callable[[int, int], Iterator], batches_per_epoch: int,
               x_val: Optional[torch.Tensor], err_val: Optional[torch.Tensor], resume: bool,
               on_epoch_end: Optional[Callable[["Trainer"], None]]) -> List[Dict[str, float]]:
        c = self.config
        if resume:
            self.load_checkpoint()
        has_val = x_val is not None and len(x_val) > 0
        if has_val:
            x_val, err_val = x_val.to(self.device), err_val.to(self.device)
        if self.world > 1:  # every rank must take the same number of steps
            steps = torch.tensor([batches_per_epoch, int(has_val)], device=self.device)
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
            # validation only if every rank has stars for it: its loss is averaged across ranks
            batches_per_epoch, has_val = int(steps[0].item()), bool(steps[1].item())
        total_steps = batches_per_epoch * c.epochs  # of the main phase: sets the schedule
        all_epochs = c.epochs + c.calibrate_epochs
        latent_dim = self.model.config.latent_dim
        use_amp = c.amp and self.device.type == "cuda"
        start = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)

        bar = tqdm(total=batches_per_epoch * all_epochs, initial=self.epoch * batches_per_epoch,
                   unit="batch", disable=not self.progress, desc="training", dynamic_ncols=True)
        # cuda_graph: one captured step per phase, built afresh here since loading a
        # checkpoint replaces the optimizer state a graph would have captured
        self.graphed: Dict[bool, GraphedStep] = {}
        for epoch in range(self.epoch, all_epochs):
            calibrating = epoch >= c.epochs
            self._set_phase(calibrating)
            sums = torch.zeros(len(self.terms), device=self.device)
            for b, (x, err, *labels) in enumerate(batches(epoch, batches_per_epoch)):
                step = epoch * batches_per_epoch + b
                lr = self.learning_rate(step, total_steps, epoch)
                noise = None if calibrating else torch.randn(
                    x.shape[0], latent_dim, device=self.device, generator=self.generator)
                if c.cuda_graph:
                    if calibrating not in self.graphed:
                        self.graphed[calibrating] = self._graphed_step(
                            x.shape[0], not calibrating, use_amp)
                    self.graphed[calibrating](x, err, noise, lr)
                else:
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    self._train_step(x, err, noise, sums, use_amp, tuple(labels) or None)
                bar.update(1)
            if calibrating in self.graphed:  # the graphed step summed the loss terms itself
                sums = self.graphed[calibrating].take_sums()

            if self.world > 1:
                dist.all_reduce(sums)
                sums /= self.world
            row = {"epoch": epoch + 1, "phase": "calibrate" if calibrating else "train", "lr": lr}
            row.update({f"train_{t}": v / batches_per_epoch
                        for t, v in zip(self.terms, sums.tolist())})
            if has_val:
                row.update({f"val_{t}": v for t, v in self.evaluate_loss(x_val, err_val).items()})
                if self.world > 1:  # ranks that stream hold different validation stars
                    vals = torch.tensor([row[f"val_{t}"] for t in TERMS], device=self.device)
                    dist.all_reduce(vals)
                    row.update({f"val_{t}": v / self.world for t, v in zip(TERMS, vals.tolist())})
            row["bounded_steps"] = self.guard.take_bounded()
            row["seconds"] = time.perf_counter() - start
            if not all(math.isfinite(v) for k, v in row.items() if k.startswith(("train_", "val_"))):
                bar.close()
                self._diverged(epoch + 1, row)
            self.history.append(row)
            self.epoch = epoch + 1
            bar.set_postfix(train=f"{row['train_loss']:.4f}",
                            val=f"{row.get('val_loss', float('nan')):.4f}")
            if self.out_dir:
                self.save_checkpoint()
                if self.rank == 0:
                    write_history(self.out_dir, self.history)
            if on_epoch_end is not None:
                on_epoch_end(self)
        bar.close()
        self._set_phase(False)
        self.guard.warn_if_often(sum(int(h.get("bounded_steps", 0)) for h in self.history),
                                 batches_per_epoch * all_epochs)
        return self.history

    def _train_step(self, x: torch.Tensor, err: torch.Tensor, noise: Optional[torch.Tensor],
                    sums: torch.Tensor, use_amp: bool, labels: Optional[LabelBatch] = None
                    ) -> None:
        """One optimiser step on a batch; adds its loss terms to ``sums`` (no host sync)."""
        terms = self.batch_loss(x, err, noise, use_amp, labels)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.guard(self.model.parameters())
        self.optimizer.step()
        sums += torch.stack([terms[t].detach() for t in self.terms])

    def _graphed_step(self, batch_size: int, with_noise: bool, use_amp: bool) -> GraphedStep:
        """The step of :meth:`_train_step` on fixed buffers, for capture as a CUDA graph."""
        lr = self.optimizer.param_groups[0]["lr"]
        if not all(g["lr"] is lr for g in self.optimizer.param_groups):
            raise RuntimeError("cuda_graph needs one learning-rate tensor shared by all groups")
        return GraphedStep(partial(self._train_step, use_amp=use_amp), lr, batch_size,
                           self.model.config.input_dim, self.model.config.latent_dim,
                           len(TERMS), with_noise, self.device)

    def _set_phase(self, calibrating: bool) -> None:
        """Train everything, or (calibration) only the scatter head with the rest frozen."""
        self.model.train()
        changed = self.model.decoder[0][0].weight.requires_grad == calibrating
        for part in (self.model.encoder, self.model.decoder):
            part.requires_grad_(not calibrating)
            if calibrating:
                part.eval()  # frozen BatchNorm statistics stay as trained
        if changed and self.world > 1:
            # DDP fixes the set of trainable parameters when built: build it again.
            self.forward = self._wrap()

    @torch.no_grad()
    def evaluate_loss(self, x: torch.Tensor, err: torch.Tensor, chunk: int = 16384
                      ) -> Dict[str, float]:
        """Loss terms on held-out stars, decoding the latent mean (no sampling noise)."""
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(len(TERMS), device=self.device)
        for i in range(0, x.shape[0], chunk):
            xb, eb = x[i:i + chunk], err[i:i + chunk]
            out = self.model(xb)
            terms = svae_loss(xb, eb, out["x_hat"], out["scatter"], out["latent_mean"],
                              out["latent_logvar"], self.config.loss_form)
            sums += torch.stack([terms[t] for t in TERMS]) * xb.shape[0]
        self.model.train(was_training)
        return {t: v / x.shape[0] for t, v in zip(TERMS, sums.tolist())}

    def _diverged(self, epoch: int, row: Dict[str, float]) -> None:
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        path = self.checkpoint_path
        if path and os.path.exists(path):
            self.load_checkpoint()
            kept = f"the last good checkpoint ({path}, epoch {self.epoch}) is kept and loaded"
        else:
            kept = "no earlier checkpoint exists"
        raise TrainingDiverged(f"the loss became non-finite in epoch {epoch} ({bad}); {kept}. "
                               "Try a lower learning rate or --grad-clip.")

    # ------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Optional[str]:
        return os.path.join(self.out_dir, CHECKPOINT_NAME) if self.out_dir else None

    def save_checkpoint(self) -> None:
        """Weights, optimizer and RNG state in one safetensors file, written atomically."""
        tensors = {f"model.{k}": v.detach().contiguous().cpu()
                   for k, v in self.model.state_dict().items()}
        optim = self.optimizer.state_dict()
        optim_scalars = {}
        for pid, state in optim["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{key}"] = value.detach().contiguous().cpu()
                else:
                    optim_scalars[f"{pid}.{key}"] = value
        states = [self.generator.get_state()]
        if self.world > 1:  # every rank's random stream, so that each resumes its own
            states = [None] * self.world
            dist.all_gather_object(states, self.generator.get_state())
        for r, state in enumerate(states):
            tensors[f"rng.generator.{r}"] = state
        tensors.update({f"guard.{k}": v for k, v in self.guard.state_dict().items()})
        if self.rank != 0:
            dist.barrier()  # rank 0 writes; the others wait until the file is whole
            return
        meta = {"epoch": self.epoch, "history": self.history, "train_config": self.config.to_dict(),
                "optim_param_groups": [{k: float(v) if torch.is_tensor(v) else v
                                        for k, v in g.items()} for g in optim["param_groups"]],
                "optim_scalars": optim_scalars}
        os.makedirs(self.out_dir, exist_ok=True)
        with atomic_path(self.checkpoint_path) as tmp:  # a crash mid-write: the old one stays
            save_file(tensors, tmp, metadata={"xpsvae_checkpoint": json.dumps(meta)})
        if self.world > 1:
            dist.barrier()

    def load_checkpoint(self) -> bool:
        """Restore from ``out_dir/checkpoint.safetensors``; False if there is none."""
        path = self.checkpoint_path
        if not path or not os.path.exists(path):
            return False
        try:
            with safe_open(path, framework="pt") as f:
                meta = json.loads(f.metadata()["xpsvae_checkpoint"])
            tensors = load_file(path)
        except Exception as exc:  # safetensors' own error type: a cut or garbled file
            raise ModelFileError(f"{path}: not a readable checkpoint ({exc}); it was cut or "
                                 "damaged: remove it and train anew with --overwrite") from None
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                                    if k.startswith("model.")})
        state: Dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        for k, v in meta["optim_scalars"].items():
            pid, key = k.split(".", 1)
            state.setdefault(int(pid), {})[key] = v
        own = [{k: g[k] for k in ("lr", "capturable", "fused", "foreach") if k in g}
               for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
        for group, mine in zip(self.optimizer.param_groups, own):
            # how this run steps, whatever the saving run did; a tensor rate stays the same tensor
            saved_lr = float(group["lr"])
            group.update(mine)
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(saved_lr)
            else:
                group["lr"] = saved_lr
        self.guard.load_state_dict({k[len("guard."):]: v for k, v in tensors.items()
                                    if k.startswith("guard.")})
        key = f"rng.generator.{self.rank}"
        self.generator.set_state(tensors[key] if key in tensors else tensors["rng.generator.0"])
        self.epoch = int(meta["epoch"])
        self.history = meta["history"]
        return True

