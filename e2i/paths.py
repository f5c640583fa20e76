"""User paths are resolved once, on the driver, before anything is handed to Ray.

Ray Train starts every worker with its working directory in Ray's session artifacts
(``<ray temp>/session_*/artifacts/ray_train_run-*``) and Tune starts each trial in its trial
directory, so a relative path such as ``stores/toy`` means something else inside a worker. Every
local path a user gives (config fields, command-line flags) is therefore made absolute relative to
the caller's working directory at load; URIs (``s3://``, ``hf://``, ``gs://``, ``file://`` ...) pass
through untouched. Inside ``ray job submit --working-dir .`` the driver's working directory is the
uploaded copy of the repo, so relative paths resolve there. No ray import here.
"""

from __future__ import annotations

import os

# Local-path fields of a TrainConfig (dotted keys), resolved by e2i.config at load.
TRAIN_PATH_FIELDS = ("data.store", "output_dir")


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (object storage, hub, file URIs): never resolved against the cwd."""
    return "://" in str(path)


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> str:
    """An absolute local path (``~`` expanded, relative to ``base_dir`` or the cwd); URIs unchanged.

    ``os.path.abspath`` (not ``Path.resolve``): symlinks stay as the user wrote them."""
    text = os.fspath(path)
    if not text or is_uri(text):
        return text
    text = os.path.expanduser(text)
    if not os.path.isabs(text):
        text = os.path.join(os.fspath(base_dir) if base_dir is not None else os.getcwd(), text)
    return os.path.abspath(text)


def resolve_sqlite_url(url: str, base_dir: str | os.PathLike | None = None) -> str:
    """``sqlite:///rel/optuna.db`` (relative in SQLAlchemy) -> ``sqlite:////abs/rel/optuna.db``;
    other URLs (absolute sqlite, postgresql://, in-memory) unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix or ":memory:" in url:
        return url
    return prefix + resolve_path(url[len(prefix):], base_dir)


def get_dotted(data: dict, key: str):
    """``get_dotted({'data': {'store': 'x'}}, 'data.store') -> 'x'`` (None when absent)."""
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def resolve_train_paths(data: dict, overridden: tuple[str, ...] = ()) -> dict:
    """Resolve :data:`TRAIN_PATH_FIELDS` of a train-config dict in place, against the cwd.

    ``paths_as_written`` keeps each path as the user wrote it (what a saved ``config.yaml`` or
    ``best_config.yaml`` shows next to the resolved value); an entry already in the dict (a config
    saved by an earlier run) is kept unless the field was overridden now (``overridden``).
    """
    written = dict(data.get("paths_as_written") or {})
    for key in TRAIN_PATH_FIELDS:
        value = get_dotted(data, key)
        if not isinstance(value, str) or not value:
            continue
        if key in overridden or key not in written:
            written[key] = value
        set_dotted(data, key, resolve_path(value))
    data["paths_as_written"] = written
    return data
