"""The members of a label head's ensemble: their recipe, their training, their files.

Each member is a small MLP (:func:`mlp`), or, tuning the sVAE's encoder, a
:class:`~xpsvae.labels.tuned.TunedMember`. :func:`train_members` trains them side by
side in one batched pass (``torch.func.vmap``), each from its own seed and batches, as
if alone; :func:`member_arrays` and :func:`load_members` write and read their weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..model.network import hidden_layers
from ..model.runtime import fused_optimizer
from .tuned import TunedMember, Tuning, is_encoder_parameter, mlp_inputs


@dataclass
class LabelHeadConfig:
    """How a label head is built and trained.

    Attributes:
        hidden: widths of each member's hidden layers (GELU). Three of 256 give the
            demo's labels 2-6% better than two, for 50% more time, which the demo's
            five minutes do not allow; 512 wide, worse (docs/labels-measured.md).
        members: MLPs in the ensemble, each from its own seed.
        epochs: passes over the training stars (AdamW, cosine-decayed rate).
        batch_size: stars per step.
        lr: peak learning rate.
        weight_decay: AdamW's.
        val_fraction: share of the labelled stars held out to fit the calibration.
        seed: seed of the split and of the first member.
        threads: CPU threads for torch (0: torch's default, lowered when fitting to the
            cores this process may use and others leave idle); put back after.
        high_alpha: whether a label model whose labels include [Fe/H] and [alpha/M]
            learns high or low alpha as one more output of the head (module docstring,
            :mod:`xpsvae.labels.classes`). On the demo's sVAE trained with the labels,
            that classes stars as well as a classifier of its own, in one training; on
            an unsupervised sVAE, 0.02 worse in balanced accuracy
            (docs/labels-measured.md).
            A :class:`~xpsvae.labels.classes.ClassHead` of this recipe has ``members``
            members.
        grad_clip: the most a member's gradient norm may be in one step (0: no bound).
            Early on, a member whose variance has shrunk meets a batch with a loss in
            the hundreds; unbounded, that gradient swells AdamW's second moment and the
            member learns little for many steps after. Bounded at 10, the demo's head on
            the unsupervised sVAE, where a member had stalled, gained 23% in Teff and the
            MLP baseline 15%; the label model moved within its run-to-run spread
            (docs/labels-measured.md).
        dof: degrees of freedom ``nu`` of the Student-t likelihood (module docstring);
            above 2, so that the variance exists; 0: Gaussian. At 4, each of the demo's
            labels is 1.5-6% better known (robust sigma, three seeds;
            docs/labels-measured.md).
        encoder_lr: 0: the head reads the sVAE's features as they are. Above 0, each
            member trains a copy of the sVAE's encoder with its MLP, the copy at this
            peak rate (:mod:`xpsvae.labels.tuned`): a few per cent better labels for
            about twice the training time (docs/labels.md, "Tuning the encoder").
    """

    hidden: Tuple[int, ...] = (256, 256)
    members: int = 4
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    high_alpha: bool = True
    grad_clip: float = 10.0
    dof: float = 4.0
    encoder_lr: float = 0.0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if self.members < 1 or self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ValueError("need members >= 1, epochs >= 1, batch_size >= 2 and lr > 0; got "
                             f"{self.members}, {self.epochs}, {self.batch_size}, {self.lr}")
        if not self.encoder_lr >= 0:
            raise ValueError(f"encoder_lr must be >= 0 (0: the sVAE's features as they "
                             f"are), got {self.encoder_lr}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no bound), got {self.grad_clip}")
        if not (self.dof == 0 or self.dof > 2):
            raise ValueError(f"dof must be above 2 (the Student t's variance exists) or 0 "
                             f"(Gaussian), got {self.dof}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")

    @property
    def tunes_encoder(self) -> bool:
        """Whether the members train a copy of the sVAE's encoder (``encoder_lr`` above 0),
        and so read the sVAE-standardised spectrum (:func:`~xpsvae.labels.features.
        tuned_inputs`) in place of its features."""
        return self.encoder_lr > 0


def mlp(n_in: int, hidden: Tuple[int, ...], n_out: int) -> nn.Sequential:
    """A member: GELU hidden layers of widths ``hidden``, then a linear map to ``n_out``."""
    return nn.Sequential(*hidden_layers((n_in,) + hidden, "gelu"), nn.Linear(hidden[-1], n_out))


def train_members(config: LabelHeadConfig, count: int, n_out: int, loss: Callable,
                  x: torch.Tensor, *targets: torch.Tensor, history: Optional[list] = None,
                  build: Optional[Tuning] = None) -> List[nn.Module]:
    """``count`` members of an ensemble, trained side by side: MLPs of ``config.hidden``
    from ``x`` to ``n_out`` numbers, each on ``loss(out, *targets)`` over its own batches
    (AdamW, cosine-decayed rate). Member k starts from seed ``config.seed + 7919 k`` and
    draws its batches from a generator of the same seed, as if trained alone.

    The members' weights are stacked and one batched forward pass (``torch.func.vmap``)
    serves all of them, and one batched loss: AdamW acts on each number alone, so this is
    the same training as one member after the other, in fewer, larger matrix products
    (docs/benchmarks.md). AdamW is the fused kernel where the build has it; each
    member's gradient norm is bounded by ``config.grad_clip`` on its own. ``history``
    gains each member's mean loss per epoch. ``build`` makes a member of its new MLP
    (a :class:`~xpsvae.labels.tuned.TunedMember`); its encoder's parameters learn at
    ``config.encoder_lr``."""
    c = config
    members, generators = [], []
    for k in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed + 7919 * k)
            head = mlp(x.shape[1] if build is None else build.n_mlp_inputs, c.hidden, n_out)
            members.append(head if build is None else build(head))
        generators.append(torch.Generator().manual_seed(c.seed + 7919 * k))
    params, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta")
    forward = vmap(lambda p, b, rows: functional_call(template, (p, b), (rows,)))
    groups = [{"params": [p for n, p in params.items() if is_encoder_parameter(n) == tuned],
               "peak_lr": c.encoder_lr if tuned else c.lr} for tuned in (False, True)]
    optimizer = fused_optimizer(partial(torch.optim.AdamW, lr=c.lr, weight_decay=c.weight_decay),
                                [g for g in groups if g["params"]])
    losses = vmap(loss)  # member k's loss on its own output and batch, all members at once
    steps_per_epoch = max(1, math.ceil(len(x) / c.batch_size))
    total = steps_per_epoch * c.epochs
    step = 0
    for epoch in range(c.epochs):
        orders = torch.stack([torch.randperm(len(x), generator=g) for g in generators])
        loss_sum = torch.zeros(count, dtype=torch.float64)
        for start in range(0, len(x), c.batch_size):
            rows = orders[:, start:start + c.batch_size]  # (count, batch): each member's own
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            out = forward(params, buffers, x[rows])
            values = losses(out, *(t[rows] for t in targets))
            optimizer.zero_grad(set_to_none=True)
            values.sum().backward()  # each member's gradient is its own loss's
            if c.grad_clip > 0:
                _clip_each(list(params.values()), c.grad_clip)
            optimizer.step()
            loss_sum += values.detach().double()
            step += 1
        if history is not None:
            history.extend({"member": k, "epoch": epoch + 1,
                            "train_loss": float(loss_sum[k]) / steps_per_epoch}
                           for k in range(count))
    with torch.no_grad():
        for k, member in enumerate(members):
            for name, parameter in member.named_parameters():
                parameter.copy_(params[name][k])
    return [member.eval() for member in members]


@torch.no_grad()
def _clip_each(stacked: List[torch.Tensor], max_norm: float) -> None:
    """Scale each member's gradient (row k of every stacked parameter) down to a norm of
    at most ``max_norm``, as ``clip_grad_norm_`` would for that member alone."""
    count = stacked[0].shape[0]
    norm = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(p.grad.reshape(count, -1), dim=1) for p in stacked]), dim=0)
    factor = (max_norm / (norm + 1e-6)).clamp_(max=1.0)
    if bool((factor < 1.0).any()):  # most steps, once training has settled, none is
        for p in stacked:
            p.grad.mul_(factor.view(-1, *([1] * (p.grad.dim() - 1))))


def member_arrays(members: List[nn.Sequential], prefix: str) -> Dict[str, np.ndarray]:
    """The members' weights for a safetensors file: ``<prefix>member<k>.<parameter>``."""
    return {f"{prefix}member{k}.{name}": p.detach().numpy().copy()
            for k, m in enumerate(members) for name, p in m.state_dict().items()}


def load_members(arrays: Dict[str, np.ndarray], prefix: str, count: int, n_in: int,
                 hidden: Tuple[int, ...], n_out: int,
                 encoder: Optional[nn.Sequential] = None) -> List[nn.Module]:
    """The ``count`` members :func:`member_arrays` wrote, ready to predict (tuned members
    of ``encoder``'s shape where it is given)."""
    members = []
    n_mlp = n_in if encoder is None else mlp_inputs(encoder, n_in)
    for k in range(count):
        member = mlp(n_mlp, hidden, n_out) if encoder is None else \
            TunedMember(encoder, mlp(n_mlp, hidden, n_out))
        member.load_state_dict({name: torch.from_numpy(arrays[f"{prefix}member{k}.{name}"])
                                for name in member.state_dict()})
        members.append(member.eval())
    return members
