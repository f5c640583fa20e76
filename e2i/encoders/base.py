"""The `Encoder` interface shared by every encoder, plus input decoding (audio, images, text).

Batches are Ray Data numpy batches: ``dict[str, np.ndarray]``, one entry per column, all of length B.

Life cycle (the cache pipeline, `e2i/cache/pipeline.py`, drives it):

1. ``enc = get_encoder(name, **options)`` on the driver: no weights are loaded (hf encoders read the
   model's small config file). ``enc.dim`` is known from here on, and ``enc.options`` is the JSON-able dict
   of every option with defaults and "auto" values resolved (goes into the store manifest; nothing
   changes it later, so re-runs record identical options).
2. ``enc.preprocess(batch)`` in CPU tasks: stateless and picklable (runtime state such as loaded models is
   dropped when the encoder is pickled). Reads the input column (``path`` for audio/image, ``text`` for
   text), decodes / resamples / tokenises, and returns a *new* dict with every input column plus the
   encoder's own columns and ``error`` (str per row, ``""`` = ok). Bad rows never raise: they get a
   one-line reason in ``error`` and placeholder values in the encoder columns.
3. ``enc.load(device)`` once per actor (``"cuda"`` or ``"cpu"``, chosen by the caller; nothing is
   hard-coded to CUDA): loads weights; fp16/bf16 only on CUDA (``dtype="auto"``), float32 on CPU.
4. ``enc.embed(batch) -> (B, D) float32``: one row per input row, in order. Rows whose ``error`` is not
   ``""`` are not computed and come back as all-NaN rows. A model can also produce NaN/inf on a valid
   row (e.g. fp16 overflow): those rows are returned as they are; the caller detects them with
   ``~np.isfinite(out).all(axis=1)`` and rejects them (reason "non-finite embedding").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from e2i.errors import ConfigError

ERROR = "error"  # name of the per-row error column added by preprocess()


class Encoder:
    """Base class: option parsing, NaN rows for bad inputs, pickling without runtime state.

    Subclasses set ``name``, ``modality``, ``input_column``, an ``Options`` dataclass, and implement
    ``_preprocess_row``/``preprocess``, ``_load`` and ``_embed`` (which only sees valid rows).
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # "audio" | "text" | "image"
    input_column: ClassVar[str] = "path"
    Options: ClassVar[type] = object

    def __init__(self, **options: Any) -> None:
        fields = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(
                f"encoder '{self.name}': unknown option '{unknown[0]}' (valid: {', '.join(fields)})"
            )
        try:
            self.opts = self.Options(**options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"encoder '{self.name}': {e}") from None
        self.options: dict[str, Any] = dataclasses.asdict(self.opts)
        self.dim: int | None = self._static_dim()
        self.device: str | None = None
        self._rt: dict[str, Any] = {}  # runtime state (models, tokenizers); dropped when pickled

    # ------------------------------------------------------------------ interface
    def preprocess(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load(self, device: str = "cpu") -> None:
        """Load weights once onto ``device`` ("cuda", "cuda:1", "cpu"); idempotent per device."""
        if self.device == device and self._rt.get("loaded"):
            return
        self.device = device
        self._load(device)
        self._rt["loaded"] = True

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(B, D) float32; rows with a non-empty ``error`` are NaN. Loads on CPU if load() was not called."""
        if not self._rt.get("loaded"):
            self.load("cpu")
        n = _batch_len(batch)
        errors = batch.get(ERROR)
        ok = np.ones(n, dtype=bool) if errors is None else np.array([not e for e in errors], dtype=bool)
        out = np.full((n, int(self.dim)), np.nan, dtype=np.float32)  # (B, D)
        if ok.any():
            sub = batch if ok.all() else {k: _take(v, ok) for k, v in batch.items()}
            out[ok] = np.asarray(self._embed(sub), dtype=np.float32)
        return out

    def encode(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """preprocess + embed in one call (tests, benchmarks, small jobs)."""
        return self.embed(self.preprocess(batch))

    def manifest_entry(self) -> dict[str, Any]:
        """What the store manifest records for this encoder: name, modality, dim, options."""
        return {"name": self.name, "modality": self.modality, "dim": self.dim, "options": dict(self.options)}

    # ------------------------------------------------------------------ subclass hooks
    def _static_dim(self) -> int | None:
        return None

    def _load(self, device: str) -> None:
        pass

    def _embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rt"] = {}
        state["device"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, options={self.options})"


def _batch_len(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _take(col: Any, mask: np.ndarray) -> Any:
    if isinstance(col, np.ndarray):
        return col[mask]
    return [v for v, m in zip(col, mask) if m]


def object_column(values: list) -> np.ndarray:
    """A 1-D object array holding ``values`` (arrays of varying length stay separate rows)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def check_choice(field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{field}: {value!r} is not one of {', '.join(map(str, choices))}")


def resolve_dtype(dtype: str, device: str):
    """'auto' -> float32 on CPU, bfloat16 on CUDA when supported else float16; else the named dtype."""
    import torch

    if dtype == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


DTYPES = ("auto", "float32", "float16", "bfloat16")


# ---------------------------------------------------------------------------------------------- text
def check_text(text: Any) -> str:
    """'' if ``text`` is a usable caption, else the rejection reason."""
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty text"
    return ""


# ---------------------------------------------------------------------------------------------- audio
class InputError(Exception):
    """A per-row problem; its message becomes the row's ``error`` (one line)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_audio(path: str, *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` -> ((T, C) float32 in [-1, 1], sample rate), cropped to the first ``max_seconds``.

    soundfile (libsndfile: wav/flac/ogg/mp3) first, torchaudio as fallback. Raises InputError.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            sr = int(f.samplerate)
            frames = f.frames if max_seconds is None else min(f.frames, math.ceil(max_seconds * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (T, C)
        return data, sr
    except Exception as sf_err:  # noqa: BLE001 - any decoder failure is a per-row rejection
        try:
            import torchaudio

            wav, sr = torchaudio.load(path)  # (C, T)
            data = wav.numpy().T.astype(np.float32)
            if max_seconds is not None:
                data = data[: math.ceil(max_seconds * sr)]
            return data, int(sr)
        except Exception:  # noqa: BLE001
            raise InputError(f"unreadable audio: {_first_line(sf_err)}") from None


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal (scipy ``resample_poly``, Kaiser window)."""
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def load_audio(
    path: Any, *, sample_rate: int, max_seconds: float | None = None, min_sample_rate: int = 8000
) -> np.ndarray:
    """Decode, mix to mono, resample to ``sample_rate``, crop: (T,) float32. Raises InputError for
    missing/unreadable files, sample rates below ``min_sample_rate``, empty or non-finite audio."""
    if not isinstance(path, str) or not path:
        raise InputError("missing audio path")
    data, sr = read_audio(path, max_seconds=max_seconds)
    if sr < min_sample_rate:
        raise InputError(f"unsupported sample rate {sr} Hz (< {min_sample_rate} Hz)")
    if data.size == 0:
        raise InputError("empty audio (0 samples)")
    mono = data.mean(axis=1)  # (T,) average of channels
    if not np.isfinite(mono).all():
        raise InputError("audio contains NaN/inf samples")
    mono = resample(mono, sr, sample_rate)
    if max_seconds is not None:
        mono = mono[: round(max_seconds * sample_rate)]
    if mono.size == 0:
        raise InputError("empty audio (0 samples after resampling)")
    return np.ascontiguousarray(mono, dtype=np.float32)


def preprocess_audio(
    batch: dict[str, np.ndarray], *, sample_rate: int, max_seconds: float | None
) -> dict[str, np.ndarray]:
    """Adds ``audio`` (object array of (T,) float32 at ``sample_rate``; empty for bad rows),
    ``num_samples`` (int64) and ``error``."""
    waves, errors = [], []
    for path in batch["path"]:
        try:
            waves.append(load_audio(path, sample_rate=sample_rate, max_seconds=max_seconds))
            errors.append("")
        except InputError as e:
            waves.append(np.zeros(0, dtype=np.float32))
            errors.append(str(e))
    out = dict(batch)
    out["audio"] = object_column(waves)
    out["num_samples"] = np.array([len(w) for w in waves], dtype=np.int64)
    out[ERROR] = np.array(errors, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------- images
def load_image(path: Any):
    """Open ``path`` as an RGB PIL image (fully decoded, so truncated files fail here). Raises InputError."""
    from PIL import Image

    if not isinstance(path, str) or not path:
        raise InputError("missing image path")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise InputError(f"unreadable image: {_first_line(e)}") from None
