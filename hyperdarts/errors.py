"""Errors a user can fix. The CLI prints their message alone (no stack trace) and exits with 2."""


class HyperDARTSError(Exception):
    """Base of every error whose message names what is wrong and how to fix it."""


class ConfigError(HyperDARTSError, ValueError):
    """A config value (or argument) that cannot work."""
