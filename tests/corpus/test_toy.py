"""Toy corpus: deterministic bytes, Clotho layout read back by the Clotho reader, audio and captions
that really carry the attributes."""

from __future__ import annotations

import csv
import hashlib
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from e2i.corpus import read_corpus
from e2i.corpus.toy import KINDS, PITCH_HZ, SAMPLE_RATE, make_toy_corpus


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32767.0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The default corpus (300 clips), read back through the Clotho reader."""
    root = make_toy_corpus(tmp_path_factory.mktemp("toy"))
    return root, read_corpus("clotho", root, split="development")


def test_same_seed_same_bytes_other_seed_or_split_differs(tmp_path):
    a = tree_hashes(make_toy_corpus(tmp_path / "a", n_items=12, seed=3))
    b = tree_hashes(make_toy_corpus(tmp_path / "b", n_items=12, seed=3))
    c = tree_hashes(make_toy_corpus(tmp_path / "c", n_items=12, seed=4))
    assert len(a) == 12 + 2 and a == b  # 12 wavs + captions CSV + attributes CSV
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    d = tree_hashes(make_toy_corpus(tmp_path / "d", n_items=12, seed=3, split="validation"))
    assert d["clotho_audio_files/validation/toy_0000.wav"] != a["clotho_audio_files/development/toy_0000.wav"]


def test_reads_back_through_clotho_reader(toy):
    root, corpus = toy
    assert (corpus.name, corpus.split, len(corpus.items), corpus.rejected) == ("toy", "development", 300, [])
    assert all(len(it.captions) == 5 == len(set(it.captions)) for it in corpus.items)
    assert corpus.num_captions == 1500 and corpus.items[0].caption_ids[4] == "toy_0000.wav#5"
    assert Counter(it.meta["kind"] for it in corpus.items) == {k: 60 for k in KINDS}  # balanced
    assert len({c for it in corpus.items for c in it.captions}) > 1000  # varied wording
    with open(root / "toy_attributes_development.csv", newline="") as f:
        attrs = list(csv.DictReader(f))
    assert [r["file_name"] for r in attrs] == [it.item_id for it in corpus.items]
    for it in corpus.items[:40]:
        x = read_wav(it.path)
        assert len(x) == int(it.meta["duration_s"] * SAMPLE_RATE) and 1.0 <= it.meta["duration_s"] <= 4.0
        assert abs(np.max(np.abs(x)) - it.meta["peak"]) < 1e-3


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.argmax(spec) * SAMPLE_RATE / len(x))


def centroid_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float((spec * freqs).sum() / spec.sum())


def test_audio_carries_the_attributes(toy):
    _, corpus = toy
    by_kind: dict[str, list] = {k: [] for k in KINDS}
    for it in corpus.items:
        by_kind[it.meta["kind"]].append(it)
    for it in by_kind["tone"] + by_kind["beeps"]:  # pitch class -> dominant frequency in its range
        lo, hi = PITCH_HZ[it.meta["pitch"]]
        assert lo - 5 <= dominant_hz(read_wav(it.path)) <= hi + 5, it.item_id
    for it in (i for i in by_kind["chirp"] if i.meta["speed"] == "slow" and i.meta["background"] == "none"):
        x = read_wav(it.path)
        first, second = centroid_hz(x[: len(x) // 2]), centroid_hz(x[len(x) // 2 :])
        assert (second > first) == (it.meta["direction"] == "rising"), it.item_id
    for it in by_kind["noise"]:  # a short burst leaves most of the clip silent, a long noise does not
        silent = np.mean(np.abs(read_wav(it.path)) < 1e-4)
        assert (silent > 0.5) == (it.meta["length"] == "short"), it.item_id
    quiet = [
        np.sqrt(np.mean(read_wav(i.path) ** 2)) for i in by_kind["noise"] if i.meta["loudness"] == "quiet"
    ]
    loud = [
        np.sqrt(np.mean(read_wav(i.path) ** 2))
        for i in by_kind["noise"]
        if i.meta["loudness"] == "loud" and i.meta["length"] == "long"
    ]
    assert max(quiet) < min(loud)


KIND_WORDS = {
    "tone": ("tone", "note", "hum", "drone", "whistle"),
    "noise": ("noise", "hiss", "static", "roar"),
    "chirp": ("chirp", "sweep", "glide", "whistle", "bleep", "tone"),
    "clicks": ("click", "tick"),
    "beeps": ("beep", "pulses"),
}
DIRECTION_WORDS = {
    "rising": ("rising", "ascending", "climbing", "up"),
    "falling": ("falling", "descending", "dropping", "down"),
}


def test_captions_describe_the_clip(toy):
    _, corpus = toy
    for it in corpus.items:
        m = it.meta
        for text in it.captions:
            low = text.lower()
            assert any(w in low for w in KIND_WORDS[m["kind"]]), (text, m)
            if m["kind"] == "chirp":
                assert any(w in low for w in DIRECTION_WORDS[m["direction"]]), (text, m)
            if m["kind"] == "noise":
                assert any(w in low for w in ("burst", "blast")) == (m["length"] == "short"), (text, m)
            if m["loudness"] == "quiet":
                assert not any(w in low.split() for w in ("loud", "blaring", "powerful")), (text, m)
            assert text[0].isupper() and text.endswith(".") and "  " not in text


def test_cli_writes_corpus_and_reports(tmp_path, capsys):
    from e2i.cli import main

    root = tmp_path / "dir with space"
    assert main(["toy", "--root", str(root), "--n-items", "7", "--seed", "2"]) == 0
    assert "toy/development: 7 items, 35 captions, 0 rejected" in capsys.readouterr().out
    assert tree_hashes(root) == tree_hashes(make_toy_corpus(tmp_path / "again", n_items=7, seed=2))
    assert main(["toy", "--root", str(root), "--n-items", "0"]) == 2
    assert "e2i: error: --n-items: must be >= 1" in capsys.readouterr().err
