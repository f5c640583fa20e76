"""Relevance files mapped onto a split (caption ids, query text, DCASE 2025 list layout, graded, parquet),
one-line errors naming file/row/field, the top-K dump, and the fine-tune metrics with the annotations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from e2i.corpus.download import CLOTHO_V21, DCASE2025_RELEVANCE
from e2i.corpus.rows import Item
from e2i.errors import ConfigError, CorpusError
from e2i.evaluate.metrics import retrieval_metrics
from e2i.evaluate.relevance import Relevance
from e2i.evaluate.relevance_file import load_relevance
from e2i.evaluate.topk import topk_table
from e2i.finetune.metrics import relevance_file_for, split_metrics
from e2i.store.reader import SplitData

NAMES = ["rain.wav", "dog bark.wav", "l'eau.wav"]  # a space and an apostrophe, as in Clotho


def _split(rng=None) -> SplitData:
    """3 clips x 2 captions; captions 0 and 5 share a text (the first occurrence is the query)."""
    rng = rng or np.random.default_rng(0)
    texts = ["rain falls", "heavy rain", "a dog barks", "barking", "water flows", "rain falls"]
    return SplitData(
        path="stores/x/test", item_ids=np.array(NAMES, object), item_emb=rng.random((3, 4), np.float32),
        caption_ids=np.array([f"{NAMES[i // 2]}#{i % 2 + 1}" for i in range(6)], object),
        caption_item=np.repeat(np.arange(3), 2), caption_emb=rng.random((6, 4), np.float32),
        caption_text=np.array(texts, object), item_paths=np.array([f"/data/eval/{n}" for n in NAMES], object))


def _pairs(rel: Relevance) -> list[tuple]:
    grades = rel.grade.tolist() if rel.grade is not None else [None] * len(rel.query)
    return list(zip(rel.query.tolist(), rel.item.tolist(), grades))


def test_caption_ids_query_text_and_dcase_layout_map_to_rows(tmp_path):
    split = _split()
    by_id = tmp_path / "by_id.csv"
    by_id.write_text("caption_id,item_id\nrain.wav#2,l'eau.wav\nrain.wav#2,rain.wav\ndog bark.wav#1,rain.wav\n"
                     "rain.wav#2,l'eau.wav\n")  # a repeated pair counts once
    assert _pairs(load_relevance(by_id, split)) == [(1, 0, None), (1, 2, None), (2, 0, None)]
    by_text = tmp_path / "by_text.csv"
    by_text.write_text('query,item_id\nrain falls,dog bark.wav\n"water flows",l\'eau.wav\n')
    assert _pairs(load_relevance(by_text, split)) == [(0, 1, None), (4, 2, None)]  # first "rain falls"
    # DCASE 2025 Task 6 metadata_eval.csv: query text + list literal of file names, HTML-escaped apostrophe
    dcase = tmp_path / "metadata_eval.csv"
    dcase.write_text('query,audio_filenames\n"a dog barks","[\'dog bark.wav\', \'l&#39;eau.wav\']"\n')
    assert _pairs(load_relevance(dcase, split)) == [(2, 1, None), (2, 2, None)]
    graded = tmp_path / "graded.parquet"
    pd.DataFrame({"caption_id": ["dog bark.wav#2", "dog bark.wav#2"],
                  "item_id": ["dog bark.wav", "rain.wav"], "relevance": [2.0, 0.5]}).to_parquet(graded)
    assert _pairs(load_relevance(graded, split)) == [(3, 0, 0.5), (3, 1, 2.0)]


@pytest.mark.parametrize("text, message", [
    ("caption_id,item_id\nrain.wav#1,rain.wav\nrain.wav#1,snow.wav\n", "row 2: item_id: 'snow.wav' is not an item"),
    ("caption_id,item_id\nrain.wav#9,rain.wav\n", "row 1: caption_id: 'rain.wav#9' is not a caption"),
    ("query,audio_filenames\nbarking,not a list\n", "row 1: audio_filenames: not a list literal"),
    ("caption_id,item_id,relevance\nrain.wav#1,rain.wav,high\n", "row 1: relevance: not a number"),
    ("caption,item\nx,y\n", "needs a query column"),
])
def test_bad_relevance_rows_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "rel.csv"
    path.write_text(text)
    with pytest.raises(CorpusError, match=message) as err:
        load_relevance(path, _split())
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_topk_table_flags_relevant_rows(tmp_path):
    split = _split()
    path = tmp_path / "rel.csv"
    path.write_text("caption_id,item_id\nrain.wav#1,dog bark.wav\n")  # caption 0: only item 1 is relevant
    rel = load_relevance(path, split)
    table = topk_table(split.item_emb, split.caption_emb, split, 2, relevance=rel).to_pandas()
    assert len(table) == 6 * 2 + 3 * 2
    scores = split.caption_emb @ split.item_emb.T  # (6, 3)
    for (direction, query), rows in table.groupby(["direction", "query_id"]):
        assert list(rows["rank"]) == [1, 2] and rows["score"].is_monotonic_decreasing
        if direction == "text_to_item":
            q = list(split.caption_ids).index(query)
            assert list(rows["retrieved_id"]) == [NAMES[j] for j in np.argsort(-scores[q])[:2]]
            want = {"dog bark.wav"} if q == 0 else {NAMES[split.caption_item[q]]}
            assert list(rows["relevant"]) == [r in want for r in rows["retrieved_id"]]
        else:
            assert list(rows["relevant"]) == [r.split("#")[0] == query for r in rows["retrieved_id"]]


def test_finetune_metrics_use_the_dcase_file_when_present(tmp_path):
    """split_metrics maps the annotations onto its own rows: batches in shuffled clip order with a padded
    duplicate clip give the metrics of the same relevance on the plain arrays."""
    assert DCASE2025_RELEVANCE in {f.name for f in CLOTHO_V21.extras}
    items = [Item(n, f"/data/eval/{n}", [f"text {n} {k}" for k in range(2)], "audio") for n in NAMES]
    rng = np.random.default_rng(1)
    item_z, cap_z = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)
    # batches: clips [2, 0] then [1, 2] (DistributedSampler padding repeats clip 2)
    parts = [(np.array([2, 0]), item_z[[2, 0]], np.array([2, 2, 0, 0]), cap_z[[4, 5, 0, 1]]),
             (np.array([1, 2]), item_z[[1, 2]], np.array([1, 1, 2, 2]), cap_z[[2, 3, 4, 5]])]
    (tmp_path / DCASE2025_RELEVANCE).write_text(
        'query,audio_filenames\n"text dog bark.wav 1","[\'rain.wav\', \'dog bark.wav\']"\n'
        '"text missing",[\'rain.wav\']\n')  # a query outside the evaluated clips is skipped
    path = relevance_file_for(tmp_path, "evaluation")
    assert path is not None and relevance_file_for(tmp_path, "validation") is None
    got = split_metrics(parts, ci=False, items=items, relevance=path)
    want = retrieval_metrics(item_z, cap_z, np.repeat(np.arange(3), 2), ci=False,
                             relevance=Relevance(np.array([3, 3]), np.array([0, 1])))
    assert got == pytest.approx(want)
    assert split_metrics(parts, ci=False) == pytest.approx(retrieval_metrics(item_z, cap_z, np.repeat(np.arange(3), 2),
                                                                             ci=False))


def test_relevance_from_labels_and_download_table():
    from e2i.corpus.download import DCASE2025_RELEVANCE_URL
    from e2i.evaluate.evaluation import load_relevance_for

    split = _split()
    split.item_meta["label"] = np.array(["rain", "dog", "rain"], object)
    rel = load_relevance_for(split, relevance_from="label")
    assert _pairs(rel)[:4] == [(0, 0, None), (0, 2, None), (1, 0, None), (1, 2, None)]
    with pytest.raises(ConfigError, match="not both"):
        load_relevance_for(split, relevance="x.csv", relevance_from="label")
    del split.item_meta["label"]
    with pytest.raises(ConfigError, match="needs a 'label' column"):
        load_relevance_for(split, relevance_from="label")
    assert load_relevance_for(split) is None
    # the annotations: pinned to the commit that published them, md5 of that file
    (extra,) = CLOTHO_V21.extras
    assert extra.url == DCASE2025_RELEVANCE_URL and "/14bd413eb214056f90fdbb338842527407fb9985/" in extra.url
    assert extra.md5 == "15de2d0afb9c11950f15c46a70b335ba" and extra.split == "evaluation"


def test_download_fetches_the_annotations_with_checksum_and_only_warns_when_missing(tmp_path, capsys):
    import functools
    import hashlib
    import http.server
    import threading

    from e2i.corpus import download as dl

    served = tmp_path / "served"
    served.mkdir()
    body = b'query,audio_filenames\n"rain","[\'rain.wav\']"\n'
    (served / "metadata_eval.csv").write_bytes(body)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        extra = dl.RemoteFile(DCASE2025_RELEVANCE, hashlib.md5(body).hexdigest(), "evaluation", f"{url}/metadata_eval.csv")
        spec = dl.DatasetSpec("t", f"{url}/nothing-here", (), "test", extras=(extra,))
        s = dl.download_dataset(spec, tmp_path / "root", progress=False)
        assert s["downloaded"] == [DCASE2025_RELEVANCE] and (tmp_path / "root" / DCASE2025_RELEVANCE).read_bytes() == body
        assert dl.download_dataset(spec, tmp_path / "root", progress=False)["present"] == [DCASE2025_RELEVANCE]
        assert dl.download_dataset(spec, tmp_path / "r2", splits=["development"], progress=False)["downloaded"] == []
        missing = dl.DatasetSpec("t", url, (), "test", extras=(dl.RemoteFile("gone.csv", "0" * 32, None, f"{url}/gone.csv"),))
        capsys.readouterr()
        assert dl.download_dataset(missing, tmp_path / "r3", progress=False, retries=0)["downloaded"] == []
        assert "warning:" in capsys.readouterr().out
    finally:
        server.shutdown()
