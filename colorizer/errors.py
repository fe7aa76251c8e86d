"""Errors a user can cause: each renders as one readable line naming the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what to set instead."""


class DataError(ValueError):
    """A data problem the user can fix; the message is one line saying what and how."""


def require_int(
    key: str, value: object, least: int = 1, error: type[ValueError] = ConfigError
) -> int:
    """``value`` when it is an integer (not a bool) of at least ``least``; otherwise ``error``
    with one line naming ``key``: ``data.batch_size=0 must be an integer >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise error(f"{key}={value!r} must be an integer >= {least}")
    return value


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); the file it was to
    replace is unchanged, and the message names both."""


class TrainingDiverged(RuntimeError):
    """A loss or the weights became NaN or infinite; training stopped (exit status 1)."""
