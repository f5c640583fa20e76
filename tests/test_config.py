"""Typed train configs: field-path errors, overrides, and every shipped YAML loads."""

from pathlib import Path

import pytest

from e2i.config import (
    HEAD_TYPES,
    TrainConfig,
    load_train_config,
    resolve_config_paths,
    save_train_config,
    train_config_from_dict,
)
from e2i.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        train_config_from_dict(data, "configs/x.yaml")
    return str(info.value)


def test_unknown_head_lists_valid_names():
    assert _error({"model": {"type": "foo"}}) == (
        "configs/x.yaml: model.type: 'foo' is not one of siglip, clip, attention, mlp"
    )


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"optim": {"lr": 0}}, "configs/x.yaml: optim.lr: must be > 0"),
        ({"optim": {"batch_size": -4}}, "configs/x.yaml: optim.batch_size: must be > 0"),
        ({"optim": {"batch_size": "many"}}, "configs/x.yaml: optim.batch_size: expected int, got str"),
        ({"optim": {"lrr": 1e-3}}, "configs/x.yaml: optim.lrr: unknown key (valid keys: "),
        ({"modle": {}}, "configs/x.yaml: modle: unknown key"),
        ({"loss": {"type": "hinge"}}, "configs/x.yaml: loss.type: 'hinge' is not one of sigmoid_infonce"),
        (
            {"model": {"type": "attention", "hidden_dim": 30, "num_heads": 4}},
            "configs/x.yaml: model.num_heads: must divide hidden_dim",
        ),
        ({"model": {"dropout": 1.5}}, "configs/x.yaml: model.dropout: must be in [0, 1)"),
        ({"optim": {"precision": "fp8"}}, "configs/x.yaml: optim.precision: 'fp8' is not one of 32"),
        ({"metric": "train/loss"}, "configs/x.yaml: metric: must start with 'val/'"),
        ({"scaling": {"use_gpu": "yes"}}, "configs/x.yaml: scaling.use_gpu: expected bool"),
        ({"data": []}, "configs/x.yaml: data: expected a mapping"),
    ],
)
def test_errors_name_file_and_field(data, expected):
    message = _error(data)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("model:\n  type: clip\noptim:\n  lr: 1.0e-3\n")
    cfg = load_train_config(path, ["optim.lr=1e-4", "model.output_dim=64", "scaling.use_gpu=true"])
    assert cfg.name == "small"  # defaults to the file stem
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.output_dim == 64 and cfg.model.type == "clip"
    assert cfg.scaling.use_gpu is True
    with pytest.raises(ConfigError, match=r"small.yaml: model.type: 'foo' is not one of"):
        load_train_config(path, ["model.type=foo"])
    with pytest.raises(ConfigError, match="override must look like key.sub=value"):
        load_train_config(path, ["optim.lr"])


def test_round_trip_and_metric_mode(tmp_path):
    # load resolves local paths against the cwd; a saved, resolved config loads back unchanged
    cfg = resolve_config_paths(TrainConfig(name="rt").replace({"model.type": "mlp", "metric": "val/loss"}))
    assert cfg.output_dir == str(Path.cwd() / "results") and cfg.paths_as_written["output_dir"] == "results"
    save_train_config(cfg, tmp_path / "rt.yaml")
    again = load_train_config(tmp_path / "rt.yaml")
    assert again == cfg
    assert cfg.metric_mode == "min" and TrainConfig().metric_mode == "max"


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  type: [siglip\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid YAML \(line"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_train_config_loads(path):
    if path.name == "finetune.yaml":
        pytest.importorskip("e2i.finetune").load_finetune_config(path)
        return
    cfg = load_train_config(path)
    assert cfg.model.type in HEAD_TYPES
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", sorted((ROOT / "tune_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_tune_space_loads(path):
    from e2i.tune.space import load_space

    space = load_space(path)
    assert space.search.num_samples > 0 and space.scheduler.max_t > 0
