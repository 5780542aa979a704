"""Stellar labels with calibrated uncertainties from an sVAE (:class:`LabelModel`)."""

from .head import LabelHead, LabelHeadConfig
from .model import DEFAULT_LABELS, LabelModel, label_columns

__all__ = ["LabelModel", "LabelHead", "LabelHeadConfig", "DEFAULT_LABELS", "label_columns"]
