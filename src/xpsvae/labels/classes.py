"""High and low [alpha/M]: the probability that a star lies on the high-alpha sequence.

The APOGEE disc has two sequences in [alpha/M] against [Fe/H]. A star is
high-alpha above the line through the gap between them::

    [alpha/M] = clip(0.10 - 0.10 [Fe/H], 0.06, 0.22)        (high_alpha)

Thresholding predicted labels at that line classes stars poorly: a
regression pulls [alpha/M] towards the mean, so high-alpha stars fall below
the line. A classifier learns the boundary itself. :class:`ClassHead` is an
ensemble of MLPs on the label model's features, trained on the cross-entropy
of the survey's classes; its output is the probability of the class among
stars like the training stars. A star is called high-alpha when that
probability exceeds the training stars' share of the class (``prior``): the
rule that weighs the two kinds of error by the classes' sizes, so the recall
of each class counts alike (balanced accuracy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..model.runtime import torch_threads
from .head import LabelHead, LabelHeadConfig, config_from_json, feature_statistics, standardise
from .members import load_members, member_arrays, train_members

#: The column of a label model's prediction that holds the probability.
HIGH_ALPHA_COLUMN = "high_alpha_prob"
#: Stars of each class a classifier needs (a label model leaves it out, and says so, with
#: fewer).
MIN_CLASS_STARS = 10
#: The boundary, as the docs and metrics state it.
HIGH_ALPHA_BOUNDARY = "[alpha/M] = clip(0.10 - 0.10 [Fe/H], 0.06, 0.22)"


def high_alpha(fe_h: np.ndarray, alpha_m: np.ndarray) -> np.ndarray:
    """Whether a star lies above the line between the high- and low-alpha sequences."""
    line = np.clip(0.10 - 0.10 * np.asarray(fe_h, dtype=np.float64), 0.06, 0.22)
    return np.asarray(alpha_m, dtype=np.float64) > line


def _loss(out: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out[:, 0], truth)


@dataclass
class ClassHead:
    """An ensemble of MLP classifiers: features in, the probability of a class out.

    ``config.members`` members, each of ``config``'s recipe (hidden widths,
    epochs, rate) from its own seed; the probability is the members' mean.
    """

    config: LabelHeadConfig = field(default_factory=LabelHeadConfig)
    members: List[nn.Sequential] = field(default_factory=list)
    feature_mean: Optional[np.ndarray] = None
    feature_std: Optional[np.ndarray] = None
    prior: float = float("nan")  # the training stars' share of the class
    history: List[dict] = field(default_factory=list)

    def fit(self, features: np.ndarray, truth: np.ndarray) -> "ClassHead":
        """Fit on ``features`` (n, F) and the class of each star, ``truth`` (n,) bool."""
        truth = np.asarray(truth, dtype=bool)
        if min(truth.sum(), (~truth).sum()) < MIN_CLASS_STARS:
            raise ValueError(f"a classifier needs at least {MIN_CLASS_STARS} stars of each "
                             f"class; got "
                             f"{int(truth.sum())} in it and {int((~truth).sum())} not")
        self.prior = float(truth.mean())
        self.feature_mean, self.feature_std = feature_statistics(features)
        x = torch.from_numpy(standardise(features, self.feature_mean, self.feature_std))
        t = torch.from_numpy(truth.astype(np.float32))
        with torch_threads(self.config.threads, idle=True):
            self.members = train_members(self.config, self.config.members, 1, _loss, x, t,
                                         history=self.history)
        return self

    @torch.no_grad()
    def probability(self, features: np.ndarray) -> np.ndarray:
        """(n,) float64: the probability that each star is of the class."""
        if not self.members:
            raise RuntimeError("the classifier is not fitted: call fit() first")
        x = torch.from_numpy(standardise(features, self.feature_mean, self.feature_std))
        with torch_threads(self.config.threads):
            p = torch.stack([torch.sigmoid(m(x)[:, 0]).double() for m in self.members])
        return p.mean(0).numpy()

    def classify(self, features: np.ndarray) -> np.ndarray:
        """(n,) bool: the probability beyond the training share of the class (module
        docstring)."""
        return self.probability(features) > self.prior

    # ------------------------------------------------------------------ files
    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        """The weights and statistics, each name prefixed, for a safetensors file."""
        out = member_arrays(self.members, prefix)
        out[f"{prefix}feature_mean"] = np.asarray(self.feature_mean, dtype=np.float64)
        out[f"{prefix}feature_std"] = np.asarray(self.feature_std, dtype=np.float64)
        return out

    def meta(self) -> dict:
        """What ``head.json`` keeps of it: the recipe and the prior."""
        return {"config": asdict(self.config), "prior": self.prior,
                "boundary": HIGH_ALPHA_BOUNDARY}

    @classmethod
    def from_arrays(cls, meta: dict, arrays: Dict[str, np.ndarray], prefix: str
                    ) -> "ClassHead":
        """The classifier :meth:`arrays` and :meth:`meta` describe."""
        config = dict(meta["config"])
        if "high_alpha_members" in config:  # kept beside a label head: its count was this
            config["members"] = max(1, config["high_alpha_members"])
        head = cls(config_from_json(config), prior=float(meta["prior"]))
        head.feature_mean = arrays[f"{prefix}feature_mean"]
        head.feature_std = arrays[f"{prefix}feature_std"]
        head.members = load_members(arrays, prefix, head.config.members,
                                    len(head.feature_mean), head.config.hidden, 1)
        return head


class HeadClass:
    """The class a :class:`~xpsvae.labels.head.LabelHead` learnt beside its labels, read
    as a :class:`ClassHead` is: ``prior``, ``probability`` and ``classify``."""

    def __init__(self, head: LabelHead):
        if head.class_prior is None:
            raise ValueError("the label head learnt no class (fit it with classes=)")
        self.head = head

    @property
    def prior(self) -> float:
        return float(self.head.class_prior)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(n,) float64: the probability that each star is of the class."""
        return self.head.class_probability(features)

    def classify(self, features: np.ndarray) -> np.ndarray:
        """(n,) bool: as :meth:`ClassHead.classify`."""
        return self.probability(features) > self.prior
