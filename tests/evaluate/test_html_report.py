"""report.html of `e2i evaluate`: self-contained, and rendered by a real headless Chromium with no console
errors, the expected rows in the retrieval browser and a non-blank screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import wave
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import pyarrow.parquet as pq

from e2i.cli import main
from e2i.config import TrainConfig
from e2i.evaluate.evaluation import evaluate_run
from e2i.store import write_split
from e2i.store.synthetic import synthetic_splits
from e2i.train.driver import train_local

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N_TEST = 30  # test items, 5 captions each


def _write_wav(path: Path, seed: int) -> None:
    tone = np.sin(np.linspace(0, 2 * np.pi * 440 * 0.2, 3200)) * (0.2 + 0.05 * seed % 3)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((tone * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def media_run(tmp_path_factory) -> tuple[Path, Path]:
    """A trained run whose test items are real files: even rows audio (names with a space, as in Clotho),
    odd rows PNG images, in a corpus dir beside the results."""
    root = tmp_path_factory.mktemp("html")
    splits = synthetic_splits(n_items=160, item_dim=24, caption_dim=16,
                              splits={"train": 100, "val": 30, "test": N_TEST}, seed=5)
    corpus = root / "corpus"
    corpus.mkdir()
    paths = []
    for i, item in enumerate(splits["test"].item_ids):
        if i % 2 == 0:
            path = corpus / f"{item} clip.wav"
            _write_wav(path, i)
        else:
            path = corpus / f"{item}.png"
            matplotlib.image.imsave(path, np.random.default_rng(i).random((16, 16, 3)))
        paths.append(str(path))
    splits["test"].item_paths = np.array(paths, dtype=object)
    for name, split in splits.items():
        write_split(split, root / "store" / name, "syn", name)
    cfg = TrainConfig(name="htmlrun", output_dir=str(root / "results")).replace({
        "data.store": str(root / "store"), "model.type": "mlp", "loss.type": "softmax_infonce",
        "model.output_dim": 16, "model.hidden_dim": 32, "model.num_layers": 1, "optim.epochs": 2,
        "optim.batch_size": 100, "optim.lr": 3e-3, "logging.tensorboard": False})
    train_local(cfg, evaluate=False)
    return Path(cfg.run_dir), corpus


def chromium(*args: str, url: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_lines(stderr: str) -> list[str]:
    """Chromium's console messages (``...:INFO:CONSOLE:1] "message", source: ...``) from --enable-logging."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_is_self_contained_and_renders_in_chromium(media_run, tmp_path):
    run_dir, corpus = media_run
    evaluate_run(run_dir, max_plot_items=30, show=False)
    report = run_dir / "evaluation_results" / "report.html"
    page = report.read_text()

    # self-contained: no scripts, stylesheets or plots fetched from anywhere; plots are data URIs
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    plots = re.findall(r'<img class="plot"[^>]*src="([^"]+)"', page)
    assert len(plots) == 3 and all(p.startswith("data:image/png;base64,") for p in plots)  # curves, t-SNE, PCA
    # media point at the corpus files, relative to the page, and resolve
    audio = re.findall(r'<audio controls preload="none" src="([^"]+)"', page)
    images = re.findall(r'<img class="item"[^>]*src="([^"]+)"', page)
    assert len(audio) + len(images) == (12 + 8) * 5 and audio and images
    assert all("%20" in src for src in audio)  # "syn_000130 clip.wav": the space is URL-quoted
    for src in audio + images:
        assert not src.startswith("/"), src
        target = (report.parent / urllib.parse.unquote(src)).resolve()
        assert target.is_file() and target.parent == corpus.resolve(), src

    # a real browser: the DOM it builds has one result row per (query, retrieved item): 12 random + 8 worst
    dom = chromium("--dump-dom", url=report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<tr class="result (?:rel|nonrel)"', dom.stdout)) == (12 + 8) * 5
    assert len(re.findall(r'<tr class="query"', dom.stdout)) == 20
    assert 'id="metrics"' in dom.stdout and "text_to_item/recall@1" in dom.stdout
    assert console_lines(dom.stderr) == [], console_lines(dom.stderr)

    # the console capture works: the same page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("</body>", "<script>console.error('e2i-marker')</script></body>"))
    caught = console_lines(chromium("--dump-dom", url=broken.as_uri()).stderr)
    assert any("e2i-marker" in line for line in caught), caught

    # the screenshot is not blank: many distinct grey levels, clear variance
    shot = tmp_path / "report.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1200,1600", url=report.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05
    assert len(np.unique((pixels.mean(axis=2) * 255).astype(int))) > 50


def test_cli_relevance_and_topk_dump(media_run, tmp_path, capsys):
    run_dir, _ = media_run
    out = tmp_path / "ev"
    base = ["evaluate", str(run_dir), "--no-plots", "--no-html", "--no-baseline", "--output-dir", str(out)]
    assert main([*base, "--dump-topk", "3"]) == 0
    plain = json.loads((out / "test_metrics.json").read_text())["metrics"]
    topk = pq.read_table(out / "test_topk.parquet").to_pandas()
    assert len(topk) == N_TEST * 5 * 3 + N_TEST * 3
    t2i = topk[topk.direction == "text_to_item"]
    own = t2i.query_id.str.split("#").str[0] == t2i.retrieved_id
    assert (t2i.relevant == own).all()  # without a relevance file: relevant = the caption's own item
    hits = t2i[(t2i["rank"] == 1)].relevant.mean()
    assert hits == pytest.approx(plain["text_to_item/recall@1"])  # the dump agrees with the metrics
    # a relevance file: caption #1 of every item also counts the next item as relevant
    ids = sorted(t2i.retrieved_id.unique())
    rel = tmp_path / "rel.csv"
    rel.write_text("caption_id,item_id\n" + "".join(f"{a}#1,{a}\n{a}#1,{b}\n" for a, b in zip(ids, ids[1:])))
    capsys.readouterr()
    assert main([*base, "--relevance", str(rel)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "test_metrics.json").read_text())
    assert "text_to_item/mAP@16" in saved["metrics"] and "mAP@16" in printed
    assert saved["relevance"]["queries"] == len(ids) - 1 and saved["relevance"]["pairs"] == 2 * (len(ids) - 1)
    for key in ("item_to_text/recall@1", "item_to_text/mAP@10"):  # item->text is untouched
        assert saved["metrics"][key] == plain[key]
    rel.write_text("caption_id,item_id\nnope#1,x\n")
    assert main([*base, "--relevance", str(rel)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"e2i: error: {rel}: row 1: caption_id: 'nope#1' is not a caption of {run_dir.parent.parent / 'store' / 'test'}"
