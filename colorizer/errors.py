"""Errors a user can cause: each renders as one readable line naming the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what to set instead."""


class TrainingDiverged(RuntimeError):
    """A loss or the weights became NaN or infinite; training stopped (exit status 1)."""
