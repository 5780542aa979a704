"""Every error type xpsvae raises on purpose, in one place.

Each message names the file (and, where there is one, the row and column)
and what would work instead.
"""


class SpectraError(ValueError):
    """Input spectra that cannot be used: the message names the file, row and column."""


class XPParseError(SpectraError):
    """A value in an XP file that cannot be parsed."""


class ModelFileError(ValueError):
    """A model directory that cannot be loaded: the message says which file and what is wrong."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint was kept."""


class LaneError(RuntimeError):
    """Work run in a second process ended without a result, or raised an error that could
    not be brought back as it was."""
