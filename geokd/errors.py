"""Exception types shared across geokd.

Every public function validates its inputs and raises ``ValueError`` (or a subclass)
with a message that names what was expected and what was given. The subclasses below
let callers tell apart the few failures they may want to handle.
"""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, hostile or does not fit the model."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be fetched."""


class DataIntegrityError(ValueError):
    """Data on disk does not match its recorded hash: refuse rather than use it."""


class ConfigError(ValueError):
    """A configuration is invalid: unknown key, wrong type or impossible value."""


class DirectoryLockedError(RuntimeError):
    """Another live process is writing this directory (its message names the holder)."""


class RunLockedError(DirectoryLockedError):
    """Another live process is writing this run directory."""
