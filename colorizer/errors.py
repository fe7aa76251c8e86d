"""Errors a user can cause: each renders as one readable line naming the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what to set instead."""
