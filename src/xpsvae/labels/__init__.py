"""Stellar labels with calibrated uncertainties from an sVAE (:class:`LabelModel`)."""

from .classes import ClassHead, high_alpha
from .head import LabelHead, LabelHeadConfig
from .model import DEFAULT_LABELS, LabelModel, label_columns

__all__ = ["LabelModel", "LabelHead", "LabelHeadConfig", "ClassHead", "high_alpha",
           "DEFAULT_LABELS", "label_columns"]
