"""One exception family for everything a user can get wrong.

The CLI prints ``e2i: error: <message>`` (one line, no traceback unless ``--debug``) and exits 2
for any :class:`E2IError`. Messages name the file, row/id and field, e.g.
``configs/x.yaml: model.type: 'foo' is not one of siglip, clip, attention, mlp``.
"""


class E2IError(Exception):
    """A user-facing error: bad input, bad config, bad store. The message is the whole story."""


class ConfigError(E2IError):
    """A config or search-space file failed validation."""


class StoreError(E2IError):
    """A store (parquet layout) is missing, malformed or inconsistent."""


class CorpusError(E2IError):
    """A corpus (metadata/CSV/JSON) cannot be read at all (per-row problems are rejected rows)."""


class CheckpointError(E2IError):
    """A checkpoint cannot be loaded safely."""
