"""Errors that a user can fix: bad configuration values and bad input data."""


class ConfigError(ValueError):
    """A configuration value or input that the user must change.

    The message names the value and the fix, on one line; `main` prints it
    without a traceback and exits non-zero.
    """


class TrainingError(Exception):
    """Training cannot go on (e.g. non-finite gradients); saved checkpoints are intact."""
