"""Stellar labels with calibrated uncertainties from an sVAE (:class:`LabelModel`)."""

from .classes import ClassHead, high_alpha
from .ensemble import LabelEnsemble, load_labels
from .head import LabelHead, LabelHeadConfig
from .model import DEFAULT_LABELS, LabelModel, label_columns

__all__ = ["LabelModel", "LabelEnsemble", "load_labels", "LabelHead", "LabelHeadConfig",
           "ClassHead", "high_alpha", "DEFAULT_LABELS", "label_columns"]
