"""A label head: features in, labels with calibrated uncertainties out.

An ensemble of small MLPs, each predicting per label a mean ``mu`` and a
scale ``sigma``, trained on the stars that have the label. The likelihood is a
Student t with ``nu`` degrees of freedom (``LabelHeadConfig.dof``), the
survey's own label error ``e`` added in quadrature to the scale, so the head
learns the spread the survey's errors do not explain. With ``v = sigma^2 +
e^2``, per label a star has (a missing label carries no weight)::

    NLL = (nu + 1)/2 ln(1 + (y - mu)^2 / (nu v)) + 1/2 ln v

(constants dropped), and as ``nu -> infinity`` (``dof=0``) the Gaussian
``1/2 [(y - mu)^2 / v + ln v]``. Survey labels have a few per cent of stars
far off any smooth relation (binaries, failed fits); a Gaussian lets them pull
the means and inflate every star's variance, the t's heavier tails let them go.
A member's variance is the t's, ``sigma^2 nu/(nu - 2)``.

A head may learn a class beside the labels (:mod:`xpsvae.labels.classes`:
high or low alpha): one more output per member, a logit, whose
cross-entropy over the stars of known class, divided by the number of
labels, joins the loss, so the class weighs as one label more. The members
share what they learn, and the classifier costs no training of its own. The
ensemble's probability is the members' mean. The ensemble's
prediction is the mixture's mean and variance (the members' variances
averaged, plus the spread of their means). How far that sigma is to be
trusted is fitted on the validation share, never on test stars
(:mod:`xpsvae.labels.calibration`): a factor on sigma that follows the star's
predicted labels, and the central 68% interval ``mu +- k sigma``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.errors import ModelFileError
from ..core.files import LABEL_HEAD_CONFIG as HEAD_CONFIG
from ..core.files import LABEL_HEAD_WEIGHTS as HEAD_WEIGHTS
from ..core.files import atomic_path, write_json
from ..model.network import hidden_layers, label_nll
from ..model.runtime import fused_optimizer, torch_threads
from .calibration import IntervalScale, SigmaScale, interval_scale


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

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if self.members < 1 or self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ValueError("need members >= 1, epochs >= 1, batch_size >= 2 and lr > 0; got "
                             f"{self.members}, {self.epochs}, {self.batch_size}, {self.lr}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no bound), got {self.grad_clip}")
        if not (self.dof == 0 or self.dof > 2):
            raise ValueError(f"dof must be above 2 (the Student t's variance exists) or 0 "
                             f"(Gaussian), got {self.dof}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


def _loss(out: torch.Tensor, y: torch.Tensor, var: torch.Tensor, has: torch.Tensor,
          dof: float = 0.0) -> torch.Tensor:
    """:func:`head_nll` of a member's output (means, then log squared scales)."""
    mean, log_var = out.chunk(2, dim=1)
    return head_nll(mean, log_var.clamp(-12, 6), y, var, has, dof)


def _loss_with_class(out: torch.Tensor, y: torch.Tensor, var: torch.Tensor, has: torch.Tensor,
                     truth: torch.Tensor, dof: float = 0.0) -> torch.Tensor:
    """:func:`_loss` of the label outputs, plus the last output's (a logit) cross-entropy
    averaged over the stars whose class is known (``truth`` 1 or 0; NaN: unknown) and
    divided by the number of labels (module docstring)."""
    known = torch.isfinite(truth)
    entropy = nn.functional.binary_cross_entropy_with_logits(
        out[:, -1], torch.nan_to_num(truth), reduction="none")
    n_labels = y.shape[1]
    return _loss(out[:, :-1], y, var, has, dof) + \
        (entropy * known).sum() / known.sum().clamp(min=1) / n_labels


def mlp(n_in: int, hidden: Tuple[int, ...], n_out: int) -> nn.Sequential:
    """A member: GELU hidden layers of widths ``hidden``, then a linear map to ``n_out``."""
    return nn.Sequential(*hidden_layers((n_in,) + hidden, "gelu"), nn.Linear(hidden[-1], n_out))


