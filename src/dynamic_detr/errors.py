"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config): the message names the culprit and the problem."""


class DatasetError(UserError):
    """A dataset file or record is unusable. Messages name the file and, where known, image / annotation id."""


class ConfigError(UserError):
    """A config file, preset name or override is invalid."""


class CheckpointError(UserError):
    """A checkpoint or weights file is missing, truncated, foreign or unsafe to load."""
