"""``sbert``: Sentence-BERT text embeddings (Reimers & Gurevych, "Sentence-BERT: Sentence Embeddings using
Siamese BERT-Networks", EMNLP 2019), computed exactly as the ``sentence-transformers`` package does for
its Transformer -> Pooling -> Normalize models, without needing that package at run time. The older DCASE
pipeline's text side was ``sentence-transformers/all-mpnet-base-v2`` (the default here: MPNet-base,
768-d, max_seq_length 384, mean pooling, L2-normalised).

The pipeline is read from the model's own sentence-transformers files (hub id or local dir; the hub ones
are fetched with ``huggingface_hub`` like the weights, ``revision`` and ``$HF_TOKEN`` honoured):

- ``modules.json``: must be a Transformer, then Pooling, then optionally Normalize (anything else, e.g. a
  Dense projection, is a ConfigError naming the module);
- ``sentence_bert_config.json``: ``max_seq_length`` (else the tokenizer's ``model_max_length``) and
  ``do_lower_case`` (texts lower-cased before tokenising);
- ``<pooling dir>/config.json``: ``pooling_mode_mean_tokens`` / ``_cls_token`` / ``_lasttoken`` (v2-v5
  files) or ``pooling_mode`` (v6 files) -> mean / cls / last-token.

Maths: token states ``H`` (B, T, D) and attention mask ``m`` (B, T); mean pooling
``sum_t m_t H_t / sum_t m_t``; Normalize = ``x / max(||x||_2, 1e-12)``. Truncation keeps the first
``max_seq_length - 2`` word pieces plus the closing special token, as the tokenizer's ``longest_first``
truncation does for one sentence.

Options (``--encoder-option text.KEY=VALUE``): ``model``; ``max_length`` (null = the model's
``max_seq_length``); ``pooling`` (auto = the model's; or cls / mean / last-token); ``normalize`` (null = the
model's, i.e. true when it has a Normalize module); ``reject_too_long``; ``dtype``; ``revision``;
``trust_remote_code``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import DTYPES, Encoder, check_choice
from e2i.encoders.hf import POOLINGS, HFTextEncoder, _config, _token, _tokenizer
from e2i.errors import ConfigError

# sentence-transformers pooling mode -> e2i pooling (hf.pool)
ST_POOLINGS = {"mean": "mean", "cls": "cls", "lasttoken": "last-token"}


@dataclass(frozen=True)
class SBERTOptions:
    model: str = "sentence-transformers/all-mpnet-base-v2"  # or all-MiniLM-L6-v2, a local dir
    max_length: int | None = None  # None = the model's max_seq_length (all-mpnet-base-v2: 384)
    pooling: str = "auto"  # auto = the model's Pooling module
    normalize: bool | None = None  # None = the model's (Normalize module present)
    reject_too_long: bool = False  # False: truncate like sentence-transformers; True: reject the row
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("dtype", self.dtype, DTYPES)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max_length must be >= 2")


class SBERTEncoder(HFTextEncoder):
    name = "sbert"
    modality = "text"
    input_column = "text"
    Options = SBERTOptions

    def __init__(self, **options) -> None:
        Encoder.__init__(self, **options)  # HFTextEncoder's defaults (E5 instructions, EOS) do not apply
        o = self.opts
        st = read_pipeline(o.model, o.revision)
        pooling = st["pooling"] if o.pooling == "auto" else o.pooling
        normalize = st["normalize"] if o.normalize is None else o.normalize
        cap = getattr(self._hf(_tokenizer), "model_max_length", None)  # v6 files keep max_seq_length here
        max_length = o.max_length or st["max_seq_length"] or (int(cap) if cap and cap < 1_000_000 else 512)
        self.opts = dataclasses.replace(o, pooling=pooling, normalize=normalize, max_length=max_length)
        self.dim = int(self._hf(_config).hidden_size)
        self.options.update(
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            do_lower_case=st["do_lower_case"],
            instruction=None,  # read by HFTextEncoder.preprocess
            append_eos=False,
        )

    def preprocess(self, batch):
        if not self.options["do_lower_case"]:
            return super().preprocess(batch)
        lowered = np.array([t.lower() if isinstance(t, str) else t for t in batch["text"]], dtype=object)
        out = super().preprocess({**batch, "text": lowered})
        out["text"] = batch["text"]  # input columns pass through unchanged
        return out


def _st_json(model: str, name: str, revision: str | None) -> dict | None:
    """A sentence-transformers JSON file of ``model`` (local dir or hub repo), or None if absent."""
    if os.path.isdir(model):
        path = os.path.join(model, name)
        if not os.path.isfile(path):
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(model, name, revision=revision, token=_token())
        except EntryNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: all mean "cannot read it"
            raise ConfigError(
                f"encoder 'sbert': cannot read {name} of '{model}' ({str(e).splitlines()[0]})"
            ) from None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_pipeline(model: str, revision: str | None = None) -> dict:
    """{pooling, normalize, max_seq_length, do_lower_case} from a sentence-transformers model's files."""
    modules = _st_json(model, "modules.json", revision)
    if modules is None:
        raise ConfigError(
            f"encoder 'sbert': '{model}' has no modules.json (not a sentence-transformers model)"
        )
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        bad = next((k for k in kinds[2:] if k != "Normalize"), kinds[:2])
        raise ConfigError(
            f"encoder 'sbert': '{model}' modules {kinds}: only Transformer, Pooling[, Normalize] are supported "
            f"(found {bad})"
        )
    pool_cfg = _st_json(model, f"{modules[1]['path']}/config.json", revision) or {}
    mode = pool_cfg.get("pooling_mode")
    if mode is None:  # v2-v5 layout: one boolean per mode
        on = [k[len("pooling_mode_") :] for k, v in pool_cfg.items() if k.startswith("pooling_mode_") and v]
        mode = (
            {"mean_tokens": "mean", "cls_token": "cls", "lasttoken": "lasttoken"}.get(on[0], on[0])
            if len(on) == 1
            else on
        )
    if not isinstance(mode, str) or mode not in ST_POOLINGS:
        raise ConfigError(
            f"encoder 'sbert': '{model}' pooling {mode!r} is not supported (valid: mean, cls, lasttoken)"
        )
    sb = _st_json(model, "sentence_bert_config.json", revision) or {}
    return {
        "pooling": ST_POOLINGS[mode],
        "normalize": "Normalize" in kinds,
        "max_seq_length": sb.get("max_seq_length"),
        "do_lower_case": bool(sb.get("do_lower_case", False)),
    }