def train_members(config: LabelHeadConfig, count: int, n_out: int, loss: Callable,
                  x: torch.Tensor, *targets: torch.Tensor, history: Optional[list] = None
                  ) -> List[nn.Sequential]:
    """``count`` members of an ensemble, trained side by side: MLPs of ``config.hidden``
    from ``x`` to ``n_out`` numbers, each on ``loss(out, *targets)`` over its own batches
    (AdamW, cosine-decayed rate). Member k starts from seed ``config.seed + 7919 k`` and
    draws its batches from a generator of the same seed, as if trained alone.

    The members' weights are stacked and one batched forward pass (``torch.func.vmap``)
    serves all of them, and one batched loss: AdamW acts on each number alone, so this is
    the same training as one member after the other, in fewer, larger matrix products
    (docs/benchmarks.md). AdamW is the fused kernel where the build has it; each
    member's gradient norm is bounded by ``config.grad_clip`` on its own. ``history``
    gains each member's mean loss per epoch."""
    c = config
    members, generators = [], []
    for k in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed + 7919 * k)
            members.append(mlp(x.shape[1], c.hidden, n_out))
        generators.append(torch.Generator().manual_seed(c.seed + 7919 * k))
    params, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta")
    forward = vmap(lambda p, b, rows: functional_call(template, (p, b), (rows,)))
    optimizer = fused_optimizer(partial(torch.optim.AdamW, lr=c.lr, weight_decay=c.weight_decay),
                                list(params.values()))
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
                group["lr"] = c.lr * 0.5 * (1 + math.cos(math.pi * step / total))
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


def _class_probability(outputs: List[torch.Tensor]) -> np.ndarray:
    """(n,) float64: the members' mean probability of the class (their last output)."""
    return torch.stack([torch.sigmoid(o[:, -1]).double() for o in outputs]).mean(0).numpy()


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


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (1 where a column is constant), NaN ignored."""
    mean = np.nanmean(features, axis=0)
    std = np.nanstd(features, axis=0)
    std[~(std > 0)] = 1.0
    return mean, std


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(features - mean) / std``; a missing value (NaN side column) becomes the
    training mean."""
    x = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def head_nll(mean: torch.Tensor, log_var: torch.Tensor, y: torch.Tensor,
             y_var: torch.Tensor, has: torch.Tensor, dof: float = 0.0) -> torch.Tensor:
    """The head's loss (module docstring), averaged over the stars' labels that exist;
    ``log_var`` is ln sigma^2, ``dof`` the t's ``nu`` (0: Gaussian)."""
    return label_nll(mean, log_var, y, y_var, has, dof).sum() / has.sum().clamp(min=1)


