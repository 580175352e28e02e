"""Exceptions layerpeel raises for bad input: the CLI prints them as one line and exits with 2."""

from __future__ import annotations


class LayerpeelError(ValueError):
    """Bad input that a user can fix: a config, a file, a corpus, a run folder."""


class ConfigError(LayerpeelError):
    """A configuration value that is impossible or unknown."""


class CheckpointError(LayerpeelError):
    """A checkpoint or run folder that is missing, truncated or does not match its config."""


class DataError(LayerpeelError):
    """A corpus, token file or monitoring set that cannot be used."""


class OutputError(LayerpeelError):
    """A file or folder to write that cannot be written: checked before any work starts."""
