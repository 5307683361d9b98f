"""Errors caused by the user's input rather than by a bug.

The command line turns each into a one-line message and exit status 2; the message names
the file and line or the config key, and says what to do.
"""


class UserInputError(ValueError):
    """Base class: bad input the user can fix."""


class ConfigError(UserInputError):
    """A config file or override is invalid."""


class DataError(UserInputError):
    """A data file is missing or malformed."""


class RunDirError(UserInputError):
    """The model_dir cannot be used for this run."""
