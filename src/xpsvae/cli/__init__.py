"""The ``xpsvae`` command: :mod:`.app` (its commands) and :mod:`.describe` (``xpsvae info``)."""

from .app import main

__all__ = ["main"]
