"""Corpus readers on small files made here: layouts, rejected rows with reasons, whole-file errors,
caption curation."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e2i.corpus import READERS, Corpus, Item, curate_caption, read_corpus
from e2i.errors import CorpusError

HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]


def tiny_wav(path: Path, n: int = 320) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes((np.sin(np.arange(n) / 5.0) * 1000).astype("<i2").tobytes())
    return path


def tiny_png(path: Path, color=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


def write_csv(path: Path, rows: list[list[str]], header=HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def caps(prefix: str) -> list[str]:
    return [f"{prefix} caption {k}" for k in range(1, 6)]


def reasons(corpus: Corpus) -> dict[str, str]:
    return {r.id: r.reason for r in corpus.rejected}


# --------------------------------------------------------------------------------------------------
# Clotho


def test_clotho_reads_items_with_spaces_in_names(tmp_path):
    audio = tmp_path / "clotho_audio_files" / "development"
    tiny_wav(audio / "Santa Motor.wav")
    tiny_wav(audio / "rain, on roof.wav")
    write_csv(
        tmp_path / "clotho_captions_development.csv",
        [["Santa Motor.wav", *caps("motor")], ["rain, on roof.wav", *caps("rain")]],
    )
    corpus = read_corpus("clotho", tmp_path, split="development")
    assert (corpus.name, corpus.split) == ("clotho", "development")
    assert [it.item_id for it in corpus.items] == ["Santa Motor.wav", "rain, on roof.wav"]
    first = corpus.items[0]
    assert first.path == str((audio / "Santa Motor.wav").absolute()) and Path(first.path).is_file()
    assert first.captions == caps("motor") and first.modality == "audio"
    assert first.caption_ids == [f"Santa Motor.wav#{k}" for k in range(1, 6)]
    assert corpus.rejected == [] and corpus.num_captions == 10
    rows = corpus.caption_rows()
    assert rows[5] == {
        "caption_id": "rain, on roof.wav#1",
        "item_id": "rain, on roof.wav",
        "text": "rain caption 1",
    }


@pytest.mark.parametrize("layout", ["zenodo", "dcase"])
def test_clotho_other_layouts_and_split_detection(tmp_path, layout):
    if layout == "zenodo":  # CSV next to the extracted archive folder <split>/
        csv_path = tmp_path / "clotho_captions_evaluation.csv"
        tiny_wav(tmp_path / "evaluation" / "a.wav")
    else:  # DCASE baseline: clotho_csv_files/ + clotho_audio_files/<split>/
        csv_path = tmp_path / "clotho_csv_files" / "clotho_captions_evaluation.csv"
        tiny_wav(tmp_path / "clotho_audio_files" / "evaluation" / "a.wav")
    write_csv(csv_path, [["a.wav", *caps("a")]])
    corpus = read_corpus("clotho", tmp_path)  # split found from the only CSV
    assert corpus.split == "evaluation" and [it.item_id for it in corpus.items] == ["a.wav"]
    assert read_corpus("clotho", csv_path).items[0].path == corpus.items[0].path  # CSV path works too


def test_clotho_file_name_fallback_unicode_and_underscores(tmp_path):
    audio = tmp_path / "development"
    tiny_wav(audio / "Cafe\u0301_noise.wav")  # NFD accent, underscore instead of space on disk
    write_csv(tmp_path / "clotho_captions_development.csv", [["Caf\u00e9 noise.wav", *caps("cafe")]])
    corpus = read_corpus("clotho", tmp_path, split="development")
    assert corpus.items[0].item_id == "Caf\u00e9 noise.wav"
    assert Path(corpus.items[0].path).name == "Cafe\u0301_noise.wav"


def test_clotho_bad_rows_are_rejected_with_reasons(tmp_path):
    audio = tmp_path / "clotho_audio_files" / "development"
    for name in ["ok.wav", "dup.wav", "one_empty.wav", "all_empty.wav", "short.wav", "bad.wav"]:
        tiny_wav(audio / name)
    (audio / "zero.wav").write_bytes(b"")
    csv_path = tmp_path / "clotho_captions_development.csv"
    write_csv(
        csv_path,
        [
            ["ok.wav", *caps("ok")],
            ["missing.wav", *caps("missing")],
            ["dup.wav", *caps("dup")],
            ["dup.wav", *caps("dup again")],
            ["one_empty.wav", "c1", "c2", "   ", "c4", "c5"],
            ["all_empty.wav", "", "", " ", "", ""],
            ["short.wav", "only", "three"],
            ["zero.wav", *caps("zero")],
            ["bad.wav", *caps("bad")],
        ],
    )
    # A row with invalid UTF-8 bytes (latin-1 "é") in a caption, as the last row.
    raw = csv_path.read_bytes().rstrip(b"\r\n").rsplit(b"\n", 1)[0]
    csv_path.write_bytes(raw + b"\nbad.wav,caf\xe9 sounds,b,c,d,e\n")
    corpus = read_corpus("clotho", tmp_path, split="development")

    assert [it.item_id for it in corpus.items] == ["ok.wav", "dup.wav", "one_empty.wav"]
    one = corpus.items[2]
    assert one.captions == ["c1", "c2", "c4", "c5"]
    assert one.caption_ids == ["one_empty.wav#1", "one_empty.wav#2", "one_empty.wav#4", "one_empty.wav#5"]
    got = {(r.source, r.id): r.reason for r in corpus.rejected}
    name = "clotho_captions_development.csv"
    assert got[(f"{name}:3", "missing.wav")].startswith("audio file not found")
    assert got[(f"{name}:5", "dup.wav")] == "duplicate file_name (first at line 4)"
    assert got[(f"{name}:6", "one_empty.wav#3")] == "empty caption_3: caption dropped"
    assert got[(f"{name}:7", "all_empty.wav")] == "all 5 captions empty"
    assert got[(f"{name}:8", "short.wav")] == "unreadable row: expected 6 columns, got 3"
    assert got[(f"{name}:9", "zero.wav")].startswith("audio file is empty")
    assert got[(f"{name}:10", "bad.wav")] == "not valid UTF-8 text in caption_1"
    assert len(corpus.rejected) == 7  # every bad row reported exactly once, nothing silently dropped
    assert {r["source"] for r in corpus.rejected_rows()} >= {f"{name}:3", f"{name}:10"}


def test_clotho_quoted_multiline_caption_keeps_line_numbers(tmp_path):
    tiny_wav(tmp_path / "development" / "a.wav")
    write_csv(
        tmp_path / "clotho_captions_development.csv",
        [["a.wav", "two\nlines", "b", "c", "d", "e"], ["gone.wav", *caps("g")]],
    )
    corpus = read_corpus("clotho", tmp_path, split="development")
    assert corpus.items[0].captions[0] == "two\nlines"
    assert [(r.source, r.id) for r in corpus.rejected] == [("clotho_captions_development.csv:4", "gone.wav")]


def test_clotho_missing_columns_is_a_file_error(tmp_path):
    (tmp_path / "development").mkdir()
    write_csv(
        tmp_path / "clotho_captions_development.csv",
        [["a.wav", "x", "y"]],
        header=["file_name", "caption_1", "caption_2"],
    )
    with pytest.raises(CorpusError) as err:
        read_corpus("clotho", tmp_path, split="development")
    msg = str(err.value)
    assert "clotho_captions_development.csv" in msg and "caption_3, caption_4, caption_5" in msg
    assert "\n" not in msg


def test_clotho_file_level_errors(tmp_path):
    write_csv(tmp_path / "clotho_captions_development.csv", [])
    write_csv(tmp_path / "clotho_captions_validation.csv", [])
    with pytest.raises(CorpusError, match="development, validation"):
        read_corpus("clotho", tmp_path)  # two splits, none chosen
    with pytest.raises(CorpusError, match="no audio folder for split 'development'"):
        read_corpus("clotho", tmp_path, split="development")
    with pytest.raises(CorpusError, match="no clotho_captions_evaluation.csv"):
        read_corpus("clotho", tmp_path, split="evaluation")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "clotho_captions_x.csv").write_bytes(b"")
    (tmp_path / "empty" / "x").mkdir()
    with pytest.raises(CorpusError, match="empty file"):
        read_corpus("clotho", tmp_path / "empty")


def test_clotho_curation_reports_changes(tmp_path):
    tiny_wav(tmp_path / "development" / "a.wav")
    row = ["a.wav", "Water echos in a a  cave .", "the the bird sings", "fine caption", " Accross it ", "ok"]
    write_csv(tmp_path / "clotho_captions_development.csv", [row])
    raw = read_corpus("clotho", tmp_path, split="development")
    assert raw.items[0].captions == row[1:] and raw.curation == []  # no curation unless asked

    corpus = read_corpus("clotho", tmp_path, split="development", curate=True)
    assert corpus.items[0].captions == [
        "Water echoes in a cave.",
        "the bird sings",
        "fine caption",
        "Across it",
        "ok",
    ]
    changes = {c["caption_index"]: c for c in corpus.curation}
    assert set(changes) == {1, 2, 4}
    assert changes[1] == {
        "item_id": "a.wav",
        "caption_index": 1,
        "before": row[1],
        "after": "Water echoes in a cave.",
        "rules": ["whitespace", "space_before_punct", "doubled_word", "spelling"],
    }
    assert changes[4]["rules"] == ["whitespace", "spelling"]
    assert "3 captions curated" in corpus.summary()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Echos of a dog", "Echoes of a dog"),
        ("ECHOS", "ECHOES"),
        ("a bird chirps , then stops !", "a bird chirps, then stops!"),
        ("An an owl hoots", "An owl hoots"),
        ("he said that that was it", "he said that that was it"),  # valid doubling left alone
        ("the theatre", "the theatre"),  # word boundary: not a doubled word
        ("echoes already fine", "echoes already fine"),
    ],
)
def test_curate_caption_rules(text, expected):
    assert curate_caption(text)[0] == expected


# --------------------------------------------------------------------------------------------------
# COCO


def coco_json(path: Path, images, annotations) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


@pytest.mark.parametrize("image_sub", ["val2017", "images/val2017"])
def test_coco_groups_captions_per_image(tmp_path, image_sub):
    tiny_png(tmp_path / image_sub / "000001.png")
    tiny_png(tmp_path / image_sub / "000002.png")
    tiny_png(tmp_path / image_sub / "000004.png")
    coco_json(
        tmp_path / "annotations" / "captions_val2017.json",
        [
            {"id": 1, "file_name": "000001.png"},
            {"id": 2, "file_name": "000002.png"},
            {"id": 3, "file_name": "000003.png"},
            {"id": 4, "file_name": "000004.png"},
            {"id": 2, "file_name": "again.png"},
        ],
        [
            {"id": 10, "image_id": 1, "caption": "A cat on a mat. "},
            {"id": 11, "image_id": 2, "caption": "A dog."},
            {"id": 12, "image_id": 1, "caption": "A  cat sleeping."},
            {"id": 13, "image_id": 99, "caption": "orphan"},
            {"id": 14, "image_id": 3, "caption": "no file"},
            {"id": 15, "image_id": 2, "caption": ""},
        ],
    )
    corpus = read_corpus("coco", tmp_path, split="val", curate=True)  # "val" -> captions_val2017.json
    assert (corpus.name, corpus.split) == ("coco", "val2017")
    items = {it.item_id: it for it in corpus.items}
    assert list(items) == ["000001.png", "000002.png"]
    assert items["000001.png"].captions == ["A cat on a mat.", "A cat sleeping."]
    assert items["000001.png"].meta == {"image_id": 1} and items["000001.png"].modality == "image"
    assert items["000002.png"].caption_ids == ["000002.png#1"]
    got = {(r.source, r.id): r.reason for r in corpus.rejected}
    assert got[("captions_val2017.json:annotations[3]", "13")] == "unknown image_id 99"
    assert got[("captions_val2017.json:images[2]", "000003.png")].startswith("image file not found")
    assert got[("captions_val2017.json:images[3]", "000004.png")] == "no captions"
    assert got[("captions_val2017.json:images[4]", "again.png")] == "duplicate image id 2"
    assert got[("captions_val2017.json:images[1]", "000002.png#2")] == "empty caption 2: caption dropped"
    assert len(corpus.rejected) == 5


def test_coco_file_errors(tmp_path):
    (tmp_path / "val2017").mkdir()
    coco_json(tmp_path / "annotations" / "captions_val2017.json", [], [])
    bad = tmp_path / "annotations" / "captions_val2017.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(CorpusError, match=r"captions_val2017.json: missing key\(s\) annotations"):
        read_corpus("coco", tmp_path, split="val2017")
    bad.write_text("{not json")
    with pytest.raises(CorpusError, match="captions_val2017.json: not valid JSON"):
        read_corpus("coco", tmp_path, split="val2017")
    with pytest.raises(
        CorpusError, match=r"need one captions_train\*.json \(captions_<split>.json found: val2017\)"
    ):
        read_corpus("coco", tmp_path, split="train")


# --------------------------------------------------------------------------------------------------
# Generic JSON / JSONL


def test_jsonl_records_paths_captions_and_rejections(tmp_path):
    tiny_wav(tmp_path / "audio" / "a.wav")
    tiny_png(tmp_path / "img" / "b.png")
    tiny_wav(tmp_path / "audio" / "c.wav")
    absolute = tiny_png(tmp_path / "elsewhere" / "d.png")
    lines = [
        json.dumps({"audio": "audio/a.wav", "caption": "a tone", "duration": 1.5}),
        json.dumps({"id": "img-b", "image": "img/b.png", "captions": ["red square", "", "a red box"]}),
        "{broken json",
        json.dumps({"caption": "no path"}),
        json.dumps({"file": "notes.txt", "caption": "what"}),
        json.dumps({"path": "audio/missing.wav", "caption": "gone"}),
        json.dumps({"path": "audio/c.wav", "captions": ["", " "]}),
        "",
        json.dumps({"path": str(absolute), "caption": "abs"}),
        json.dumps({"audio": "audio/a.wav", "caption": "same path again"}),
        json.dumps(["not", "an", "object"]),
    ]
    meta = tmp_path / "train.jsonl"
    meta.write_bytes(("\n".join(lines) + "\n").encode() + b'{"path": "x.wav", "caption": "\xff"}\n')
    corpus = read_corpus("jsonl", tmp_path, split="train")  # directory + split -> train.jsonl
    items = {it.item_id: it for it in corpus.items}
    assert list(items) == ["audio/a.wav", "img-b", str(absolute)]
    assert items["audio/a.wav"].path == str((tmp_path / "audio" / "a.wav").absolute())
    assert items["audio/a.wav"].modality == "audio" and items["audio/a.wav"].meta == {"duration": 1.5}
    assert items["img-b"].modality == "image" and items["img-b"].captions == ["red square", "a red box"]
    assert items["img-b"].caption_ids == ["img-b#1", "img-b#3"]
    got = {r.source: r.reason for r in corpus.rejected}
    assert got["train.jsonl:2"] == "empty caption 2: caption dropped"
    assert got["train.jsonl:3"].startswith("not valid JSON")
    assert got["train.jsonl:4"].startswith("no media path")
    assert got["train.jsonl:5"].startswith("cannot tell modality of 'notes.txt'")
    assert got["train.jsonl:6"].startswith("audio file not found")
    assert got["train.jsonl:7"] == "all 2 captions empty"
    assert got["train.jsonl:10"] == "duplicate id (first at train.jsonl:1)"
    assert got["train.jsonl:11"] == "record is not a JSON object"
    assert got["train.jsonl:12"] == "not valid UTF-8 text"
    assert len(corpus.rejected) == 9


def test_json_list_and_wavcaps_style(tmp_path):
    tiny_wav(tmp_path / "a.flac")
    records = [{"id": "x1", "audio": "a.flac", "caption": "a  sound"}]
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "wavcaps.json").write_text(json.dumps({"num_captions_per_audio": 1, "data": records}))
    for name in ("list.json", "wavcaps.json"):
        corpus = read_corpus("jsonl", tmp_path / name, curate=True)
        assert [(it.item_id, it.captions) for it in corpus.items] == [("x1", ["a sound"])]
        assert corpus.curation[0]["rules"] == ["whitespace"]
    (tmp_path / "bad.json").write_text(json.dumps({"records": records}))
    with pytest.raises(CorpusError, match="bad.json: expected a list of records"):
        read_corpus("jsonl", tmp_path / "bad.json")
    with pytest.raises(CorpusError, match="no metadata file"):
        read_corpus("jsonl", tmp_path, split="test")


# --------------------------------------------------------------------------------------------------
# Image folders


def test_imagefolder_class_names_become_captions(tmp_path):
    root = tmp_path / "train"
    tiny_png(root / "golden_retriever" / "1.png")
    tiny_png(root / "golden_retriever" / "sub" / "2.png")
    tiny_png(root / "tabby cat" / "3.png", (0, 0, 255))
    (root / "tabby cat" / "readme.txt").write_text("not an image")
    (root / "tabby cat" / ".DS_Store").write_bytes(b"junk")
    (root / "LICENSE").write_text("text")
    corpus = read_corpus("imagefolder", tmp_path, split="train")
    assert corpus.split == "train"
    assert [(it.item_id, it.captions, it.meta["label"]) for it in corpus.items] == [
        ("golden_retriever/1.png", ["golden retriever"], "golden_retriever"),
        ("golden_retriever/sub/2.png", ["golden retriever"], "golden_retriever"),
        ("tabby cat/3.png", ["tabby cat"], "tabby cat"),
    ]
    assert reasons(corpus) == {
        "tabby cat/readme.txt": "not an image file (extension)",
        "LICENSE": "file not inside a class folder",
    }
    templated = read_corpus("imagefolder", root, template="a photo of a {}")
    assert templated.items[0].captions == ["a photo of a golden retriever"] and templated.split == "all"


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_and_unknown_kind(tmp_path):
    assert set(READERS) == {"clotho", "coco", "jsonl", "imagefolder"}
    with pytest.raises(
        CorpusError, match="unknown corpus kind 'wav'; valid: clotho, coco, jsonl, imagefolder"
    ):
        read_corpus("wav", tmp_path)
    with pytest.raises(CorpusError, match="no such file or directory"):
        read_corpus("clotho", tmp_path / "nope")
    with pytest.raises(CorpusError, match="corpus kind 'clotho'"):
        read_corpus("clotho", tmp_path, template="{}")


def test_item_caption_ids_must_match_captions():
    assert Item("x", "/p", ["a", "b"], "audio").caption_ids == ["x#1", "x#2"]
    with pytest.raises(ValueError):
        Item("x", "/p", ["a"], "audio", {}, ["x#1", "x#2"])
