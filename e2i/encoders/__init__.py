"""Encoder registry: ``ENCODERS`` (name -> class) and ``get_encoder(name, **options)``.

=============  ========  =====================================  ======================================
name           modality  dim (defaults)                         needs
=============  ========  =====================================  ======================================
passt          audio     768 (embedding) / 527 / 1295           hear21passt weights (download) or a file
hf-text        text      config.hidden_size (roberta-base 768)  a transformers model (hub id / dir)
hf-image       image     vision hidden size (SigLIP-B 768)      a transformers model (hub id / dir)
siglip2        image     vision hidden size (B/16 768)          google/siglip2-* (fixed-res or NaFlex)
franca         image     768 / 1024 / 1536 (ViT-B/L/g 14)       valeoai/Franca release .pth (download)
panns          audio     2048 (embedding) / 527 / 2575          Cnn14_mAP=0.431.pth (Zenodo 3987831)
sbert          text      config.hidden_size (mpnet-base 768)    a sentence-transformers model (hub/dir)
logmel-stats   audio     3 * n_mels + 21 = 213                  nothing
ngram-hash     text      dim = 512                              nothing
image-stats    image     256                                    nothing
=============  ========  =====================================  ======================================

The interface every encoder implements (see :mod:`e2i.encoders.base` for the full contract)::

    enc = get_encoder("hf-text", model="roberta-base", pooling="cls")   # options -> enc.options (JSON)
    batch = enc.preprocess({"caption_id": ids, "text": texts})          # CPU task: adds columns + "error"
    enc.load("cuda" if torch.cuda.is_available() else "cpu")            # once per actor
    emb = enc.embed(batch)                                              # (B, D) float32, NaN rows = error

Input column: ``path`` for audio/image encoders, ``text`` for text encoders (``enc.input_column``).
Columns added by ``preprocess``: audio ``audio`` (object array of (T,) float32), ``num_samples``;
hf-text ``input_ids`` (object array of int64 token ids), ``num_tokens``; hf-image ``pixel_values``
(B, 3, H, W) float32; image-stats ``pixels`` (B, S, S, 3) uint8, ``aspect``; all ``error`` (str, "" = ok).

One module per encoder over :mod:`~e2i.encoders.base` (interface, audio/image/text input decoding):
:mod:`~e2i.encoders.passt`, :mod:`~e2i.encoders.hf` (hf-text, hf-image), :mod:`~e2i.encoders.siglip2`,
:mod:`~e2i.encoders.franca` (its ViT: :mod:`~e2i.encoders.vit`), :mod:`~e2i.encoders.panns`,
:mod:`~e2i.encoders.sbert` (each documents its options), and the light built-ins (no
download, deterministic) :mod:`~e2i.encoders.logmel_stats`, :mod:`~e2i.encoders.ngram_hash`,
:mod:`~e2i.encoders.image_stats`. May import: e2i.errors, e2i.corpus.audio; no ray; torch, torchaudio, torchvision,
transformers, huggingface_hub, hear21passt, PIL and soundfile only inside functions (importing the registry loads none of them).
"""

from __future__ import annotations

from typing import Any

from e2i.encoders.base import ERROR, Encoder
from e2i.encoders.franca import FrancaEncoder
from e2i.encoders.hf import HFImageEncoder, HFTextEncoder
from e2i.encoders.image_stats import ImageStatsEncoder
from e2i.encoders.logmel_stats import LogMelStatsEncoder
from e2i.encoders.ngram_hash import NgramHashEncoder
from e2i.encoders.panns import PannsEncoder
from e2i.encoders.passt import PasstEncoder
from e2i.encoders.sbert import SBERTEncoder
from e2i.encoders.siglip2 import Siglip2ImageEncoder
from e2i.errors import ConfigError

ENCODERS: dict[str, type[Encoder]] = {
    "passt": PasstEncoder,
    "hf-text": HFTextEncoder,
    "hf-image": HFImageEncoder,
    "siglip2": Siglip2ImageEncoder,
    "franca": FrancaEncoder,
    "panns": PannsEncoder,
    "sbert": SBERTEncoder,
    "logmel-stats": LogMelStatsEncoder,
    "ngram-hash": NgramHashEncoder,
    "image-stats": ImageStatsEncoder,
}

# Built-ins that need no download, per modality (the embedded default / demo).
LIGHT_DEFAULTS = {"audio": "logmel-stats", "text": "ngram-hash", "image": "image-stats"}


def get_encoder(name: str, **options: Any) -> Encoder:
    """Build an encoder by registry name; unknown names/options raise ConfigError listing valid ones.

    Options are passed as given (``None`` is a value, e.g. ``instruction=None`` = no instruction); leave
    an option out to get its default."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder '{name}' (valid: {', '.join(ENCODERS)})")
    return ENCODERS[name](**options)


__all__ = [
    "ENCODERS",
    "ERROR",
    "LIGHT_DEFAULTS",
    "Encoder",
    "FrancaEncoder",
    "HFImageEncoder",
    "HFTextEncoder",
    "ImageStatsEncoder",
    "LogMelStatsEncoder",
    "NgramHashEncoder",
    "PannsEncoder",
    "PasstEncoder",
    "SBERTEncoder",
    "Siglip2ImageEncoder",
    "get_encoder",
]
