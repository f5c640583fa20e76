"""`e2i report`: leaderboard order and columns, Tune result files, plots (incl. too few trials)."""

import csv
import json

import matplotlib.image
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from servers import get_json, optuna_dashboard

from e2i.cli import main
from e2i.errors import E2IError
from e2i.tune.report import make_report, param_importances, ranked, read_tune_results, trial_rows

PLOTS = ("optimization_history.png", "param_importances.png", "parallel_coordinates.png",
         "asha_learning_curves.png")
DISTS = {"model.type": CategoricalDistribution(["siglip", "mlp"]), "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
         "model.num_layers": IntDistribution(1, 3)}


def _trial(state, curve, head="mlp", lr=1e-3, layers=2):
    params = {"model.type": head, "optim.lr": lr} | ({"model.num_layers": layers} if head == "mlp" else {})
    value = max(curve.values()) if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, params=params, distributions={k: DISTS[k] for k in params},
                        intermediate_values=curve, user_attrs={"stopped_by": "asha"} if state == TrialState.PRUNED else {})


def _experiment(tmp_path, trials, *, tune_rows=True):
    """An experiment dir as e2i tune writes it: experiment.json, optuna.db, Tune trial dirs."""
    exp = tmp_path / "results" / "toy"
    exp.mkdir(parents=True)
    url = f"sqlite:///{exp / 'optuna.db'}"
    study = optuna.create_study(study_name="toy", storage=url, direction="maximize")
    for t in trials:
        study.add_trial(t)
    tune_dir = exp / "tune" / "toy"
    if tune_rows:
        for t in study.trials:
            trial_dir = tune_dir / f"trial_main_{t.number:04x}_{t.number}"
            trial_dir.mkdir(parents=True)
            rows = [{"epoch": e, "val/mAP@10": v - 0.01, "training_iteration": e,
                     "config": {**t.params, "optuna_trial": t.number}} for e, v in t.intermediate_values.items()]
            (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"space": "toy", "study_name": "toy", "optuna_storage": url, "tune_experiment": str(tune_dir),
            "metric": "val/mAP@10", "mode": "max", "rungs": [1, 2], "params": list(DISTS),
            "base": {"model": {"type": "siglip"}, "loss": {"type": "sigmoid_infonce"}}}
    (exp / "experiment.json").write_text(json.dumps(info))
    return exp, study


