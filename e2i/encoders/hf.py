"""``hf-text`` and ``hf-image``: transformers models (hub ids or local dirs).

Loading is what a user with internet expects: ``from_pretrained(model, revision=..., token=$HF_TOKEN)``
(the token only ever comes from the environment and is never recorded). The model's config is read when
the encoder is constructed, so a wrong id fails early on the driver, ``dim`` is known before any weights
load, and ``options`` records resolved values (``pooling: auto`` -> ``cls``).

hf-text pooling (over the last hidden state ``(B, T, H)`` with attention mask ``(B, T)``):

- ``cls``: the first token (RoBERTa/BERT; the DCASE retrieval baseline uses RoBERTa's CLS token).
- ``mean``: mask-weighted mean over tokens (sentence-transformers style models, E5/GTE encoders).
- ``last-token``: the last non-padding token, with EOS appended (decoder LLM embedders such as
  ``intfloat/e5-mistral-7b-instruct``; Wang et al. 2024, "Improving Text Embeddings with LLMs").

``pooling="auto"`` picks last-token for decoder models, mean for sentence-transformers/E5/GTE-style
encoders, cls otherwise. ``instruction="auto"`` prefixes E5-style instruct models' inputs with
``"Instruct: <task>\\nQuery: "`` (captions are the queries of text->item retrieval); others get none.
Tokenisation happens in ``preprocess`` (CPU tasks); ``embed`` only pads and runs the model.

hf-image: SigLIP / SigLIP 2 / CLIP vision towers (from full or vision-only checkpoints) and DINOv2, chosen
from the config's ``model_type``; anything else goes through ``AutoModel``. Every model input the image
processor returns is kept (SigLIP 2 NaFlex: patches, ``pixel_attention_mask``, ``spatial_shapes``). Output = ``pooler_output`` (SigLIP:
attention-pooling head; CLIP/DINOv2: normalised CLS), falling back to the first token.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import (
    DTYPES,
    ERROR,
    Encoder,
    InputError,
    check_choice,
    check_text,
    load_image,
    object_column,
    resolve_dtype,
)
from e2i.errors import ConfigError

E5_INSTRUCTION = "Given an audio or image caption, retrieve the recording or picture it describes"
POOLINGS = ("auto", "cls", "mean", "last-token")
DECODER_TYPES = {
    "mistral",
    "llama",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi",
    "phi3",
    "gpt2",
    "gpt_neox",
    "falcon",
    "mixtral",
}
# Image-processor outputs the vision towers take: NaFlex (SigLIP 2) adds the patch mask and grid sizes.
FULL_DUAL_TYPES = ("siglip", "siglip2", "clip")  # dual-encoder checkpoints read as a vision tower
MODEL_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
MEAN_POOL_HINTS = ("sentence-transformers/", "all-minilm", "all-mpnet", "e5-", "gte-", "bge-m3")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _pretrained(cls, model: str, revision: str | None, trust_remote_code: bool, **kwargs):
    """``cls.from_pretrained`` as every hf load does it (config, tokenizer, processor, weights): the
    encoder's ``revision`` and ``trust_remote_code``, the token from ``$HF_TOKEN`` only (never recorded)."""
    return cls.from_pretrained(
        model, revision=revision, token=_token(), trust_remote_code=trust_remote_code, **kwargs
    )


