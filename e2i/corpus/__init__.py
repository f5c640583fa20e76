"""Raw corpora: paired data on disk -> :class:`Corpus` (items with captions), before any embedding.

- :mod:`~e2i.corpus.rows`: ``Corpus``, ``Item``, ``Rejected`` (what every reader returns);
- :mod:`~e2i.corpus.readers`: ``READERS`` (kind -> reader) and ``read_corpus(kind, path, ...)``;
- one reader per kind: :mod:`~e2i.corpus.clotho`, :mod:`~e2i.corpus.coco`, :mod:`~e2i.corpus.jsonl`,
  :mod:`~e2i.corpus.imagefolder`, over :mod:`~e2i.corpus.files` (shared file helpers) and
  :mod:`~e2i.corpus.curate` (caption curation);
- :mod:`~e2i.corpus.toy`: the built-in toy corpus (``e2i toy``);
- :mod:`~e2i.corpus.download` (``e2i download``, dataset tables) over :mod:`~e2i.corpus.fetch`
  (resumable, checksummed download and extraction).

May import: e2i.errors (and numpy in toy). No ray, no torch.
"""

from e2i.corpus.curate import CAPTION_FIXES, curate_caption
from e2i.corpus.files import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS
from e2i.corpus.readers import READERS, read_corpus
from e2i.corpus.rows import Corpus, Item, Rejected

__all__ = [
    "AUDIO_EXTENSIONS",
    "CAPTION_FIXES",
    "IMAGE_EXTENSIONS",
    "READERS",
    "Corpus",
    "Item",
    "Rejected",
    "curate_caption",
    "read_corpus",
]
