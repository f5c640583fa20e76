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
import re

# Local-path fields of a TrainConfig (dotted keys), resolved by e2i.config at load; the stores of a
# mixed train set (``data.train[i].store``) too, see :func:`train_path_keys`.
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


def key_parts(key: str) -> list[str | int]:
    """``'data.train[1].store' -> ['data', 'train', 1, 'store']``: ``[i]`` indexes a list of parts.

    ValueError for a malformed index (``train[x]``, ``train[1``)."""
    parts: list[str | int] = []
    for part in key.split("."):
        name, bracket, rest = part.partition("[")
        parts.append(name)
        if bracket:
            if not re.fullmatch(r"\d+(\]\[\d+)*\]", rest):
                raise ValueError(f"{part!r}: an index must look like name[0]")
            parts += [int(i) for i in rest[:-1].split("][")]
    return parts


def get_dotted(data: dict, key: str):
    """``get_dotted({'data': {'store': 'x'}}, 'data.store') -> 'x'`` (None when absent)."""
    node = data
    for part in key_parts(key):
        if isinstance(part, int):
            if not isinstance(node, list | tuple) or part >= len(node):
                return None
        elif not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(data: dict, key: str, value) -> None:
    """Set ``key`` in place: missing sections are created, ``[i]`` must name an existing list entry.

    ValueError for a malformed key or an index out of range, TypeError for a value in the way (one line)."""
    *parents, last = key_parts(key)
    node = data
    for part, nxt in zip(parents, [*parents[1:], last]):
        if isinstance(part, int):
            if part >= len(node):  # node is a list (checked one step up)
                raise ValueError(f"[{part}]: no such entry (the list has {len(node)} entries)")
            child = node[part]
        else:
            child = node.setdefault(part, {})
            if isinstance(child, tuple):  # a list of parts as TrainConfig.to_dict() gives it
                child = node[part] = list(child)
        if not isinstance(child, dict | list):
            raise TypeError(f"{part!r} is not a section")
        if isinstance(nxt, int) != isinstance(child, list):
            raise TypeError(f"{part!r} is a list; index it, e.g. [0]" if isinstance(child, list)
                             else f"{part!r} is not a list")
        node = child
    if isinstance(last, int) and not last < len(node):
        raise ValueError(f"[{last}]: no such entry (the list has {len(node)} entries)")
    node[last] = value


def train_path_keys(data: dict) -> tuple[str, ...]:
    """:data:`TRAIN_PATH_FIELDS` plus ``data.train[i].store`` for each part of a mixed train set."""
    parts = get_dotted(data, "data.train")
    count = len(parts) if isinstance(parts, list | tuple) else 0
    return TRAIN_PATH_FIELDS + tuple(f"data.train[{i}].store" for i in range(count))


def resolve_train_paths(data: dict, overridden: tuple[str, ...] = ()) -> dict:
    """Resolve :func:`train_path_keys` of a train-config dict in place, against the cwd.

    ``paths_as_written`` keeps each path as the user wrote it (what a saved ``config.yaml`` or
    ``best_config.yaml`` shows next to the resolved value); an entry already in the dict (a config
    saved by an earlier run) is kept unless the field was overridden now (``overridden``).
    """
    keys = train_path_keys(data)
    written = {k: v for k, v in (data.get("paths_as_written") or {}).items()
               if k in keys or not k.startswith("data.train[")}  # parts no longer listed are dropped
    for key in keys:
        value = get_dotted(data, key)
        if not isinstance(value, str) or not value:
            continue
        if key in overridden or key not in written:
            written[key] = value
        set_dotted(data, key, resolve_path(value))
    data["paths_as_written"] = written
    return data