@functools.lru_cache(maxsize=8)
def _config(model: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return _pretrained(AutoConfig, model, revision, trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"encoder model '{model}': cannot load its config ({str(e).strip().splitlines()[0]})"
        ) from None


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return _pretrained(AutoTokenizer, model, revision, trust_remote_code)


@functools.lru_cache(maxsize=4)
def _processor(model: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoImageProcessor

    return _pretrained(AutoImageProcessor, model, revision, trust_remote_code)


def _is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return config.model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def default_pooling(model: str, config) -> str:
    if _is_decoder(config):
        return "last-token"
    name = model.lower()
    if any(h in name for h in MEAN_POOL_HINTS) or os.path.isfile(os.path.join(model, "modules.json")):
        return "mean"
    return "cls"


@contextlib.contextmanager
def _quiet_transformers(quiet: bool):
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity()
    if quiet:
        tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(before)


class _HFEncoder(Encoder):
    """What hf-text and hf-image share: options ``model``/``revision``/``trust_remote_code``/``dtype``,
    the model's config (read at construction, cached) and the weights loaded in ``_load``."""

    def _hf(self, loader):
        """``loader(model, revision, trust_remote_code)`` for this encoder's model (config, tokenizer, ...)."""
        o = self.opts
        return loader(o.model, o.revision, o.trust_remote_code)

    def _load_model(self, cls, device: str, *, quiet: bool = False) -> None:
        """Weights of ``cls`` in ``opts.dtype`` (auto: fp32 on CPU) on ``device``, eval mode, into ``_rt``."""
        o = self.opts
        dtype = resolve_dtype(o.dtype, device)
        with _quiet_transformers(quiet):
            model = _pretrained(cls, o.model, o.revision, o.trust_remote_code, dtype=dtype)
        self._rt["model"], self._rt["dtype"] = model.to(device).eval(), dtype


# =============================================================================================== text
@dataclass(frozen=True)
class HFTextOptions:
    model: str = "roberta-base"  # hub id or local dir (roberta-large, intfloat/e5-mistral-7b-instruct, ...)
    pooling: str = "auto"  # auto | cls | mean | last-token
    max_length: int = 512  # tokens incl. special tokens (also capped by the tokenizer's model_max_length)
    reject_too_long: bool = False  # False: truncate; True: longer texts become rejected rows
    instruction: str | None = "auto"  # E5-style task text; "auto" = only for instruct embedders
    append_eos: bool | None = None  # None = yes for last-token pooling (E5-mistral recipe)
    dtype: str = "auto"  # auto = float32 on CPU, bf16 (or fp16) on CUDA
    normalize: bool = False  # L2-normalise outputs
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("dtype", self.dtype, DTYPES)
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2")


class HFTextEncoder(_HFEncoder):
    name = "hf-text"
    modality = "text"
    input_column = "text"
    Options = HFTextOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.opts
        config = self._hf(_config)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.dim = int(text_config.hidden_size)
        pooling = default_pooling(o.model, config) if o.pooling == "auto" else o.pooling
        instruction = o.instruction
        if instruction == "auto":
            name = o.model.lower()
            instruction = E5_INSTRUCTION if "e5" in name and "instruct" in name else None
        self.options.update(
            pooling=pooling,
            instruction=instruction,
            append_eos=pooling == "last-token" if o.append_eos is None else o.append_eos,
        )

    def _limit(self, tok) -> int:
        cap = getattr(tok, "model_max_length", None)
        return min(self.opts.max_length, int(cap)) if cap and cap < 1_000_000 else self.opts.max_length

    def preprocess(self, batch):
        tok = self._hf(_tokenizer)
        instruction, append_eos = self.options["instruction"], self.options["append_eos"]
        limit = self._limit(tok)
        errors = [check_text(t) for t in batch["text"]]
        ok = [i for i, e in enumerate(errors) if not e]
        texts = [str(batch["text"][i]) for i in ok]
        if instruction:
            texts = [f"Instruct: {instruction}\nQuery: {t}" for t in texts]
        encoded = (
            tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"] if texts else []
        )
        ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(errors)
        specials = set(tok.all_special_ids)
        for i, seq in zip(ok, encoded):
            seq = list(seq)
            if append_eos and tok.eos_token_id is not None and (not seq or seq[-1] != tok.eos_token_id):
                seq.append(tok.eos_token_id)
            if len(seq) > limit:
                if self.opts.reject_too_long:
                    errors[i] = f"text too long: {len(seq)} tokens > max_length {limit}"
                    continue
                # keep the trailing special token (</s>, EOS) as the tokenizer's own truncation would
                seq = seq[: limit - 1] + [seq[-1]] if seq[-1] in specials else seq[:limit]
            ids[i] = np.asarray(seq, dtype=np.int64)
        out = dict(batch)
        out["input_ids"] = object_column(ids)
        out["num_tokens"] = np.array([len(s) for s in ids], dtype=np.int64)
        out[ERROR] = np.array(errors, dtype=object)
        return out

    def _load(self, device: str) -> None:
        from transformers import AutoModel

        self._load_model(AutoModel, device)
        pad = getattr(self._hf(_config), "pad_token_id", None)
        self._rt["pad_id"] = pad if pad is not None else (self._hf(_tokenizer).pad_token_id or 0)

    def _embed(self, batch):
        import torch

        seqs = [np.asarray(s, dtype=np.int64) for s in batch["input_ids"]]
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self._rt["pad_id"], dtype=np.int64)  # (B, T) right-padded
        mask = np.zeros((len(seqs), width), dtype=np.int64)  # (B, T) 1 = real token
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            hidden = self._rt["model"](input_ids=ids_t, attention_mask=mask_t).last_hidden_state  # (B, T, H)
            pooled = pool(hidden.float(), mask_t, self.options["pooling"])  # (B, H)
            if self.opts.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()


def pool(hidden, mask, pooling: str):
    """(B, T, H) hidden states, (B, T) mask -> (B, H). Right padding is assumed for last-token."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
    if pooling == "last-token":
        import torch

        last = mask.sum(1) - 1  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


# =============================================================================================== image
@dataclass(frozen=True)
class HFImageOptions:
    model: str = (
        "google/siglip-base-patch16-224"  # or openai/clip-vit-base-patch32, facebook/dinov2-base, a dir
    )
    dtype: str = "auto"
    normalize: bool = False  # L2-normalise outputs
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)


def vision_model_class(model_type: str):
    """transformers class for a config ``model_type`` (vision towers of dual encoders, or AutoModel)."""
    import transformers as tf

    classes = {
        "siglip": "SiglipVisionModel",
        "siglip_vision_model": "SiglipVisionModel",
        "clip": "CLIPVisionModel",
        "clip_vision_model": "CLIPVisionModel",
        "dinov2": "Dinov2Model",
        "siglip2": "Siglip2VisionModel",  # NaFlex checkpoints (fixed-resolution SigLIP 2 ones are "siglip")
        "siglip2_vision_model": "Siglip2VisionModel",
    }
    return getattr(tf, classes.get(model_type, "AutoModel"))


class HFImageEncoder(_HFEncoder):
    name = "hf-image"
    modality = "image"
    input_column = "path"
    Options = HFImageOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        config = self._hf(_config)
        self.dim = int(getattr(config, "vision_config", config).hidden_size)
        self.options["model_type"] = config.model_type

    def preprocess(self, batch):
        from PIL import Image

        proc = self._hf(_processor)
        images, errors = [], []
        for path in batch["path"]:
            try:
                images.append(load_image(path))
                errors.append("")
            except InputError as e:
                images.append(None)
                errors.append(str(e))
        good = [i for i, im in enumerate(images) if im is not None]
        # bad rows get zeros of the processor's output shapes (from a blank image if no row decoded)
        outputs = proc(
            images=[images[i] for i in good] or [Image.new("RGB", (8, 8))],
            return_tensors="np",
            **self._processor_kwargs(),
        )
        out = dict(batch)
        for key in MODEL_INPUTS:  # pixel_values (B, 3, H, W); NaFlex: (B, N, 3*p*p) + mask + shapes
            if key not in outputs:
                continue
            values = np.asarray(outputs[key])
            column = np.zeros((len(images),) + values.shape[1:], dtype=values.dtype)
            if good:
                column[good] = values
            out[key] = column
        out[ERROR] = np.array(errors, dtype=object)
        return out

    def _processor_kwargs(self) -> dict:
        """Extra image-processor arguments (siglip2: ``max_num_patches`` for NaFlex checkpoints)."""
        return {}

    def _load(self, device: str) -> None:
        model_type = self.options["model_type"]
        # A vision tower read from a full dual-encoder checkpoint skips the text tower's weights on purpose:
        # hide transformers' load report (a table of "UNEXPECTED" text keys) in that case only.
        self._load_model(vision_model_class(model_type), device, quiet=model_type in FULL_DUAL_TYPES)

    def _embed(self, batch):
        import torch

        x = torch.as_tensor(np.asarray(batch["pixel_values"], dtype=np.float32))
        extra = {
            k: torch.as_tensor(np.asarray(batch[k])).to(self.device) for k in MODEL_INPUTS[1:] if k in batch
        }
        with torch.inference_mode():
            out = self._rt["model"](pixel_values=x.to(self.device, self._rt["dtype"]), **extra)
            pooled = getattr(out, "pooler_output", None)
            pooled = out.last_hidden_state[:, 0] if pooled is None else pooled  # (B, H)
            pooled = pooled.float()
            if self.opts.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()
