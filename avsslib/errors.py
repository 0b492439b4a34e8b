"""One error family for everything avsslib refuses to do.

Every message says what was wrong (the file, line, field or parameter) and what to do about it.
The CLI prints the message without a traceback (``--debug`` shows it) and exits with status 2.
"""

from __future__ import annotations


class AvssError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""


class DataError(AvssError):
    """A dataset file is missing, unreadable or malformed, or a dataset name is unknown."""


class ModelError(AvssError):
    """A model cannot be found, loaded or understood (e.g. an unsupported architecture)."""


class ConfigError(AvssError):
    """An impossible parameter value (fraction outside (0, 1), n <= 0, eps <= 0, ...)."""
