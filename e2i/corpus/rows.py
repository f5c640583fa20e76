"""What every corpus reader returns: :class:`Corpus` (one split) of :class:`Item` rows, plus the
:class:`Rejected` rows that did not make it, and the caption changes made by curation.

Conventions: ``Item.path`` is absolute; caption ids are ``f"{item_id}#{k}"`` with ``k`` the 1-based
caption number in the source (Clotho ``caption_k``), kept stable when an empty caption is dropped
(``Item.caption_ids``). ``Rejected.source`` is ``file:line`` or ``file:key[i]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
