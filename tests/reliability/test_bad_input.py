"""Bad input through the real `e2i` command: a one-line error naming the file/row/field and a non-zero
exit code (no traceback unless --debug), or, for per-row corpus problems, a rejected row with its reason
while the run goes on.

The unit tests of each module check the messages of the functions (tests/corpus/test_sources.py,
test_store.py, test_config.py, test_space.py, test_encoders.py, test_evaluate.py, test_legacy.py);
here the same inputs go through `e2i <stage>` as a user runs it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from reliability_helpers import (
    LIGHT_FLAGS,
    append_clotho_rows,
    error_line,
    ray_sessions,
    run_cli,
    run_module,
    write_wav,
)

from e2i.errors import CheckpointError
from e2i.store import load_split, write_split


# ========================================================================================= corpus
def _caps(name: str) -> list[str]:
    return [f"caption {k} of {name}" for k in range(1, 6)]


@pytest.fixture(scope="module")
def bad_clotho(tmp_path_factory) -> Path:
    """The toy corpus (12 clips) plus one row for every kind of bad audio/CSV row."""
    from e2i.corpus.toy import make_toy_corpus

    root = make_toy_corpus(tmp_path_factory.mktemp("clotho"), n_items=12, seed=3)
    audio = root / "clotho_audio_files" / "development"
    write_wav(audio / "lowrate.wav", sr=4000)  # decodes, but 4 kHz is below the encoders' minimum
    (audio / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVE not really" * 8)  # corrupt
    (audio / "zero.wav").write_bytes(b"")  # zero-length file
    write_wav(audio / "noframes.wav", seconds=0)  # a valid header and no samples
    write_wav(audio / "fine.wav")
    write_wav(audio / "silent captions.wav")
    write_wav(audio / "latin1.wav")
    append_clotho_rows(root / "clotho_captions_development.csv", [
        ["lowrate.wav", *_caps("lowrate")],
        ["garbage.wav", *_caps("garbage")],
        ["zero.wav", *_caps("zero")],
        ["noframes.wav", *_caps("noframes")],
        ["missing.wav", *_caps("missing")],
        ["toy_0003.wav", *_caps("a second row for the same file")],
        ["fine.wav", "a clear tone", "", "   ", "a steady tone", "a beep"],  # 2 empty captions: dropped
        ["silent captions.wav", "", "", "", "", ""],  # no caption left: the item is rejected
    ])
    with open(root / "clotho_captions_development.csv", "ab") as f:  # latin-1 bytes: not UTF-8
        f.write(b"latin1.wav,caf\xe9 noise,b,c,d,e\n")
    return root


@pytest.mark.slow
def test_bad_audio_rows_are_rejected_and_the_cache_run_goes_on(ray_local, bad_clotho, tmp_path, capsys):
    code, out, err = run_cli(["cache", "--metadata", str(bad_clotho), "--cache-dir", str(tmp_path), *LIGHT_FLAGS,
                              "--batch-size", "8"], capsys)
    assert code == 0, err[-3000:]
    split = tmp_path / "toy" / "development"
    rejected = pd.read_parquet(split / "rejected.parquet")
    reason = dict(zip(rejected["id"], rejected["reason"]))
    expected = {  # id -> start of the reason
        "lowrate.wav": "unsupported sample rate 4000 Hz",
        "garbage.wav": "unreadable audio",
        "zero.wav": "audio file is empty",
        "noframes.wav": "empty audio",
        "missing.wav": "audio file not found",
        "toy_0003.wav": "duplicate file_name (first at line",
        "fine.wav#2": "empty caption_2: caption dropped",
        "fine.wav#3": "empty caption_3: caption dropped",
        "silent captions.wav": "all 5 captions empty",
        "latin1.wav": "not valid UTF-8 text in caption_1",
    }
    for rid, start in expected.items():
        assert reason.get(rid, "").startswith(start), (rid, reason.get(rid))
    # the README's examples, exactly: the CSV line of the duplicate (header = line 1, 12 toy rows, then ours)
    source = dict(zip(rejected["id"], rejected["source"]))
    assert (source["toy_0003.wav"], reason["toy_0003.wav"]) == ("clotho_captions_development.csv:19",
                                                                "duplicate file_name (first at line 5)")
    assert reason["lowrate.wav"] == "unsupported sample rate 4000 Hz (< 8000 Hz)"
    for name in ("lowrate.wav", "garbage.wav", "noframes.wav"):  # captions of rejected items follow them
        assert all(reason[f"{name}#{k}"] == "item rejected" for k in range(1, 6))
    reader_rows = [s for s in rejected["source"] if s.startswith("clotho_captions_development.csv:")]
    assert len(reader_rows) == 7  # each reader rejection names the CSV line
    # the run went on: every good clip and caption is stored, nothing bad is
    data = load_split(split)
    assert data.num_items == 13 and data.num_captions == 12 * 5 + 3
    assert "fine.wav" in set(data.item_ids) and not set(data.item_ids) & {"lowrate.wav", "garbage.wav", "zero.wav"}
    assert "rejected: 7 by the reader + 18 in the pipeline (25 in rejected.parquet)" in " ".join(out.split())
    code, out, _ = run_cli(["store", "verify", str(split)], capsys)
    assert code == 0 and "OK" in out


@pytest.mark.slow
def test_bad_images_are_rejected_and_the_cache_run_goes_on(ray_local, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for k, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]):
        Image.new("RGB", (16, 16), colour).save(images / f"ok{k}.png")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    png = (images / "ok0.png").read_bytes()
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    (images / "empty.png").write_bytes(b"")
    lines = [json.dumps({"image": f"imgs/ok{k}.png", "caption": f"a square of colour {k}"}) for k in range(4)] + [
        json.dumps({"image": "imgs/corrupt.jpg", "caption": "a corrupt file"}),
        json.dumps({"image": "imgs/truncated.png", "caption": "half a file"}),
        json.dumps({"image": "imgs/empty.png", "caption": "a zero-length file"}),
        json.dumps({"image": "imgs/missing.png", "caption": "no such file"}),
        json.dumps({"image": "imgs/ok1.png", "caption": "the same file again"}),
        json.dumps({"image": "imgs/ok4.png", "caption": "   "}),
        '{"image": "imgs/ok4.png", "caption": ',
    ]
    meta = tmp_path / "metadata.jsonl"
    meta.write_bytes(("\n".join(lines) + "\n").encode() + b'{"image": "imgs/ok4.png", "caption": "caf\xe9"}\n')
    code, out, err = run_cli(["cache", "--metadata", str(meta), "--cache-dir", str(tmp_path / "stores"),
                              *LIGHT_FLAGS, "--batch-size", "4"], capsys)
    assert code == 0, err[-3000:]
    split = tmp_path / "stores" / "metadata" / "metadata"
    rejected = pd.read_parquet(split / "rejected.parquet")
    by_source = dict(zip(rejected["source"], rejected["reason"]))
    by_id = dict(zip(rejected["id"], rejected["reason"]))
    assert by_id["imgs/corrupt.jpg"].startswith("unreadable image")
    assert by_id["imgs/truncated.png"].startswith("unreadable image")
    assert by_id["imgs/empty.png"].startswith("image file is empty")
    assert by_id["imgs/missing.png"].startswith("image file not found")
    assert by_source["metadata.jsonl:9"].startswith("duplicate id (first at metadata.jsonl:2)")
    assert by_source["metadata.jsonl:10"] == "empty caption"
    assert by_source["metadata.jsonl:11"].startswith("not valid JSON")
    assert by_source["metadata.jsonl:12"] == "not valid UTF-8 text"
    data = load_split(split)
    assert sorted(data.item_ids) == [f"imgs/ok{k}.png" for k in range(4)] and data.num_captions == 4
    assert "rejected:" in out and "in rejected.parquet" in out


@pytest.mark.parametrize("case", ["missing_columns", "no_metadata", "unknown_audio_encoder", "unknown_text_encoder",
                                  "zero_batch_size", "cpus_per_gpu_below_one"])
def test_whole_corpus_problems_are_one_line_errors(ray_local, tmp_path, capsys, case):
    (tmp_path / "development").mkdir()
    csv_path = tmp_path / "clotho_captions_development.csv"
    csv_path.write_text("file_name,caption_1,caption_2\na.wav,x,y\n")
    write_wav(tmp_path / "development" / "a.wav")
    encoders = "passt, hf-text, hf-image, siglip2, franca, panns, sbert, logmel-stats, ngram-hash, image-stats"
    args, message = {
        "missing_columns": ([], (f"{csv_path}: missing column(s) caption_3, caption_4, caption_5 "
                                "(header: file_name, caption_1, caption_2)")),
        "no_metadata": (["--metadata", str(tmp_path / "nowhere")],
                        f"{tmp_path / 'nowhere'}: no such file or directory"),
        "unknown_audio_encoder": (["--audio-encoder", "wav2vec"], f"unknown encoder 'wav2vec' (valid: {encoders})"),
        "unknown_text_encoder": (["--text-encoder", "bert"], f"unknown encoder 'bert' (valid: {encoders})"),
        "zero_batch_size": (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        "cpus_per_gpu_below_one": (["--use-gpu", "--cpus-per-gpu", "0.5"], "--cpus-per-gpu: must be >= 1, got 0.5"),
    }[case]
    if case.startswith("unknown") or case in ("zero_batch_size", "cpus_per_gpu_below_one"):  # a complete CSV, so only the flag is wrong
        csv_path.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\na.wav,a,b,c,d,e\n")
    argv = ["cache", "--metadata", str(tmp_path), "--cache-dir", str(tmp_path / "stores"), *LIGHT_FLAGS, *args]
    code, _, err = run_cli(argv, capsys)
    error_line(code, err, exit_code=2, full=re.escape(f"e2i: error: {message}"))
    assert not (tmp_path / "stores").exists() or not any((tmp_path / "stores").rglob("*.parquet"))
    if case == "cpus_per_gpu_below_one":  # refused with the other flags, before the store dir or Ray
        assert not (tmp_path / "stores").exists()


# ========================================================================================= store
def _two_shard_store(root: Path, rel_store: Path) -> Path:
    """The train split of rel_store rewritten as 2 item and 10 caption shards (manifest with sha256)."""
    data = load_split(rel_store / "train")
    split = root / "syn" / "all"
    write_split(data, split, "syn", "all", rows_per_shard=60)  # items 120 -> 2 shards, captions 600 -> 10
    return split


def _rewrite(path: Path, fn) -> None:
    """Read a shard with pyarrow, change it with ``fn(dict of columns)``, write it back (same schema kinds)."""
    table = pq.read_table(path)
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    fn(cols)
    dim = len(cols["embedding"][0])
    arrays = {k: pa.array(v) for k, v in cols.items() if k != "embedding"}
    arrays["embedding"] = pa.array(cols["embedding"], pa.list_(pa.float32(), dim))
    pq.write_table(pa.table(arrays), path)


def _damage(split: Path, what: str) -> tuple[str, str, bool]:
    """Damage the store; return (the damaged shard, relative to the split; a regex of what is wrong with it,
    as `e2i store verify` and the loaders say after "<shard>: "; whether loading must fail)."""
    items0, items1 = split / "items" / "part-00000.parquet", split / "items" / "part-00001.parquet"
    caps1 = split / "captions" / "part-00001.parquet"
    first_item = pq.read_table(items0).column("item_id")[0].as_py()
    if what == "dim_between_shards":
        iid = pq.read_table(items1).column("item_id")[0].as_py()
        _rewrite(items1, lambda c: c.update(embedding=[e[:10] for e in c["embedding"]]))
        return "items/part-00001.parquet", re.escape(f"{iid!r}: embedding dim 10 != 16 in {items0}"), True
    if what in ("nan", "inf"):
        bad = float("nan") if what == "nan" else float("inf")
        cid = pq.read_table(caps1).column("caption_id")[3].as_py()
        _rewrite(caps1, lambda c: c["embedding"][3].__setitem__(5, bad))
        return "captions/part-00001.parquet", re.escape(f"{cid!r}: embedding has NaN/inf or null values"), True
    if what == "caption_of_missing_item":
        cid = pq.read_table(caps1).column("caption_id")[0].as_py()
        _rewrite(caps1, lambda c: c["item_id"].__setitem__(0, "ghost-item"))
        return "captions/part-00001.parquet", re.escape(f"caption {cid!r} points at missing item 'ghost-item'"), True
    if what == "duplicate_ids":
        _rewrite(items1, lambda c: c["item_id"].__setitem__(0, first_item))
        return "items/part-00001.parquet", re.escape(f"duplicate item_id {first_item!r}"), True
    if what == "truncated_parquet":
        items1.write_bytes(items1.read_bytes()[:-200])
        return "items/part-00001.parquet", re.escape("not a readable parquet file (Parquet magic bytes not found in "
                                                     "footer. Either the file is corrupted or this is not a parquet "
                                                     "file.)"), True
    if what == "checksum_mismatch":  # one bit of one float flips: the parquet file still decodes
        raw = bytearray(items0.read_bytes())
        value = load_split(split).item_emb[7].tobytes()
        at = bytes(raw).find(value)
        assert at > 0
        raw[at + 2] ^= 0x01
        items0.write_bytes(bytes(raw))
        return "items/part-00000.parquet", SHA256_MISMATCH, False
    raise AssertionError(what)


SHA256_MISMATCH = r"sha256 mismatch \(file [0-9a-f]{12}\.\.\., manifest [0-9a-f]{12}\.\.\.; \d+ bytes, manifest \d+\)"
STORE_FAULTS = ["dim_between_shards", "nan", "inf", "caption_of_missing_item", "duplicate_ids", "truncated_parquet",
                "checksum_mismatch"]


@pytest.mark.parametrize("what", STORE_FAULTS)
def test_bad_store_through_verify_and_split(rel_store, tmp_path, capsys, what):
    split = _two_shard_store(tmp_path, rel_store)
    code, out, _ = run_cli(["store", "verify", str(split)], capsys)
    assert code == 0 and "OK" in out
    rel, detail, load_fails = _damage(split, what)
    code, out, err = run_cli(["store", "verify", str(tmp_path / "syn")], capsys)
    assert code == 1 and "Traceback" not in err
    # one PROBLEM line per issue: the rewritten shard's checksum, then what is wrong inside it
    shard = re.escape(str(split / rel))
    expected = [rf"PROBLEM {shard}: {SHA256_MISMATCH}"] + ([rf"PROBLEM {shard}: {detail}"] if load_fails else [])
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM ")]
    assert len(problems) == len(expected) and all(map(re.fullmatch, expected, problems)), out
    assert out.strip().splitlines()[-1] == \
        f"e2i store verify: 1 split(s) under {tmp_path / 'syn'}: {len(expected)} problem(s)"
    if not load_fails:  # a flipped bit inside a float still decodes: the sha256 of `e2i store verify` finds it
        return
    # a stage that reads the split (`e2i split`) stops with one line naming the file and the first bad id
    code, _, err = run_cli(["split", str(split), "--out", str(tmp_path / "out")], capsys)
    error_line(code, err, exit_code=2, full=rf"e2i: error: {shard}: {detail}")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bad_store_in_e2i_train_is_one_line_not_a_ray_traceback(ray_local, rel_config, rel_store, tmp_path, capsys):
    """The store is read inside the Ray Train worker (scaling.trainer=ray; 1 CPU worker would run in-process):
    its StoreError must reach the user as one line."""
    shutil.copytree(rel_store, tmp_path / "store")
    shard = next((tmp_path / "store" / "train" / "items").glob("*.parquet"))
    item = pq.read_table(shard).column("item_id")[4].as_py()
    _rewrite(shard, lambda c: c["embedding"][4].__setitem__(0, float("nan")))
    code, _, err = run_cli(["train", str(rel_config), "--set", f"data.store={tmp_path / 'store'}",
                            "--set", "scaling.trainer=ray", "--output-dir", str(tmp_path / "results"),
                            "--no-evaluate"], capsys)
    error_line(code, err, exit_code=2,
               full=re.escape(f"e2i: error: {shard}: {item!r}: embedding has NaN/inf or null values"))


# ========================================================================================= configs and spaces
def _keys(*must: str) -> str:
    """Regex of a "(valid keys: a, b, ...)" list that holds ``must``."""
    return r"\(valid keys(?: here)?: " + "".join(rf"(?=[^)]*\b{k}\b)" for k in must) + r"[a-z_]+(?:, [a-z_]+)*\)"


HEADS, LOSSES = "siglip, clip, attention, mlp", "sigmoid_infonce, softmax_infonce, queue_infonce"
TRAIN_CASES = {  # --set overrides -> the message after "<config file>: " (a regex)
    "unknown_head": (["model.type=transformer"], re.escape(f"model.type: 'transformer' is not one of {HEADS}")),
    "unknown_loss": (["loss.type=hinge"], re.escape(f"loss.type: 'hinge' is not one of {LOSSES}")),
    "wrong_type": (["optim.epochs=ten"], re.escape("optim.epochs: expected int, got str 'ten'")),
    "wrong_type_bool": (["scaling.use_gpu=maybe"], re.escape("scaling.use_gpu: expected bool, got str 'maybe'")),
    "zero_lr": (["optim.lr=0"], re.escape("optim.lr: must be > 0, got 0.0")),
    "negative_lr": (["optim.lr=-1e-3"], re.escape("optim.lr: must be > 0, got -0.001")),
    "zero_batch": (["optim.batch_size=0"], re.escape("optim.batch_size: must be > 0, got 0")),
    "negative_batch": (["optim.batch_size=-32"], re.escape("optim.batch_size: must be > 0, got -32")),
    "heads_not_dividing": (["model.type=attention", "model.hidden_dim=30", "model.num_heads=4"],
                           re.escape("model.num_heads: must divide hidden_dim (4 does not divide 30)")),
    "unknown_key": (["optim.learning_rate=0.1"], r"optim\.learning_rate: unknown key " + _keys("lr", "batch_size")),
    "unknown_section": (["modle.type=mlp"], "modle: unknown key " + _keys("model", "optim")),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train_config_is_one_line(rel_config, capsys, case):
    overrides, message = TRAIN_CASES[case]
    argv = ["train", str(rel_config)] + [a for o in overrides for a in ("--set", o)]
    code, _, err = run_cli(argv, capsys)
    error_line(code, err, exit_code=2, full=rf"e2i: error: {re.escape(str(rel_config))}: {message}")


def test_unknown_metric_is_rejected_when_the_config_loads(rel_config):
    """A typo in `metric` must fail at load, not after the first epoch inside a Ray worker (KeyError)."""
    from e2i.config import load_train_config
    from e2i.errors import ConfigError

    for metric in ("val/map@10", "val/recall@3", "val/text_to_item/recall@1"):
        with pytest.raises(ConfigError) as info:
            load_train_config(rel_config, [f"metric={metric}"])
        message = str(info.value)
        assert message.startswith(f"{rel_config}: metric: {metric!r} is not one of ") and "val/mAP@10" in message
    for metric in ("val/mAP@10", "val/loss", "val/recall@5", "val/item_to_text/median_rank"):
        assert load_train_config(rel_config, [f"metric={metric}"]).metric == metric


def test_typo_in_the_config_file_names_file_and_key(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  type: clip\noptim:\n  lr: 1.0e-3\n  batchsize: 64\n")
    code, _, err = run_cli(["train", str(path)], capsys)
    error_line(code, err, exit_code=2,
               full=rf"e2i: error: {re.escape(str(path))}: optim\.batchsize: unknown key {_keys('batch_size')}")


SPACE_CASES = {  # space YAML -> the message after "<space file>: " (a regex)
    "empty_choice": ({"model.type": {"choice": []}}, re.escape("space.model.type.choice: empty choice list")),
    "low_above_high": ({"optim.lr": {"loguniform": [1.0e-2, 1.0e-4]}},
                       re.escape("space.optim.lr.loguniform: low > high (0.01 > 0.0001)")),
    "unknown_key": ({"optim.lrr": {"uniform": [0.1, 0.2]}}, r"space\.optim\.lrr: unknown key " + _keys("lr")),
    "unknown_head": ({"model.type": {"choice": ["siglip", "perceiver"]}},
                     re.escape(f"space.model.type.choice[1]: 'perceiver' is not one of {HEADS}")),
    "unknown_loss": ({"loss.type": {"choice": ["triplet"]}},
                     re.escape(f"space.loss.type.choice[0]: 'triplet' is not one of {LOSSES}")),
    "heads_not_dividing": ({"model.type": {"choice": ["attention"]}, "model.hidden_dim": {"choice": [64]},
                            "model.num_heads": {"choice": [5]}},
                           re.escape("space: sampled config (model.hidden_dim=64, model.num_heads=5, "
                                     "model.type=attention) is invalid: model.num_heads: must divide hidden_dim "
                                     "(5 does not divide 64)")),
    "zero_lr": ({"optim.lr": {"uniform": [0.0, 0.1]}},
                re.escape("space: sampled config (optim.lr=0.0) is invalid: optim.lr: must be > 0, got 0.0")),
}


@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_bad_tune_space_is_one_line(rel_store, tmp_path, capsys, case):
    space, message = SPACE_CASES[case]
    path = tmp_path / "bad_space.yaml"
    path.write_text(yaml.safe_dump({"base": {"data": {"store": str(rel_store)}}, "space": space,
                                    "storage": {"output_dir": str(tmp_path / "results")}}))
    code, _, err = run_cli(["tune", str(path)], capsys)
    error_line(code, err, exit_code=2, full=rf"e2i: error: {re.escape(str(path))}: {message}")
    assert not (tmp_path / "results").exists()  # nothing started: no experiment dir, no study


def test_bad_space_key_outside_space_block(rel_store, tmp_path, capsys):
    path = tmp_path / "typo_space.yaml"
    path.write_text(yaml.safe_dump({"base": {"data": {"store": str(rel_store)}},
                                    "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                                    "schedular": {"max_t": 4}}))
    code, _, err = run_cli(["tune", str(path)], capsys)
    error_line(code, err, exit_code=2,
               full=rf"e2i: error: {re.escape(str(path))}: schedular: unknown key {_keys('scheduler')}")


def test_traceback_only_with_debug(ray_start_is_visible, tmp_path, ray_tmp):
    """What a user types: `e2i train` prints one line, before Ray starts; `e2i --debug train` shows the
    traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  type: transformer\n")
    plain = run_module(["train", str(path)], env={"RAY_TMPDIR": ray_tmp})
    line = f"e2i: error: {path}: model.type: 'transformer' is not one of {HEADS}\n"
    assert (plain.returncode, plain.stderr) == (2, line)
    assert ray_sessions(ray_tmp) == []  # the config was refused before ray.init
    debug = run_module(["--debug", "train", str(path)])
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ConfigError" in debug.stderr


