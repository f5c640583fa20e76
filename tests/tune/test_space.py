"""Search-space grammar: shipped spaces load, errors name the field path, conditional parameters
appear only under their condition, and the define-by-run function drives a real Optuna study."""

import functools
from pathlib import Path

import optuna
import pytest
import yaml

from e2i.config import HEAD_TYPES, LOSS_TYPES, TrainConfig
from e2i.errors import ConfigError
from e2i.tune.space import load_space, space_from_dict

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))
SRC = "tune_spaces/x.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@functools.cache
def _shipped(name: str):
    return load_space(ROOT / "tune_spaces" / f"{name}.yaml")


def _error(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        space_from_dict(doc, name="x", source=SRC)
    message = str(info.value)
    assert "\n" not in message
    return message


def _sample(space, n: int, sampler=None) -> list[dict]:
    """Draw n trials from an in-memory study through the space's define-by-run function."""
    study = optuna.create_study(direction="maximize", sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    out = []
    for i in range(n):
        trial = study.ask()
        params = space.sample(trial)
        assert params == trial.params  # everything returned was suggested (and nothing else)
        study.tell(trial, float(i % 7))
        out.append(params)
    return out


def test_shipped_spaces_exist():
    assert {p.stem for p in SPACES} >= {"default", "siglip", "clip", "attention", "mlp"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_samples_valid_configs(path):
    space = _shipped(path.stem)
    assert space.name == path.stem and space.params
    assert space.scheduler.max_t >= space.scheduler.grace_period
    for params in _sample(space, 30):
        cfg = space.trial_config(params)
        assert isinstance(cfg, TrainConfig)
        assert cfg.optim.epochs == space.scheduler.max_t  # a trial's length is the scheduler's max_t


def test_default_space_covers_all_heads_and_losses():
    space = _shipped("default")
    by_key = {p.key: p for p in space.params}
    assert set(by_key["model.type"].choices) == set(HEAD_TYPES)
    assert set(by_key["loss.type"].choices) == set(LOSS_TYPES)


@pytest.mark.parametrize("head", ["siglip", "clip", "attention", "mlp"])
def test_single_head_spaces_fix_their_head(head):
    space = _shipped(head)
    assert "model.type" not in {p.key for p in space.params}
    assert space.base["model"]["type"] == head


def test_conditional_params_only_under_their_condition():
    space = _shipped("default")
    draws = _sample(space, 300)
    for params in draws:
        attention = params["model.type"] == "attention"
        assert ("model.num_heads" in params) == attention
        assert ("model.num_tokens" in params) == attention
        assert ("model.num_layers" in params) == (params["model.type"] in ("mlp", "attention"))
        assert ("model.hidden_dim" in params) == (params["model.type"] != "siglip")
        assert ("loss.queue_size" in params) == (params["loss.type"] == "queue_infonce")
    # every branch was actually visited
    assert {p["model.type"] for p in draws} == set(HEAD_TYPES)
    assert sum("loss.queue_size" in p for p in draws) > 0


def test_tpe_handles_the_conditional_space():
    space = _shipped("default")
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True, group=True)
    for params in _sample(space, 25, sampler):
        space.trial_config(params)  # TPE's proposals are valid configs too


def test_distributions_quantisation_and_bounds():
    doc = {"space": {
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "optim.warmup_epochs": {"quniform": [0.0, 2.0, 0.5]},
        "model.dropout": {"uniform": [0.0, 0.3], "step": 0.1},
        "model.hidden_dim": {"int": [64, 256], "step": 64},
        "model.output_dim": {"int": [32, 512], "log": True},
        "seed": {"choice": [0, 1]},
    }}
    space = space_from_dict(doc, name="x", source=SRC)
    for p in _sample(space, 60):
        assert 1e-4 <= p["optim.lr"] <= 1e-2
        assert p["optim.warmup_epochs"] in (0.0, 0.5, 1.0, 1.5, 2.0)
        assert min(abs(p["model.dropout"] - v) for v in (0.0, 0.1, 0.2, 0.3)) < 1e-9
        assert p["model.hidden_dim"] in (64, 128, 192, 256)
        assert isinstance(p["model.output_dim"], int) and 32 <= p["model.output_dim"] <= 512
        cfg = space.trial_config(p)
        assert cfg.seed == p["seed"] and cfg.model.hidden_dim == p["model.hidden_dim"]


@pytest.mark.parametrize("doc, expected", [
    ({"space": {"optim.lr": {"loguniform": [0.1, 0.01]}}},
     f"{SRC}: space.optim.lr.loguniform: low > high (0.1 > 0.01)"),
    ({"space": {"optim.lrr": {"uniform": [0.1, 0.2]}}}, f"{SRC}: space.optim.lrr: unknown key (valid keys here: "),
    ({"space": {"model.type": {"choice": []}}}, f"{SRC}: space.model.type.choice: empty choice list"),
    ({"space": {"model.type": {"choice": ["siglip", "transformer"]}}},
     f"{SRC}: space.model.type.choice[1]: 'transformer' is not one of siglip, clip, attention, mlp"),
    ({"space": {"loss.type": {"choice": ["hinge"]}}},
     f"{SRC}: space.loss.type.choice[0]: 'hinge' is not one of sigmoid_infonce, softmax_infonce, queue_infonce"),
    ({"space": {"model.type": {"choice": ["attention"]}, "model.hidden_dim": {"choice": [64, 96]},
                "model.num_heads": {"choice": [4, 5]}}},
     (f"{SRC}: space: sampled config (model.type=attention, model.hidden_dim=64, model.num_heads=5) is "
      "invalid: model.num_heads: must divide hidden_dim (5 does not divide 64)")),
    ({"space": {"model.hidden_dim": {"uniform": [64, 128]}}},
     f"{SRC}: space.model.hidden_dim.uniform: model.hidden_dim is an int field: use int: [low, high]"),
    ({"space": {"optim.lr": {"loguniform": [0.0, 0.1]}}}, f"{SRC}: space.optim.lr.loguniform: log scale needs low > 0"),
    ({"space": {"optim.lr": {"loguniform": [1e-4, 0.1], "step": 1e-3}}},
     f"{SRC}: space.optim.lr.step: cannot quantise a log-scale range"),
    ({"space": {"model.dropout": {"quniform": [0.0, 0.3]}}},
     f"{SRC}: space.model.dropout.quniform: expected [low, high, q]"),
    ({"space": {"model.dropout": {"uniform": [0.0, 0.3], "stepp": 0.1}}}, f"{SRC}: space.model.dropout.stepp: unknown key"),
    ({"space": {"model.dropout": {"uniform": [0.0, 0.3], "choice": [0.1]}}},
     f"{SRC}: space.model.dropout: needs exactly one of"),
    ({"space": {"model.dropout": 0.1}}, f"{SRC}: space.model.dropout: expected a mapping like"),
    ({"space": {"optim.epochs": {"int": [2, 8]}}}, f"{SRC}: space.optim.epochs: cannot be searched (trial length"),
    ({"space": {"data.train_subset": {"int": [2, 8]}}}, f"{SRC}: space.data.train_subset: cannot be searched"),
    ({"space": {"model": {"choice": [1]}}}, f"{SRC}: space.model: not a train-config field (a section"),
    ({"space": {"model.dropout": {"choice": [0.1]}, "conditional": [{"when": {"model.type": "attention"}}]}},
     f"{SRC}: space.conditional[0].when.model.type: conditions must name a choice parameter searched"),
    ({"space": {"model.type": {"choice": ["mlp"]},
                "conditional": [{"when": {"model.type": "attention"}, "model.num_heads": {"choice": [2]}}]}},
     f"{SRC}: space.conditional[0].when.model.type: 'attention' is not one of the choices of model.type (mlp)"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}, "conditional": [{"when": {"optim.lr": 0.1}}]}},
     f"{SRC}: space.conditional[0].when.optim.lr: optim.lr is a uniform range; conditions need a choice"),
    ({"space": {"model.type": {"choice": ["mlp", "clip"]}, "conditional": [
        {"when": {"model.type": "mlp"}, "model.num_layers": {"int": [1, 2]}},
        {"when": {"model.type": ["mlp", "clip"]}, "model.num_layers": {"int": [1, 3]}}]}},
     f"{SRC}: space.conditional[1]: model.num_layers is also searched in conditional[0] and both blocks"),
    ({"space": {"model.type": {"choice": ["mlp"]}, "conditional": [{"model.num_layers": {"int": [1, 2]}}]}},
     f"{SRC}: space.conditional[0]: each conditional block needs `when:"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "scheduler": {"max_t": 3, "grace_period": 5}},
     f"{SRC}: scheduler.grace_period: must be in [1, max_t=3], got 5"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "scheduler": {"type": "pbt"}},
     f"{SRC}: scheduler.type: 'pbt' is not one of asha, fifo"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "search": {"sampler": "cmaes"}},
     f"{SRC}: search.sampler: 'cmaes' is not one of tpe, random"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "search": {"resources_per_trial": {"gpu": -1}}},
     f"{SRC}: search.resources_per_trial.gpu: must be >= 0"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "serch": {}}, f"{SRC}: serch: unknown key (valid keys: "),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "base": {"model": {"type": "x"}}},
     f"{SRC}: base: model.type: 'x' is not one of siglip, clip, attention, mlp"),
    ({"space": {}}, f"{SRC}: space: missing or empty"),
])
def test_grammar_errors_name_the_field_path(doc, expected):
    message = _error(doc)
    assert message.startswith(expected), message