def test_leaderboard_ranks_complete_then_pruned_and_plots(tmp_path, capsys):
    trials = [
        _trial(TrialState.COMPLETE, {1: 0.30, 2: 0.40, 3: 0.45}, lr=1e-3),
        _trial(TrialState.PRUNED, {1: 0.10}, lr=5e-3),
        _trial(TrialState.COMPLETE, {1: 0.35, 2: 0.50, 3: 0.55}, head="siglip", lr=2e-3),
        _trial(TrialState.PRUNED, {1: 0.20, 2: 0.25}, lr=3e-4, layers=3),
        _trial(TrialState.FAIL, {}, lr=1e-4),
        _trial(TrialState.COMPLETE, {1: 0.2, 2: 0.3, 3: 0.31}, lr=9e-3, layers=1),
    ]
    exp, study = _experiment(tmp_path, trials)
    out = make_report(exp)
    printed = capsys.readouterr().out
    assert "toy: 6 trials" in printed and "leaderboard, 5 plots and report.html" in printed
    with open(out["leaderboard"]) as f:
        rows = list(csv.DictReader(f))
    # complete by value, then pruned by epochs reached (then value), failed last
    assert [int(r["trial"]) for r in rows] == [2, 0, 5, 3, 1, 4]
    assert [r["stopped by ASHA"] for r in rows] == ["no", "no", "no", "yes", "yes", "no"]
    assert rows[0]["head"] == "siglip" and rows[0]["loss"] == "sigmoid_infonce"  # loss from the base config
    assert rows[0]["val/mAP@10"] == "0.5500" and rows[3]["epochs"] == "2" and rows[4]["epochs"] == "1"
    assert "lr=0.002" in rows[0]["params"] and "num_layers=3" in rows[3]["params"]
    assert "siglip" in (exp / "report" / "leaderboard.txt").read_text()
    for name in PLOTS:
        image = matplotlib.image.imread(exp / "report" / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    importances, reason = param_importances(study)
    assert {"model.type", "optim.lr"} <= set(importances) <= set(DISTS) and not reason
    assert abs(sum(importances.values()) - 1) < 1e-6


def test_optuna_dashboard_serves_the_experiment_study(tmp_path):
    """`optuna-dashboard sqlite:///<experiment>/optuna.db` as a user starts it: the study, every trial with
    its state, value and per-epoch curve as the study holds them, and as best trial the one `e2i report`
    ranks first."""
    trials = [
        _trial(TrialState.COMPLETE, {1: 0.30, 2: 0.40, 3: 0.45}, lr=1e-3),
        _trial(TrialState.PRUNED, {1: 0.10}, lr=5e-3),
        _trial(TrialState.COMPLETE, {1: 0.35, 2: 0.50, 3: 0.55}, head="siglip", lr=2e-3),
        _trial(TrialState.FAIL, {}, lr=1e-4),
    ]
    exp, study = _experiment(tmp_path, trials)
    leader = ranked(trial_rows(study, read_tune_results(str(exp / "tune" / "toy"))), "max")[0].number
    with optuna_dashboard(f"sqlite:///{exp / 'optuna.db'}") as url:
        studies = get_json(f"{url}/api/studies")["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("toy", ["maximize"])], studies
        detail = get_json(f"{url}/api/studies/{studies[0]['study_id']}")
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in study.trials] == [0, 1, 2, 3]
    for t in study.trials:
        got = served[t.number]
        assert got["state"] == t.state.name.capitalize(), got
        assert got.get("values") == ([t.value] if t.state == TrialState.COMPLETE else None), got
        assert {v["step"]: v["value"] for v in got["intermediate_values"]} == t.intermediate_values, got
        assert {p["name"]: p["param_external_value"] for p in got["params"]} == {k: str(v) for k, v in t.params.items()}
    assert [served[n]["state"] for n in range(4)] == ["Complete", "Pruned", "Complete", "Fail"]
    assert served[1]["user_attrs"] == [{"key": "stopped_by", "value": "asha"}]
    assert [t["number"] for t in detail["best_trials"]] == [leader] == [2]


def test_tune_result_files_give_learning_curves(tmp_path):
    exp, study = _experiment(tmp_path, [_trial(TrialState.COMPLETE, {1: 0.3, 2: 0.4}),
                                        _trial(TrialState.PRUNED, {1: 0.1})])
    results = read_tune_results(str(exp / "tune" / "toy"))
    assert sorted(results) == [0, 1] and [r["epoch"] for r in results[0]] == [1, 2]
    rows = trial_rows(study, results)
    assert rows[0].history[1]["val/mAP@10"] == pytest.approx(0.39)
    assert [r.number for r in ranked(rows, "max")] == [0, 1]
    assert read_tune_results(str(tmp_path / "missing")) == {}


def test_too_few_trials_still_report(tmp_path):
    exp, study = _experiment(tmp_path, [_trial(TrialState.PRUNED, {1: 0.1})], tune_rows=False)
    importances, reason = param_importances(study)
    assert importances == {} and "needs >= 2 complete trials (have 0)" in reason
    assert main(["report", str(exp)]) == 0  # the CLI
    for name in PLOTS:
        assert (exp / "report" / name).stat().st_size > 1000


def test_not_an_experiment_is_one_line_error(tmp_path, capsys):
    with pytest.raises(E2IError, match="experiment.json"):
        make_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("e2i: error: ")