# ========================================================================================= checkpoints
class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pt_with_pickled_code_is_refused_and_never_run(trained_run, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "weights.pt"
    torch.save({"item_head.weight": torch.zeros(2, 2), "hook": Payload(marker)}, evil)
    code, _, err = run_cli(["evaluate", str(trained_run), "--checkpoint", str(evil), "--no-plots",
                            "--output-dir", str(tmp_path / "ev")], capsys)
    error_line(code, err, exit_code=2, full=re.escape(
        f"e2i: error: {evil}: refused or unreadable torch file (only plain tensors are loaded, weights_only=True): "
        "unsupported global getattr"))  # the payload's pickle calls getattr(Path, "touch")
    assert not marker.exists()  # the payload was never executed
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_best_model_is_one_line(trained_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / "best_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) * 2 // 3], "empty": b"", "garbage": b"\x00" * 64}[damage])
    code, _, err = run_cli(["evaluate", str(run), "--no-plots"], capsys)
    reason = {"truncated": "incomplete metadata, file not fully covered", "empty": "header too small",
              "garbage": "invalid JSON in header: EOF while parsing a value at line 1 column 0"}[damage]
    error_line(code, err, exit_code=2, full=re.escape(
        f"e2i: error: {weights}: not a valid safetensors file (truncated or corrupt?): Error while deserializing "
        f"header: {reason}"))


@pytest.mark.parametrize("damage", ["train_state", "model", "progress"])
def test_damaged_checkpoint_on_resume_is_a_clear_error(trained_run, tmp_path, damage):
    """What a Ray Train worker does on resume (`run_training(resume_from=...)`) with a damaged checkpoint."""
    from e2i.config import load_train_config
    from e2i.train.driver import epoch_checkpoints
    from e2i.train.loop import run_training

    ckpt = tmp_path / "ckpt"
    shutil.copytree(epoch_checkpoints(trained_run)[2], ckpt)
    target = {"train_state": "train_state.safetensors", "model": "model.safetensors", "progress": "progress.json"}[damage]
    data = (ckpt / target).read_bytes()
    (ckpt / target).write_bytes(data[: len(data) // 2])
    cfg = load_train_config(trained_run / "config.yaml", ["optim.epochs=3"])
    with pytest.raises(CheckpointError) as info:
        run_training(cfg, report=lambda m, d: None, resume_from=str(ckpt))
    message = str(info.value)
    assert target in message and "\n" not in message


def test_checkpoint_of_a_bigger_model_names_the_tensor(trained_run, tmp_path, capsys):
    from e2i.config import load_train_config
    from e2i.model.heads import build_model
    from e2i.train.checkpoint import save_weights

    cfg = load_train_config(trained_run / "config.yaml", ["model.output_dim=32"])
    save_weights(build_model(cfg.model, 16, 12).state_dict(), tmp_path / "other.safetensors")
    code, _, err = run_cli(["evaluate", str(trained_run), "--checkpoint", str(tmp_path / "other.safetensors"),
                            "--no-plots", "--output-dir", str(tmp_path / "ev")], capsys)
    error_line(code, err, exit_code=2, full=re.escape(f"e2i: error: {tmp_path / 'other.safetensors'}: ") +
               r"caption_head\.\S+\.bias has shape \(32,\), the model expects \(16,\) \(config and checkpoint "
               r"disagree\)")  # the first mismatch in name order: the output layer's bias, output_dim 32 vs 16
