"""One exception family for everything a user can get wrong.

The CLI prints ``e2i: error: <message>`` (one line, no traceback unless ``--debug``) and exits with
the error's ``exit_code``: 2 for an :class:`E2IError` (the user's input is wrong), 1 for a
:class:`StoreWriteError` and any other I/O failure (disk full, read-only, unreachable storage).
Messages name the file, row/id and field, e.g.
``configs/x.yaml: model.type: 'foo' is not one of siglip, clip, attention, mlp``.
"""


class E2IError(Exception):
    """A user-facing error: bad input, bad config, bad store. The message is the whole story."""

    exit_code = 2


class ConfigError(E2IError):
    """A config or search-space file failed validation."""


class StoreError(E2IError):
    """A store (parquet layout) is missing, malformed or inconsistent."""


class StoreWriteError(StoreError):
    """Writing a store failed on the storage side (disk full, read-only): an I/O error, exit 1."""

    exit_code = 1


class CorpusError(E2IError):
    """A corpus (metadata/CSV/JSON) cannot be read at all (per-row problems are rejected rows)."""


class CheckpointError(E2IError):
    """A checkpoint cannot be loaded safely."""
