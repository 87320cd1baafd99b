"""Expected failures, with messages meant for a person. The CLI prints them as one line and exits 2."""


class StillwatchError(Exception):
    """Base class for every expected failure."""


class UnknownTaskError(StillwatchError):
    """A task name that the registry does not know."""


class ModelDirError(StillwatchError):
    """A model directory that is missing, incomplete or corrupt."""


class ConfigError(StillwatchError):
    """An impossible size, a bad flag value or a contradictory setting."""


class TeacherError(StillwatchError):
    """A teacher backend refused or failed a request."""


class TokenizerMismatchError(StillwatchError):
    """Teacher and student do not share a tokenizer."""