def test_base_config_file_data_section_and_overrides(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "head.yaml").write_text(yaml.safe_dump(
        {"model": {"type": "clip", "hidden_dim": 128}, "data": {"store": "stores/a"}, "optim": {"lr": 1e-3}}))
    spaces = tmp_path / "tune_spaces"
    spaces.mkdir()
    path = spaces / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "base_config": "configs/head.yaml",  # found relative to the space file's parent dir
        "base": {"model": {"dropout": 0.0}},
        "data": {"train_split": "train_subset"},
        "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
        "scheduler": {"max_t": 6, "grace_period": 1},
    }))
    space = load_space(path, {"base.data.store": "stores/b", "search.num_samples": 3})
    cfg = space.base_config
    assert (cfg.model.type, cfg.model.hidden_dim, cfg.model.dropout) == ("clip", 128, 0.0)
    # local paths are resolved against the cwd at load (Tune trials run elsewhere), as written kept
    assert (cfg.data.store, cfg.data.train_split) == (str(Path.cwd() / "stores" / "b"), "train_subset")
    assert cfg.paths_as_written["data.store"] == "stores/b"
    assert space.search.num_samples == 3 and space.name == "mine" and cfg.name == "mine"
    assert space.optuna_url.startswith("sqlite:///") and space.optuna_url.endswith("results/mine/optuna.db")
    trial = space.trial_config({"optim.lr": 5e-4, "optuna_trial": 7}, name="t7")
    assert trial.optim.lr == 5e-4 and trial.optim.epochs == 6 and trial.name == "t7"
    path.write_text(yaml.safe_dump({"base_config": "configs/missing.yaml", "space": {"seed": {"choice": [1]}}}))
    with pytest.raises(ConfigError, match=r"mine.yaml: base_config: no such file"):
        load_space(path)


def test_asha_rungs():
    space = space_from_dict({"space": {"seed": {"choice": [0, 1]}},
                             "scheduler": {"max_t": 12, "grace_period": 2, "reduction_factor": 2}},
                            name="x", source=SRC)
    assert space.scheduler.rungs() == [2, 4, 8]
