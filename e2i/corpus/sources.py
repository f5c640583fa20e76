"""Corpus readers: raw paired data on disk -> :class:`Corpus` (items with captions), no embeddings yet.

    corpus = read_corpus("clotho", "data/Clotho.v2.1", split="development", curate=True)
    print(corpus.summary())   # clotho/development: 3839 items, 19195 captions, 0 rejected, 12 curated

Readers (``READERS``) and what they accept:

- ``clotho``: Clotho v2.1. ``clotho_captions_<split>.csv`` (columns ``file_name, caption_1..caption_5``)
  in the corpus dir or in ``<dir>/clotho_csv_files/`` (DCASE baseline layout); audio in the first
  existing of ``clotho_audio_files/<split>/`` (DCASE baseline / aac-datasets), ``<split>/`` (what the
  Zenodo ``clotho_audio_<split>.7z`` archives extract to) or ``clotho_audio_<split>/``, looked up
  next to the CSV and next to ``clotho_csv_files/``. ``path`` may also be the CSV itself. File names
  with spaces are used as they are; if a name is not on disk, a file whose name differs only in
  Unicode normal form, case, spaces or underscores is used when it is the only such file.
  A ``toy_attributes_<split>.csv`` beside the CSV (written by :func:`e2i.corpus.toy.make_toy_corpus`) is
  merged into ``Item.meta`` and names the corpus ``toy``.
- ``coco``: COCO captions, ``annotations/captions_<split>.json`` (``images [{id, file_name}]``,
  ``annotations [{image_id, caption, id}]``) + images in ``<root>/<split>/``, ``<root>/images/<split>/``
  or ``<root>/images/``. ``split="val"`` finds ``captions_val2017.json`` when it is the only match.
  Items are images (``item_id`` = file_name, ``meta["image_id"]``), captions grouped per image.
- ``jsonl``: generic metadata, ``.jsonl`` (one record per line) or ``.json`` (a list of records or
  ``{"data": [...]}`` as in WavCaps). A directory holds ``<split>.jsonl``/``.json`` or ``metadata.jsonl``.
  Each record: media path under ``path``/``audio``/``image``/``file``/``file_name`` (relative paths are
  resolved against the metadata file's dir), ``caption`` (str) or ``captions`` (list of str), optional
  ``id`` (default: the path as written) and ``modality`` (default: from the file extension). Other
  scalar keys go to ``Item.meta``.
- ``imagefolder``: ``<root>[/<split>]/<class>/**/<image>``; one item per image, ``item_id`` =
  ``<class>/<file>``, caption = ``template.format(class name with underscores as spaces)``
  (``template="{}"`` keeps the raw class name: ``golden_retriever`` -> ``golden retriever``).

Conventions: ``Item.path`` is absolute; caption ids are ``f"{item_id}#{k}"`` with ``k`` the 1-based
caption number in the source (Clotho ``caption_k``), kept stable when an empty caption is dropped
(``Item.caption_ids``). Per-row problems become :class:`Rejected` rows (``source`` = ``file:line`` or
``file:key[i]``) and the read goes on; a file that cannot be read at all, or lacks required columns/keys,
raises :class:`~e2i.errors.CorpusError`. Curation (``curate=True``) is listed in ``Corpus.curation``.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2i.errors import CorpusError

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CLOTHO_COLUMNS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
PATH_KEYS = ("path", "audio", "image", "file", "file_name")
_BAD_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape turns undecodable bytes into


@dataclass
class Item:
    """One audio clip or image with its captions. ``caption_ids[i]`` names ``captions[i]``."""

    item_id: str
    path: str
    captions: list[str]
    modality: str  # "audio" | "image"
    meta: dict = field(default_factory=dict)
    caption_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.caption_ids:
            self.caption_ids = [f"{self.item_id}#{k}" for k in range(1, len(self.captions) + 1)]
        if len(self.caption_ids) != len(self.captions):
            raise ValueError(
                f"{self.item_id}: {len(self.caption_ids)} caption ids for {len(self.captions)} captions"
            )


@dataclass
class Rejected:
    """A row that was not turned into an item/caption: where it came from, its id, and why."""

    source: str
    id: str
    reason: str


@dataclass
class Corpus:
    """Items of one split plus everything that was rejected or changed on the way."""

    name: str
    split: str
    items: list[Item]
    rejected: list[Rejected] = field(default_factory=list)
    curation: list[dict] = field(default_factory=list)  # {item_id, caption_index, before, after, rules}

    @property
    def num_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)

    def caption_rows(self) -> list[dict]:
        """Flat caption table: ``{caption_id, item_id, text}`` (the store's captions columns)."""
        return [
            {"caption_id": cid, "item_id": it.item_id, "text": text}
            for it in self.items
            for cid, text in zip(it.caption_ids, it.captions)
        ]

    def rejected_rows(self) -> list[dict]:
        """``{source, id, reason}`` dicts, ready for ``StoreWriter.write_rejected``."""
        return [asdict(r) for r in self.rejected]

    def summary(self) -> str:
        return (
            f"{self.name}/{self.split}: {len(self.items)} items, {self.num_captions} captions, "
            f"{len(self.rejected)} rejected, {len(self.curation)} captions curated"
        )


# --------------------------------------------------------------------------------------------------
# Caption curation (DCASE-style clean-up of crowd-sourced captions)

# Misspellings seen in crowd-sourced audio/image captions; matched as whole words, case kept.
CAPTION_FIXES = {
    "echos": "echoes",
    "echoe": "echo",
    "accross": "across",
    "occuring": "occurring",
    "occured": "occurred",
    "begining": "beginning",
    "backround": "background",
    "bacground": "background",
    "continously": "continuously",
    "continuosly": "continuously",
    "seperate": "separate",
    "seperately": "separately",
    "wich": "which",
    "thier": "their",
    "untill": "until",
    "whistleing": "whistling",
    "rythm": "rhythm",
    "rythmic": "rhythmic",
    "rythmically": "rhythmically",
    "dissapears": "disappears",
    "apparantly": "apparently",
    "wooshing": "whooshing",
    "woosh": "whoosh",
    "peices": "pieces",
    "alot": "a lot",
}
# Words that are (almost) never correctly doubled: "a a", "the the"; "that that" / "had had" are
# valid English and left alone.
_DOUBLED = ("a", "an", "the", "of", "in", "on", "at", "to", "and", "is", "are", "with", "by", "for", "from")
_RE_SPACES = re.compile(r"\s+")
_RE_SPACE_PUNCT = re.compile(r"\s+([.,!?;:])")
_RE_DOUBLED = re.compile(r"\b(" + "|".join(_DOUBLED) + r")(\s+\1)+\b", re.IGNORECASE)
_RE_FIXES = re.compile(
    r"\b(" + "|".join(sorted(CAPTION_FIXES, key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def _keep_case(fixed: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return fixed.upper()
    return fixed[0].upper() + fixed[1:] if original[0].isupper() else fixed


def curate_caption(text: str) -> tuple[str, list[str]]:
    """Clean one caption; return (new text, names of the rules that changed it).

    Rules, in order: ``whitespace`` (strip, collapse runs), ``space_before_punct`` ("dog ." -> "dog."),
    ``doubled_word`` ("a a dog" -> "a dog", function words only), ``spelling`` (``CAPTION_FIXES``).
    """
    rules = []
    steps: list[tuple[str, Callable[[str], str]]] = [
        ("whitespace", lambda s: _RE_SPACES.sub(" ", s).strip()),
        ("space_before_punct", lambda s: _RE_SPACE_PUNCT.sub(r"\1", s)),
        ("doubled_word", lambda s: _RE_DOUBLED.sub(r"\1", s)),
        ("spelling", lambda s: _RE_FIXES.sub(lambda m: _keep_case(CAPTION_FIXES[m[1].lower()], m[1]), s)),
    ]
    for name, step in steps:
        new = step(text)
        if new != text:
            rules.append(name)
            text = new
    return text, rules


class _Captions:
    """Collects the captions of one item: drops empty ones (reported), curates, keeps ids stable."""

    def __init__(self, item_id: str, source: str, corpus: Corpus, curate: bool):
        self.item_id, self.source, self.corpus, self.curate = item_id, source, corpus, curate
        self.texts: list[str] = []
        self.ids: list[str] = []
        self.empty: list[Rejected] = []

    def add(self, k: int, text: Any, label: str) -> None:
        cid = f"{self.item_id}#{k}"
        if not isinstance(text, str) or not text.strip():
            what = "empty" if isinstance(text, str) or text is None else "non-text"
            self.empty.append(Rejected(self.source, cid, f"{what} {label}: caption dropped"))
            return
        if self.curate:
            new, rules = curate_caption(text)
            if rules:
                self.corpus.curation.append(
                    {
                        "item_id": self.item_id,
                        "caption_index": k,
                        "before": text,
                        "after": new,
                        "rules": rules,
                    }
                )
            text = new
        self.texts.append(text)
        self.ids.append(cid)

    def finish(self) -> bool:
        """Report dropped captions; False (and one rejection for the item) when none are left."""
        if not self.texts:
            n = len(self.empty)
            reason = "no captions" if n == 0 else "empty caption" if n == 1 else f"all {n} captions empty"
            self.corpus.rejected.append(Rejected(self.source, self.item_id, reason))
            return False
        self.corpus.rejected.extend(self.empty)
        return True


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _printable(text: str) -> str:
    """Undecodable bytes (surrogateescape) shown as U+FFFD so ids/messages stay printable."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_text(path: Path) -> str:
    """Whole file as text; bad UTF-8 bytes kept as lone surrogates so rows can be rejected one by one."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"{path}: cannot read ({err.strerror})") from err
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


class _FileFinder:
    """Finds ``name`` in ``folder``; falls back to a unique match ignoring Unicode form, case, spaces
    and underscores (archives extracted on other systems, or names 'fixed' by hand)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._index: dict[str, list[str]] | None = None

    @staticmethod
    def _key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold().replace(" ", "").replace("_", "")

    def find(self, name: str) -> Path | None:
        exact = self.folder / name
        if exact.is_file():
            return exact
        if self._index is None:
            self._index = {}
            for entry in os.listdir(self.folder) if self.folder.is_dir() else []:
                self._index.setdefault(self._key(entry), []).append(entry)
        hits = self._index.get(self._key(name), [])
        return self.folder / hits[0] if len(hits) == 1 and (self.folder / hits[0]).is_file() else None


def _check_file(path: Path | None, label: str) -> str:
    """'' if ``path`` is a non-empty file, else the rejection reason."""
    if path is None or not path.is_file():
        return f"{label} file not found: {path}"
    if path.stat().st_size == 0:
        return f"{label} file is empty: {path}"
    return ""


def _modality(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "audio" if ext in AUDIO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else None


# --------------------------------------------------------------------------------------------------
# Clotho


def _find_clotho_csv(path: Path, split: str | None) -> tuple[Path, str]:
    if path.is_file():
        m = re.fullmatch(r"clotho_captions_(.+)\.csv", path.name)
        return path, split or (m[1] if m else path.stem)
    folders = [path, path / "clotho_csv_files"]
    if split is not None:
        for folder in folders:
            if (folder / f"clotho_captions_{split}.csv").is_file():
                return folder / f"clotho_captions_{split}.csv", split
        raise CorpusError(f"{path}: no clotho_captions_{split}.csv here or in clotho_csv_files/")
    found = sorted(p for folder in folders for p in folder.glob("clotho_captions_*.csv"))
    if len(found) != 1:
        names = ", ".join(p.name[len("clotho_captions_") : -4] for p in found) or "none found"
        raise CorpusError(f"{path}: pass a split (clotho_captions_<split>.csv: {names})")
    return found[0], found[0].name[len("clotho_captions_") : -4]


def _find_clotho_audio(csv_path: Path, split: str) -> Path:
    roots = [csv_path.parent] + (
        [csv_path.parent.parent] if csv_path.parent.name == "clotho_csv_files" else []
    )
    tried = [
        r / sub for r in roots for sub in (f"clotho_audio_files/{split}", split, f"clotho_audio_{split}")
    ]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise CorpusError(f"{csv_path}: no audio folder for split {split!r} (tried {', '.join(map(str, tried))})")


def _csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str], str]]]:
    """Header and ``(line, fields, problem)`` per non-blank record (line = where the record starts)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CorpusError(f"{path}: empty file (no header row)") from None
    except csv.Error as err:
        raise CorpusError(f"{path}: unreadable header ({err})") from err

    def rows() -> Iterator[tuple[int, list[str], str]]:
        prev = reader.line_num
        while True:
            try:
                row, problem = next(reader), ""
            except StopIteration:
                return
            except csv.Error as err:  # e.g. a NUL byte: report the record, go on after it
                row, problem = [], f"unreadable row ({err})"
            if row or problem:
                yield prev + 1, row, problem
            prev = reader.line_num

    return header, rows()


def _load_toy_attributes(csv_path: Path, split: str) -> dict[str, dict] | None:
    side = csv_path.parent / f"toy_attributes_{split}.csv"
    if not side.is_file():
        return None
    header, rows = _csv_rows(side)
    return {
        row[0]: {k: _number(v) for k, v in zip(header[1:], row[1:])}
        for _, row, _ in rows
        if len(row) == len(header)
    }


def _number(text: str) -> str | int | float:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_clotho(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """Clotho v2.1 captions CSV + audio folder -> Corpus (see module docstring for layouts)."""
    csv_path, split = _find_clotho_csv(Path(path), split)
    audio_dir = _find_clotho_audio(csv_path, split)
    header, rows = _csv_rows(csv_path)
    missing = [c for c in CLOTHO_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    col = {name: header.index(name) for name in CLOTHO_COLUMNS}
    toy = _load_toy_attributes(csv_path, split)
    corpus = Corpus("toy" if toy is not None else "clotho", split, [])
    finder, seen = _FileFinder(audio_dir), {}
    for line, row, problem in rows:
        source = f"{csv_path.name}:{line}"
        name = row[col["file_name"]] if len(row) > col["file_name"] else ""
        reason = problem or _clotho_row_problem(row, header, col, seen)
        if reason:
            corpus.rejected.append(Rejected(source, _printable(name), reason))
            continue
        seen[name] = line
        caps = _Captions(name, source, corpus, curate)
        for k in range(1, 6):
            caps.add(k, row[col[f"caption_{k}"]], f"caption_{k}")
        audio = finder.find(name)
        reason = _check_file(audio if audio else audio_dir / name, "audio")
        if reason:
            corpus.rejected.append(Rejected(source, name, reason))
        elif caps.finish():
            meta = dict(toy.get(name, {})) if toy else {}
            corpus.items.append(Item(name, str(audio.absolute()), caps.texts, "audio", meta, caps.ids))
    return corpus


def _clotho_row_problem(row: list[str], header: list[str], col: dict[str, int], seen: dict[str, int]) -> str:
    if len(row) != len(header):
        return f"unreadable row: expected {len(header)} columns, got {len(row)}"
    bad = [h for h, v in zip(header, row) if _BAD_UTF8.search(v) and h in col]
    if bad:
        return f"not valid UTF-8 text in {', '.join(bad)}"
    name = row[col["file_name"]]
    if not name.strip():
        return "empty file_name"
    if name in seen:
        return f"duplicate file_name (first at line {seen[name]})"
    return ""


# --------------------------------------------------------------------------------------------------
# JSON helpers, COCO


def _load_json(path: Path) -> Any:
    text = _read_text(path)
    if _BAD_UTF8.search(text):
        line = text[: _BAD_UTF8.search(text).start()].count("\n") + 1
        raise CorpusError(f"{path}: not valid UTF-8 (line {line})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


def _find_coco_json(path: Path, split: str | None) -> tuple[Path, str]:
    if path.is_file():
        m = re.fullmatch(r"captions_(.+)\.json", path.name)
        return path, (m[1] if m else split or path.stem)
    folder = path / "annotations" if (path / "annotations").is_dir() else path
    exact = folder / f"captions_{split}.json"
    if split is not None and exact.is_file():
        return exact, split
    found = sorted(folder.glob(f"captions_{split or ''}*.json"))
    if len(found) != 1:
        splits = (
            ", ".join(p.stem[len("captions_") :] for p in sorted(folder.glob("captions_*.json"))) or "none"
        )
        wanted = f"one captions_{split}*.json" if split else "a split"
        raise CorpusError(f"{folder}: need {wanted} (captions_<split>.json found: {splits})")
    return found[0], found[0].stem[len("captions_") :]


def _find_coco_images(json_path: Path, split: str) -> Path:
    root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    tried = [root / split, root / "images" / split, root / "images"]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise CorpusError(
        f"{json_path}: no image folder for split {split!r} (tried {', '.join(map(str, tried))})"
    )


def read_coco(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """COCO captions JSON + image folder -> Corpus, one item per image (captions in file order)."""
    json_path, split = _find_coco_json(Path(path), split)
    data = _load_json(json_path)
    missing = [k for k in ("images", "annotations") if not isinstance(data, dict) or k not in data]
    if missing:
        raise CorpusError(f"{json_path}: missing key(s) {', '.join(missing)}")
    image_dir, corpus, name = _find_coco_images(json_path, split), Corpus("coco", split, []), json_path.name
    images: dict[Any, tuple[str, str]] = {}  # image id -> (file_name, source)
    for i, img in enumerate(data["images"]):
        source = f"{name}:images[{i}]"
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            corpus.rejected.append(
                Rejected(
                    source,
                    str(img.get("id", "")) if isinstance(img, dict) else "",
                    "image record without id/file_name",
                )
            )
        elif img["id"] in images:
            corpus.rejected.append(Rejected(source, img["file_name"], f"duplicate image id {img['id']}"))
        else:
            images[img["id"]] = (img["file_name"], source)
    captions: dict[Any, list[str]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in captions:
            ann_id = str(ann.get("id", "")) if isinstance(ann, dict) else ""
            corpus.rejected.append(
                Rejected(f"{name}:annotations[{i}]", ann_id, f"unknown image_id {image_id!r}")
            )
        else:
            captions[image_id].append(ann.get("caption"))
    for image_id, (file_name, source) in images.items():
        caps = _Captions(file_name, source, corpus, curate)
        for k, text in enumerate(captions[image_id], start=1):
            caps.add(k, text, f"caption {k}")
        reason = _check_file(image_dir / file_name, "image")
        if reason:
            corpus.rejected.append(Rejected(source, file_name, reason))
        elif caps.finish():
            corpus.items.append(
                Item(
                    file_name,
                    str((image_dir / file_name).absolute()),
                    caps.texts,
                    "image",
                    {"image_id": image_id},
                    caps.ids,
                )
            )
    return corpus


# --------------------------------------------------------------------------------------------------
# Generic JSON / JSONL metadata


def _find_metadata(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    names = ([f"{split}.jsonl", f"{split}.json", f"metadata_{split}.jsonl"] if split else []) + [
        "metadata.jsonl",
        "metadata.json",
    ]
    for name in names:
        if (path / name).is_file():
            return path / name
    raise CorpusError(f"{path}: no metadata file (looked for {', '.join(names)})")


def _records(path: Path) -> Iterator[tuple[str, Any, str]]:
    """``(source, record, problem)`` per record of a .json or .jsonl file."""
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise CorpusError(f'{path}: expected a list of records or {{"data": [...]}}')
        for i, rec in enumerate(data):
            yield f"{path.name}:[{i}]", rec, ""
        return
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        source = f"{path.name}:{line_no}"
        if not line.strip():
            continue
        if _BAD_UTF8.search(line):
            yield source, None, "not valid UTF-8 text"
            continue
        try:
            yield source, json.loads(line), ""
        except json.JSONDecodeError as err:
            yield source, None, f"not valid JSON ({err.msg})"


def _record_path(rec: dict) -> str | None:
    for key in PATH_KEYS:
        value = rec.get(key)
        if isinstance(value, dict):  # Hugging Face style {"path": ..., "bytes": ...}
            value = value.get("path")
        if isinstance(value, str) and value.strip():
            return value
    return None


def read_jsonl(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """Generic JSON/JSONL metadata (media path + caption(s) per record) -> Corpus."""
    meta_path = _find_metadata(Path(path), split)
    base = meta_path.parent
    corpus, seen = Corpus(meta_path.stem, split or meta_path.stem, []), {}
    for source, rec, problem in _records(meta_path):
        if not problem and not isinstance(rec, dict):
            problem = "record is not a JSON object"
        raw = _record_path(rec) if not problem else None
        if not problem and raw is None:
            problem = f"no media path (keys tried: {', '.join(PATH_KEYS)})"
        item_id = str(rec.get("id", raw)) if isinstance(rec, dict) and raw else ""
        modality = (rec.get("modality") or _modality(raw)) if raw else None
        if not problem and "://" in raw:
            problem = f"remote path not supported: {raw}"
        elif not problem and modality not in ("audio", "image"):
            problem = f"cannot tell modality of {raw!r} (extension not audio/image, no 'modality' key)"
        elif not problem and item_id in seen:
            problem = f"duplicate id (first at {seen[item_id]})"
        if problem:
            corpus.rejected.append(Rejected(source, item_id, problem))
            continue
        seen[item_id] = source
        media = Path(os.path.expanduser(raw))
        media = media if media.is_absolute() else base / media
        texts = (
            rec["captions"]
            if isinstance(rec.get("captions"), list)
            else ([rec["caption"]] if "caption" in rec else [])
        )
        caps = _Captions(item_id, source, corpus, curate)
        for k, text in enumerate(texts, start=1):
            caps.add(k, text, f"caption {k}")
        reason = _check_file(media, modality)
        if reason:
            corpus.rejected.append(Rejected(source, item_id, reason))
        elif caps.finish():
            meta = {
                k: v
                for k, v in rec.items()
                if k not in {"id", "caption", "captions", "modality", *PATH_KEYS}
                and isinstance(v, (str, int, float, bool))
            }
            corpus.items.append(Item(item_id, str(media.absolute()), caps.texts, modality, meta, caps.ids))
    return corpus


# --------------------------------------------------------------------------------------------------
# Image folders with class sub-folders


def read_imagefolder(
    path: str | os.PathLike, *, split: str | None = None, curate: bool = False, template: str = "{}"
) -> Corpus:
    """``<root>[/<split>]/<class>/**/<image>`` -> one item per image, caption from the class name."""
    root = Path(path) / split if split else Path(path)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorpusError(f"{root}: no class sub-folders")
    corpus = Corpus("imagefolder", split or "all", [])
    for stray in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        corpus.rejected.append(Rejected(stray.name, stray.name, "file not inside a class folder"))
    for folder in classes:
        label = folder.name
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            item_id = _rel(file, root)
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue  # hidden files (.DS_Store, ._foo.jpg) are not data
            reason = "" if _modality(file.name) == "image" else "not an image file (extension)"
            reason = reason or _check_file(file, "image")
            if reason:
                corpus.rejected.append(Rejected(item_id, item_id, reason))
                continue
            caps = _Captions(item_id, item_id, corpus, curate)
            caps.add(1, template.format(label.replace("_", " ")), "class name")
            if caps.finish():
                corpus.items.append(
                    Item(item_id, str(file.absolute()), caps.texts, "image", {"label": label}, caps.ids)
                )
    return corpus


# --------------------------------------------------------------------------------------------------
# Registry

READERS: dict[str, Callable[..., Corpus]] = {
    "clotho": read_clotho,
    "coco": read_coco,
    "jsonl": read_jsonl,
    "imagefolder": read_imagefolder,
}


def read_corpus(
    kind: str, path: str | os.PathLike, *, split: str | None = None, curate: bool = False, **options: Any
) -> Corpus:
    """Read a corpus with ``READERS[kind]``; ``options`` go to the reader (e.g. imagefolder ``template``)."""
    if kind not in READERS:
        raise CorpusError(f"unknown corpus kind {kind!r}; valid: {', '.join(READERS)}")
    if not Path(path).exists():
        raise CorpusError(f"{path}: no such file or directory")
    reader = READERS[kind]
    try:
        inspect.signature(reader).bind(path, split=split, curate=curate, **options)
    except TypeError as err:
        raise CorpusError(f"corpus kind {kind!r}: {err}") from err
    return reader(path, split=split, curate=curate, **options)
