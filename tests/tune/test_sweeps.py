"""e2i tune --from-wandb-sweep / --from-optuna-yaml: every listed W&B distribution converts and a
converted sweep runs 2 trials; Optuna-style YAMLs convert; unsupported keys are one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from e2i.cli import main
from e2i.errors import ConfigError
from e2i.store.synthetic import make_synthetic_store
from e2i.tune.space import load_space
from e2i.tune.sweeps import config_key, convert

SWEEP = {
    "program": "train.py",  # W&B runs a script; e2i trains itself (ignored)
    "method": "bayes",
    "metric": {"name": "val/mAP@10", "goal": "maximize"},
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": "1e-3", "max": 1.0e-2},  # "1e-3": YAML str
        "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
        "warmup_epochs": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.5},
        "num_layers": {"distribution": "int_uniform", "min": 1, "max": 2},
        "head": {"distribution": "categorical", "values": ["siglip", "mlp"]},
        "loss": {"values": ["sigmoid_infonce", "softmax_infonce"]},  # no distribution: categorical
        "batch_size": {"value": 64},
        "epochs": {"value": 2},
        "model": {"parameters": {"output_dim": {"value": 32}, "hidden_dim": {"values": [32, 64]}}},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    "run_cap": 2,
}


def _write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("e2i: error: ")
    return err


def test_every_wandb_distribution_converts_to_the_equivalent_e2i_entry(tmp_path, capsys):
    sweep = _write(tmp_path, "sweep.yaml", SWEEP)
    assert main(["tune", "--from-wandb-sweep", str(sweep), "--print-space"]) == 0
    printed = capsys.readouterr().out
    doc = yaml.safe_load(printed)
    assert doc["space"] == {
        "optim.lr": {"loguniform": [0.001, 0.01]},
        "optim.weight_decay": {"uniform": [0.0, 0.1]},
        "optim.warmup_epochs": {"quniform": [0.0, 1.0, 0.5]},
        "model.num_layers": {"int": [1, 2]},
        "model.type": {"choice": ["siglip", "mlp"]},
        "loss.type": {"choice": ["sigmoid_infonce", "softmax_infonce"]},
        "model.hidden_dim": {"choice": [32, 64]},
    }
    assert doc["base"]["optim"]["batch_size"] == 64 and doc["base"]["model"]["output_dim"] == 32
    assert doc["base"]["metric"] == "val/mAP@10"
    assert doc["scheduler"] == {"type": "asha", "max_t": 2, "grace_period": 1, "reduction_factor": 2}
    assert doc["search"] == {"sampler": "tpe", "num_samples": 2}
    # the printed text is a space file e2i loads as it is
    space_file = tmp_path / "printed.yaml"
    space_file.write_text(printed)
    space = load_space(space_file)
    assert {p.key: p.kind for p in space.params}["optim.lr"] == "loguniform"
    assert space.base_config.optim.batch_size == 64 and space.scheduler.rungs() == [1]


def test_other_wandb_forms_int_fields_log_uniform_grid_and_max_iter(tmp_path):
    doc = convert(_write(tmp_path, "g.yaml", {
        "method": "grid",
        "parameters": {
            "hidden_dim": {"distribution": "q_uniform", "min": 64, "max": 256, "q": 64},  # int field
            "dropout": {"values": [0.0, 0.1, 0.2]},
            "optim.batch_size": {"values": [32, 64]},
        },
        "early_terminate": {"type": "hyperband", "max_iter": 8, "s": 2},  # eta 3: bands at 8/3, 8/9
    }), "wandb")
    assert doc["space"]["model.hidden_dim"] == {"int": [64, 256], "step": 64}
    assert doc["search"] == {"sampler": "grid", "num_samples": 4 * 3 * 2}  # the grid's size
    # Optuna's GridSampler behind sampler: grid runs every combination exactly once
    from e2i.tune.optuna_search import make_sampler
    from e2i.tune.space import space_from_dict

    doc = {k: v for k, v in doc.items() if k != "name"}
    space = space_from_dict(doc, name="g", source="g.yaml")
    study = optuna.create_study(sampler=make_sampler(space))
    seen = []
    study.optimize(lambda t: seen.append(tuple(sorted(space.sample(t).items()))) or 0.0, n_trials=24)
    assert len(set(seen)) == 24
    assert {dict(p)["model.hidden_dim"] for p in seen} == {64, 128, 192, 256}
    doc["space"]["optim.lr"] = {"loguniform": [1e-4, 1e-2]}
    with pytest.raises(ConfigError, match="grid needs discrete parameters; space.optim.lr"):
        make_sampler(space_from_dict(doc, name="g", source="g.yaml"))
    assert doc["scheduler"] == {"type": "asha", "grace_period": 1, "reduction_factor": 3, "max_t": 8}
    doc = convert(_write(tmp_path, "l.yaml", {
        "method": "random", "metric": {"name": "loss"},  # W&B's default goal: minimize
        "parameters": {"temperature": {"distribution": "log_uniform", "min": math.log(0.03),
                                       "max": math.log(0.2)},
                       "output_dim": {"distribution": "log_uniform_values", "min": 32, "max": 256}},
    }), "wandb")
    low, high = doc["space"]["model.init_temperature"]["loguniform"]
    assert low == pytest.approx(0.03) and high == pytest.approx(0.2)
    assert doc["space"]["model.output_dim"] == {"int": [32, 256], "log": True}
    assert doc["base"]["metric"] == "val/loss" and doc["scheduler"]["type"] == "fifo"
    assert config_key("optim.grad_clip", "f", "w") == "optim.grad_clip"
    assert config_key("init_bias", "f", "w") == "model.init_bias"  # a field of exactly one section


def test_optuna_yaml_converts(tmp_path, capsys):
    path = _write(tmp_path, "head.yaml", {
        "study_name": "head_search", "direction": "maximize", "n_trials": 6,
        "sampler": {"type": "TPESampler", "seed": 3, "n_startup_trials": 2},
        "pruner": {"type": "SuccessiveHalvingPruner", "min_resource": 1, "reduction_factor": 2,
                   "min_early_stopping_rate": 1},
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
                   "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                   "hidden_dim": {"type": "int", "low": 128, "high": 512, "step": 128},
                   "head": {"type": "categorical", "choices": ["siglip", "clip"]}},
        "fixed": {"epochs": 6, "batch_size": 128},
    })
    out = tmp_path / "spaces" / "head.yaml"
    assert main(["tune", "--from-optuna-yaml", str(path), "--print-space", "--output", str(out)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(out.read_text())
    doc = yaml.safe_load(out.read_text())
    assert doc["space"] == {"optim.lr": {"loguniform": [1e-4, 1e-2]},
                            "model.dropout": {"quniform": [0.0, 0.3, 0.1]},
                            "optim.weight_decay": {"uniform": [0.0, 0.1]},
                            "model.hidden_dim": {"int": [128, 512], "step": 128},
                            "model.type": {"choice": ["siglip", "clip"]}}
    assert doc["search"] == {"sampler": "tpe", "seed": 3, "n_startup_trials": 2, "num_samples": 6}
    assert doc["scheduler"] == {"type": "asha", "grace_period": 2, "reduction_factor": 2, "max_t": 6}
    assert load_space(out).search.num_samples == 6


@pytest.mark.parametrize(("kind", "doc", "message"), [
    ("wandb", {**SWEEP, "controller": {"type": "local"}}, "controller: unsupported key"),
    ("wandb", {**SWEEP, "parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}},
     "parameters.lr.distribution: 'normal' is not supported"),
    ("wandb", {**SWEEP, "parameters": {"lr": {"distribution": "q_log_uniform_values", "min": 1, "max": 2}}},
     "parameters.lr.distribution: 'q_log_uniform_values' is not supported"),
    ("wandb", {**SWEEP, "parameters": {"lr": {"values": [0.1], "probabilities": [1.0]}}},
     "parameters.lr.probabilities: unsupported key"),
    ("wandb", {**SWEEP, "early_terminate": {"type": "hyperband", "min_iter": 1, "strict": True}},
     "early_terminate.strict: unsupported key"),
    ("wandb", {**SWEEP, "metric": {"name": "val/mAP@10", "goal": "maximize", "target": 0.9}},
     "metric.target: unsupported key"),
    ("wandb", {**SWEEP, "parameters": {"frobnicate": {"values": [1, 2]}}},
     "parameters.frobnicate: no e2i config key for 'frobnicate'"),
    ("wandb", {**SWEEP, "parameters": {"epochs": {"values": [1, 2]}}},
     "parameters.epochs: epochs cannot be searched"),
    ("wandb", {**SWEEP, "metric": {"name": "val/mAP@10"}},
     "metric: goal 'minimize' disagrees with val/mAP@10"),
    ("optuna", {"params": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}, "timeout": 600},
     "timeout: unsupported key"),
    ("optuna", {"params": {"lr": {"type": "loguniform", "low": 0.1, "high": 0.2}}},
     "params.lr.type: 'loguniform' is not one of float, int, categorical"),
    ("optuna", {"params": {"lr": {"type": "float", "low": 0.1, "high": 0.2}},
                "pruner": {"type": "MedianPruner"}},
     "pruner.type: 'MedianPruner' is not supported"),
])
def test_unsupported_keys_are_one_line_errors(tmp_path, capsys, kind, doc, message):
    path = _write(tmp_path, "bad.yaml", doc)
    flag = "--from-wandb-sweep" if kind == "wandb" else "--from-optuna-yaml"
    err = _one_line_error(capsys, ["tune", flag, str(path), "--print-space"])
    assert f"{path}: {message}" in err
    with pytest.raises(ConfigError, match="bad.yaml"):
        convert(path, kind)


def test_space_and_converter_flags_exclude_each_other(tmp_path, capsys):
    sweep = _write(tmp_path, "sweep.yaml", SWEEP)
    err = _one_line_error(capsys, ["tune", "tune_spaces/default.yaml", "--from-wandb-sweep", str(sweep)])
    assert "exactly one of" in err


@pytest.mark.slow
def test_converted_wandb_sweep_runs_two_trials(ray_local, tmp_path, capsys):
    store = make_synthetic_store(tmp_path / "store", n_items=120, seed=0)
    sweep = _write(tmp_path, "sweep.yaml", SWEEP)
    results = tmp_path / "results"
    argv = ["tune", "--from-wandb-sweep", str(sweep), "--output-dir", str(results),
            "--set", f"base.data.store={store}", "--no-report", "--max-concurrent-trials", "1"]
    assert main(argv) == 0
    converted = results / "converted" / "sweep.yaml"  # the space that ran, kept next to the results
    assert load_space(converted).scheduler.max_t == 2
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{results / 'sweep' / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    keys = {"optim.lr", "optim.weight_decay", "optim.warmup_epochs", "model.type", "loss.type",
            "model.hidden_dim"}
    for t in trials:
        assert keys <= set(t.params)
        assert 1e-3 <= t.params["optim.lr"] <= 1e-2 and t.params["optim.warmup_epochs"] in (0.0, 0.5, 1.0)
    assert (results / "sweep" / "best_config.yaml").is_file()
    assert "e2i tune sweep: " in capsys.readouterr().out
