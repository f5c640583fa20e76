"""The tune report's best-so-far against wall time (baseline line) and its self-contained report.html."""

import datetime as dt
import re

import matplotlib.image
import numpy as np
from test_report import _experiment, _trial
from optuna.trial import TrialState

from e2i.evaluate.html_report import tune_page
from e2i.evaluate.plots import plot_best_so_far
from e2i.tune.report import make_report, plot_time, trial_rows


def _timed(trial, start_s: float, end_s: float):
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    trial.datetime_start, trial.datetime_complete = t0 + dt.timedelta(seconds=start_s), t0 + dt.timedelta(seconds=end_s)
    return trial


def test_best_so_far_uses_wall_time_and_complete_trials(tmp_path):
    trials = [_timed(_trial(TrialState.COMPLETE, {1: 0.3}), 0, 10), _timed(_trial(TrialState.PRUNED, {1: 0.9}), 2, 5),
              _timed(_trial(TrialState.COMPLETE, {1: 0.2, 2: 0.5}), 4, 30)]
    exp, study = _experiment(tmp_path, trials)
    rows = trial_rows(study)
    assert [r.finished - r.started for r in rows] == [10, 3, 26]
    out = make_report(exp, quiet=True)
    assert (exp / "report" / "best_so_far_time.png").is_file() and out["html"].is_file()
    page = out["html"].read_text()
    assert "<script" not in page and "http" not in page
    assert len(re.findall(r"<img class=\"plot\"[^>]*src=\"data:image/png;base64,", page)) == 5
    assert len(re.findall(r"<tr>", page.split('id="leaderboard"')[1].split("</table>")[0])) == 1 + 3
    # the line: best so far of the complete trials (0.3 at 10 s, 0.5 at 30 s); the pruned 0.9 is a marker only
    import matplotlib.pyplot as plt
    captured = {}
    real_step = plt.Axes.step

    def spy(self, x, y, *a, **k):
        captured["x"], captured["y"] = list(x), list(y)
        return real_step(self, x, y, *a, **k)

    plt.Axes.step = spy
    try:
        plot_time(rows, {"mode": "max", "metric": "val/mAP@10", "space": "toy"}, tmp_path / "t.png", None)
    finally:
        plt.Axes.step = real_step
    assert captured["x"] == [10, 30, 30] and captured["y"] == [0.3, 0.5, 0.5]


def test_baseline_line_and_banner(tmp_path):
    without = plot_best_so_far([1, 2], [0.2, 0.4], tmp_path / "a.png", mode="max")
    with_line = plot_best_so_far([1, 2], [0.2, 0.4], tmp_path / "b.png", mode="max", baseline=("cca", 0.3))
    red = [np.sum((img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3))
           for img in map(matplotlib.image.imread, (without, with_line))]
    assert red[0] == 0 and red[1] > 200  # the dashed red baseline line
    header = ["rank", "trial", "val/mAP@10"]
    base = {"name": "cca", "metrics": {"text_to_item/mAP@10": 0.45}}
    page = tune_page(tmp_path / "r.html", "t", header, [["1", "0", "0.4000"], ["2", "1", "-"]], [],
                     (base, "text_to_item/mAP@10"), {"metric": "val/mAP@10", "mode": "max"}).read_text()
    assert 'class="banner lose"' in page and "LOSES to" in page and "0.4000 vs 0.4500" in page
