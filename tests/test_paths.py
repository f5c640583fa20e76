"""e2i.paths and the CLI's path flags: local paths absolute against the cwd, URIs untouched."""

from __future__ import annotations

import argparse
import re

import pytest

from e2i import cli
from e2i.config import load_train_config, save_train_config
from e2i.paths import resolve_path, resolve_sqlite_url
from e2i.tune.space import load_space


@pytest.mark.parametrize("uri", ["s3://bucket/prefix", "hf://datasets/o/r", "gs://b/x", "file:///tmp/x"])
def test_uris_pass_through(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path(uri) == uri


def test_relative_paths_are_made_absolute_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("stores/toy") == f"{tmp_path}/stores/toy"
    assert resolve_path("./a/../b") == f"{tmp_path}/b"
    assert resolve_path("/abs/x") == "/abs/x"
    assert resolve_path("x", base_dir="/base") == "/base/x"
    assert resolve_sqlite_url("sqlite:///results/optuna.db") == f"sqlite:///{tmp_path}/results/optuna.db"
    assert resolve_sqlite_url("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    assert resolve_sqlite_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_train_config_keeps_the_written_path_and_repeats_from_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "c.yaml").write_text("data: {store: stores/x}\n")
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_train_config("c.yaml", ["output_dir=out"])
    assert cfg.data.store == f"{tmp_path}/a/stores/x" and cfg.output_dir == f"{tmp_path}/a/out"
    assert cfg.paths_as_written == {"data.store": "stores/x", "output_dir": "out"}
    save_train_config(cfg, tmp_path / "a" / "saved.yaml")
    monkeypatch.chdir(tmp_path / "b")  # the saved config means the same run from another directory
    again = load_train_config(tmp_path / "a" / "saved.yaml")
    assert again.data.store == cfg.data.store and again.output_dir == cfg.output_dir
    assert again.paths_as_written == cfg.paths_as_written
    moved = load_train_config(tmp_path / "a" / "saved.yaml", ["data.store=s3://b/p"])
    assert moved.data.store == "s3://b/p" and moved.paths_as_written["data.store"] == "s3://b/p"


def test_tune_space_storage_and_base_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        "base: {data: {store: stores/t}}\nspace: {optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
        "storage: {output_dir: res, storage_path: tune_here, optuna: 'sqlite:///db/o.db'}\n")
    space = load_space("s.yaml")
    assert space.base["data"]["store"] == f"{tmp_path}/stores/t"
    assert space.storage.output_dir == f"{tmp_path}/res"
    assert space.storage_path == f"{tmp_path}/tune_here"
    assert space.optuna_url == f"sqlite:///{tmp_path}/db/o.db"


def _path_like_dests() -> dict[str, set[str]]:
    """stage -> argparse dests of its flags whose name or help says it is a local path/dir/file."""
    found: dict[str, set[str]] = {}
    word = re.compile(r"(dir|path|root|metadata|store|checkpoint|weights|relevance|mirror)")
    for stage in cli.STAGES:
        parser = cli.build_parser(stage)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
        parsers = [sub] + [p for a in sub._actions if isinstance(a, argparse._SubParsersAction)
                           for p in a.choices.values()]
        for p in parsers:
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction) or action.nargs == 0 \
                        or action.type not in (None, str):
                    continue
                if word.search(action.dest) or action.dest in ("src", "out", "experiment"):
                    found.setdefault(stage, set()).add(action.dest)
    return found


def test_every_path_flag_of_every_stage_is_resolved():
    missing = {stage: sorted(d for d in dests if d not in cli.PATH_ARGS + cli.MODEL_ARGS)
               for stage, dests in _path_like_dests().items()}
    # 'storage' is an Optuna URL (sqlite URLs are resolved by e2i.tune.space), not a path;
    # 'relevance_from' names an item column (e.g. label).
    missing = {s: [d for d in ds if d not in ("storage", "relevance_from")] for s, ds in missing.items()}
    assert {s: ds for s, ds in missing.items() if ds} == {}
    args = cli.resolve_path_args(argparse.Namespace(metadata="data/toy", mirror="s3://b/p", out=["a", "s3://c"]))
    assert args.metadata.endswith("/data/toy") and args.metadata.startswith("/")
    assert args.mirror == "s3://b/p" and args.out[1] == "s3://c" and args.out[0].startswith("/")
