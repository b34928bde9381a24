"""The project's own exception types: every user-facing failure is one of these."""


class AutoRecError(Exception):
    """Base class for errors a user can act on (bad config, bad data, diverged training)."""


class ConfigError(AutoRecError, ValueError):
    """An impossible or unknown configuration value; the message names the field."""


class DataError(AutoRecError):
    """A ratings file or archive that cannot be used as it is.

    Attributes:
      path: the file concerned, when there is one.
      line: 1-based line number in that file, when the problem sits on one line.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ChecksumError(DataError):
    """Bytes whose SHA-256 differs from the published one."""


class SourceUnavailableError(DataError):
    """Every source of a dataset failed; the message lists each source and why."""


class TrainingDivergedError(AutoRecError, FloatingPointError):
    """A non-finite loss or gradient appeared during training."""


class TrainingInterrupted(AutoRecError):
    """The run was asked to stop (Ctrl-C); its last epoch was saved when it had a folder."""


class CheckpointError(AutoRecError):
    """A checkpoint or run folder that cannot be used: missing, incomplete, corrupt, or from
    another configuration or other data. The message is one line naming the folder."""
