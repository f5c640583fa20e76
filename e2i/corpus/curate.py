"""Caption curation (DCASE-style clean-up of crowd-sourced captions) and :class:`Captions`, the collector
every reader uses to turn one item's raw captions into kept texts + stable ids + rejections.

    curate_caption("a a dog barks  .")   # -> ("a dog barks.", ["whitespace", "space_before_punct", "doubled_word"])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from e2i.corpus.rows import Corpus, Rejected

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


class Captions:
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
