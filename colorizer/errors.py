"""Errors a user can cause: each renders as one readable line naming the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what to set instead."""


class DataError(ValueError):
    """A data problem the user can fix; the message is one line saying what and how."""


class TrainingDiverged(RuntimeError):
    """A loss or the weights became NaN or infinite; training stopped (exit status 1)."""