@dataclass
class LabelHead:
    """An ensemble of MLPs from features to labels with calibrated variances.

    Everything is standardised inside: features and labels by their training
    mean and standard deviation, a missing feature (NaN side column) set to
    the mean.
    """

    config: LabelHeadConfig = field(default_factory=LabelHeadConfig)
    members: List[nn.Sequential] = field(default_factory=list)
    feature_mean: Optional[np.ndarray] = None
    feature_std: Optional[np.ndarray] = None
    label_mean: Optional[np.ndarray] = None
    label_std: Optional[np.ndarray] = None
    #: the factor on sigma, per star and label, fitted on the validation share
    calibration: Optional[SigmaScale] = None
    sigma_scale: Optional[np.ndarray] = None  # per label, that factor's median there
    #: k of the central 68% interval mu +- k sigma, per star and label (validation share;
    #: heads from before: None)
    interval: Optional[IntervalScale] = None
    interval_scale: Optional[np.ndarray] = None  # per label, k's median there
    class_prior: Optional[float] = None  # with a class output: the training share of the class
    history: List[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ fitting
    def fit(self, features: np.ndarray, y: np.ndarray, y_err: Optional[np.ndarray] = None,
            classes: Optional[np.ndarray] = None,
            validation: Optional[np.ndarray] = None) -> "LabelHead":
        """Fit on ``features`` (n, F) and labels ``y`` (n, L), NaN where a star lacks one,
        with the survey's errors ``y_err`` (n, L; None: taken as 0), and, given ``classes``
        (n,: 1, 0, or NaN where unknown), a class output beside them (module docstring).
        ``validation`` (n,) bool: the stars to hold out, on which the sigma scale and the
        interval are fitted (None: :meth:`validation` of all of them; with pseudo-labels,
        :mod:`xpsvae.labels.pseudo`, survey stars that nothing before it saw labelled)."""
        c = self.config
        y = np.asarray(y, dtype=np.float64)
        y_err = np.zeros_like(y) if y_err is None else np.nan_to_num(
            np.asarray(y_err, dtype=np.float64), nan=0.0)
        has = np.isfinite(y)
        if (has.sum(axis=0) < 10).any():
            raise ValueError(f"each label needs at least 10 stars that have it; got "
                             f"{has.sum(axis=0).tolist()}")
        self.feature_mean, self.feature_std = feature_statistics(features)
        self.label_mean = np.nanmean(y, axis=0)
        self.label_std = np.nanstd(y, axis=0)
        self.label_std[~(self.label_std > 0)] = 1.0
        x = self._standardised(features)
        ys = np.where(has, (y - self.label_mean) / self.label_std, 0.0)
        var = (y_err / self.label_std) ** 2
        val = self.validation(len(y)) if validation is None else \
            np.asarray(validation, dtype=bool)
        if val.shape != (len(y),):
            raise ValueError(f"validation must be {len(y)} bools, one per star; got shape "
                             f"{val.shape}")
        tensors = [torch.from_numpy(a.astype(np.float32)) for a in (x, ys, var)]
        targets = [t[~val] for t in tensors[1:]] + [torch.from_numpy(has[~val])]
        loss = partial(_loss, dof=c.dof)
        if classes is not None:
            classes = np.asarray(classes, dtype=np.float64)
            self.class_prior = float(np.nanmean(classes[~val]))
            targets.append(torch.from_numpy(classes[~val].astype(np.float32)))
            loss = partial(_loss_with_class, dof=c.dof)
        with torch_threads(c.threads, idle=True):
            self.members = train_members(c, c.members, 2 * y.shape[1] + (classes is not None),
                                         loss, tensors[0][~val], *targets,
                                         history=self.history)
            mean, sigma = self._mixture(self._outputs(tensors[0][val]))
        truth = (ys[val], np.sqrt(var[val]), has[val])
        self.calibration = SigmaScale.fit(mean, sigma, *truth)
        factor = self.calibration(mean, sigma)
        self.interval = IntervalScale.fit(mean, sigma * factor, *truth)
        self.sigma_scale = np.median(factor, axis=0)
        self.interval_scale = np.median(self.interval(mean), axis=0)
        return self

    def validation(self, n: int, surveyed: Optional[np.ndarray] = None,
                   count: Optional[int] = None) -> np.ndarray:
        """Which of the ``n`` stars given to :meth:`fit` it holds out (bool): ``count`` stars
        (default: the validation share of the pool) drawn from the seed among those
        ``surveyed`` (all, where None); all of them where they are fewer."""
        val = np.zeros(n, dtype=bool)
        pool = np.arange(n) if surveyed is None else np.flatnonzero(surveyed)
        c = self.config
        count = int(c.val_fraction * len(pool)) if count is None else count
        val[np.random.default_rng(c.seed).permutation(pool)[:count]] = True
        return val

    # ------------------------------------------------------------------ predicting
    def _standardised(self, features: np.ndarray) -> np.ndarray:
        return standardise(features, self.feature_mean, self.feature_std)

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Each member's outputs: per label a mean and a log variance, then the class logit
        where the head learnt one."""
        return [member(x) for member in self.members]

    def _mixture(self, outputs: List[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
        """The ensemble's mean and standard deviation, standardised label units."""
        means, variances = [], []
        for out in outputs:
            mean, log_var = out[:, :2 * len(self.label_mean)].chunk(2, dim=1)
            means.append(mean.double())
            variances.append(log_var.clamp(-12, 6).double().exp() * self._t_variance)
        means_t = torch.stack(means)
        var = torch.stack(variances).mean(0) + means_t.var(0, unbiased=False)
        return means_t.mean(0).numpy(), var.sqrt().numpy()

    @property
    def _t_variance(self) -> float:
        """A member's variance over its squared scale: nu/(nu - 2) for the t, 1 Gaussian."""
        nu = self.config.dof
        return nu / (nu - 2) if nu else 1.0

    def predict(self, features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(labels, sigma), each (n, L), in the labels' units; sigma is the head's own
        calibrated uncertainty (add the survey's error in quadrature to compare with it)."""
        labels, sigma, _ = self.predict_with_class(features, with_class=False)
        return labels, sigma

    def interval_factor(self, labels: np.ndarray) -> Optional[np.ndarray]:
        """(n, L): k of each star's central 68% interval ``labels +- k sigma``, from its
        predicted ``labels`` (n, L; the labels' units); None for a head from before it."""
        if self.interval is None:
            return None
        return self.interval((labels - self.label_mean) / self.label_std)

    def class_probability(self, features: np.ndarray) -> np.ndarray:
        """(n,) float64: the probability of the class a head learnt beside its labels."""
        if self.class_prior is None:
            raise RuntimeError("this head learnt no class: fit it with classes=")
        if not self.members:
            raise RuntimeError("the label head is not fitted: call fit() or load() first")
        x = torch.from_numpy(self._standardised(features))
        with torch_threads(self.config.threads):
            return _class_probability(self._outputs(x))

    def predict_with_class(self, features: np.ndarray, with_class: bool = True
                           ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """:meth:`predict` and :meth:`class_probability` from one pass of the ensemble
        (the probability None where the head learnt no class, or ``with_class`` is off)."""
        if not self.members:
            raise RuntimeError("the label head is not fitted: call fit() or load() first")
        x = torch.from_numpy(self._standardised(features))
        with torch_threads(self.config.threads):
            outputs = self._outputs(x)
            mean, sigma = self._mixture(outputs)
            p = None if self.class_prior is None or not with_class else \
                _class_probability(outputs)
        return (mean * self.label_std + self.label_mean,
                sigma * self.calibration(mean, sigma) * self.label_std, p)

    # ------------------------------------------------------------------ files
    def save(self, directory: str, meta: Optional[dict] = None,
             extra: Optional[Dict[str, np.ndarray]] = None) -> None:
        """``head.safetensors`` (weights and statistics, and the ``extra`` arrays) and
        ``head.json`` (config, ``meta``)."""
        os.makedirs(directory, exist_ok=True)
        arrays = {**member_arrays(self.members, ""), **self.calibration.arrays("sigma_scale"),
                  **(self.interval.arrays("interval_scale") if self.interval else {}),
                  **(extra or {})}
        for name in ("feature_mean", "feature_std", "label_mean", "label_std", "sigma_scale"):
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        with atomic_path(os.path.join(directory, HEAD_WEIGHTS)) as tmp:
            save_file(arrays, tmp)
        own = {} if self.class_prior is None else {"class_prior": self.class_prior}
        if self.interval_scale is not None:
            own["interval_scale"] = [float(k) for k in self.interval_scale]
        write_json(os.path.join(directory, HEAD_CONFIG),
                   {"format_version": 1, "config": asdict(self.config), **own, **(meta or {})})

    @classmethod
    def load(cls, directory: str) -> Tuple["LabelHead", dict, Dict[str, np.ndarray]]:
        """(head, the ``meta`` saved with it, every array of its file)."""
        config_path = os.path.join(directory, HEAD_CONFIG)
        weights_path = os.path.join(directory, HEAD_WEIGHTS)
        for path in (config_path, weights_path):
            if not os.path.exists(path):
                raise ModelFileError(f"{path}: missing; is {directory!r} a label model "
                                     "(xpsvae labels fit)?")
        with open(config_path) as f:
            meta = json.load(f)
        if meta.get("format_version") != 1:
            raise ModelFileError(f"{config_path}: label head format {meta.get('format_version')!r}"
                                 "; this xpsvae reads 1")
        try:
            arrays = load_file(weights_path)
        except Exception as exc:  # safetensors' own error type: a cut or garbled file
            raise ModelFileError(f"{weights_path}: not a readable safetensors file ({exc}); "
                                 "fit the label model again, or copy it whole") from None
        head = cls(config_from_json(meta.pop("config")),
                   class_prior=meta.pop("class_prior", None))
        for name in ("feature_mean", "feature_std", "label_mean", "label_std", "sigma_scale"):
            setattr(head, name, arrays[name])
        n = len(head.label_mean)
        if "interval_scale" in meta:
            head.interval_scale = interval_scale(meta.pop("interval_scale"), n, config_path)
        # heads from before the scale and k followed the star: one number per label
        head.calibration = SigmaScale.from_arrays(arrays, "sigma_scale", n, n + 1, weights_path) \
            if SigmaScale.stored(arrays, "sigma_scale") else \
            SigmaScale.constant(head.sigma_scale, n + 1)
        if head.interval_scale is not None:  # without the key, no interval
            head.interval = IntervalScale.from_arrays(
                arrays, "interval_scale", n, n, weights_path) \
                if IntervalScale.stored(arrays, "interval_scale") else \
                IntervalScale.constant(head.interval_scale, n)
        head.members = load_members(arrays, "", head.config.members, len(head.feature_mean),
                                    head.config.hidden,
                                    2 * len(head.label_mean) + (head.class_prior is not None))
        return head, meta, arrays


def config_from_json(config: dict) -> LabelHeadConfig:
    """The recipe a ``head.json`` holds, as it was meant when written: heads from before
    the t likelihood were Gaussian, and their classifier (``high_alpha_members``) was an
    ensemble of its own (:class:`~xpsvae.labels.classes.ClassHead` reads that)."""
    config = {"dof": 0.0, **config}
    config.pop("high_alpha_members", None)
    return LabelHeadConfig(**config)


def member_arrays(members: List[nn.Sequential], prefix: str) -> Dict[str, np.ndarray]:
    """The members' weights for a safetensors file: ``<prefix>member<k>.<parameter>``."""
    return {f"{prefix}member{k}.{name}": p.detach().numpy().copy()
            for k, m in enumerate(members) for name, p in m.state_dict().items()}


def load_members(arrays: Dict[str, np.ndarray], prefix: str, count: int, n_in: int,
                 hidden: Tuple[int, ...], n_out: int) -> List[nn.Sequential]:
    """The ``count`` members :func:`member_arrays` wrote, ready to predict."""
    members = []
    for k in range(count):
        member = mlp(n_in, hidden, n_out)
        member.load_state_dict({name: torch.from_numpy(arrays[f"{prefix}member{k}.{name}"])
                                for name in member.state_dict()})
        members.append(member.eval())
    return members
