"""``passt``: PaSST audio embeddings (Koutini et al., "Efficient Training of Audio Transformers with
Patchout", Interspeech 2022) via ``hear21passt``, as in the DCASE language-based audio retrieval baseline.

Input: 32 kHz mono (decoded, mixed down, resampled in ``preprocess``), optionally cropped to
``max_audio_seconds``. The model sees at most one window (10 s for the default arch; its time position
embedding covers 998 mel frames). Longer clips are cut into consecutive window-long segments (the last
one shorter), each segment is embedded, and the clip embedding is the length-weighted mean of its segment
embeddings. Segments shorter than a window are zero-padded up to a multiple of ``pad_quantum_seconds``
(1 s) so segments of similar length share one forward pass; the weights use the unpadded lengths.

Output (``output``): ``embedding`` = the 768-d token features (mean of the CLS and distillation tokens
after the final norm; PasstBasicWrapper mode "embed_only"), ``logits`` = the 527 AudioSet logits,
``all`` = logits then embedding (527 + 768 = 1295, the wrapper's default mode "all").

Weights: ``pretrained=True`` loads them the way hear21passt does (``get_model(arch, pretrained=True)``
downloads the release checkpoint from GitHub on first use, cached by torch hub); ``weights=PATH`` loads
a local state dict (safetensors, or a ``.pt`` read with ``weights_only=True``). ``pretrained=False``
gives random weights; with ``embed_dim`` / ``depth`` / ``num_heads`` it builds a smaller PaSST of the
same class for tests (the real architecture, just narrower and shallower).

:func:`build_passt` builds the log-mel front-end and the network (constants defined once, below); the
encoder wraps them for inference and ``e2i finetune`` (e2i.finetune.model) trains the same two parts.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from e2i.corpus.audio import SAMPLE_RATE
from e2i.encoders.base import DTYPES, Encoder, check_choice, preprocess_audio, resolve_dtype
from e2i.errors import CheckpointError

# PaSST's log-mel front-end (hear21passt's AugmentMelSTFT), the same for embedding and fine-tuning.
N_MELS = 128
WIN_LENGTH, N_FFT = 800, 1024  # 25 ms Hann window at 32 kHz, zero-padded to a 1024-point FFT
HOP = 320  # mel hop in samples (10 ms) -> 100 frames per second
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
FMIN_AUG_RANGE, FMAX_AUG_RANGE = 10, 2000  # training mode: random shifts of the mel band edges (Hz)
FMAX = SAMPLE_RATE // 2 - FMAX_AUG_RANGE // 2  # 15 kHz top mel edge (hear21passt's value for fmax=None)
FREQM, TIMEM = 48, 192  # hear21passt's SpecAugment mask widths (mel bins, frames); training mode only
N_CLASSES = 527  # AudioSet
# arch -> (patch stride, input time frames). Window = frames / 100 s.
ARCHS = {
    "passt_s_swa_p16_128_ap476": (10, 998),  # DCASE 2024 retrieval baseline
    "passt_s_kd_p16_128_ap486": (10, 998),
    "passt_l_kd_p16_128_ap47": (10, 998),
    "passt_s_p16_s16_128_ap468": (16, 998),
    "passt_20sec": (10, 2000),
    "passt_30sec": (10, 3000),
}
OUTPUTS = {"embedding": "embed_only", "logits": "logits", "all": "all"}


@dataclass(frozen=True)
class PasstOptions:
    arch: str = "passt_s_swa_p16_128_ap476"
    pretrained: bool = True  # hear21passt's own loading (downloads on first use)
    weights: str | None = None  # local state dict of the PaSST net (safetensors / .pt), overrides pretrained
    output: str = "embedding"  # embedding (768) | logits (527) | all (527 + 768)
    max_audio_seconds: float | None = None  # crop clips to the first N seconds (None = whole clip)
    segment_seconds: float | None = None  # None = the arch's window (10 s); at most the window
    pad_quantum_seconds: float = 1.0  # short segments are zero-padded to a multiple of this
    segment_batch_size: int = 16  # segments per forward pass
    dtype: str = "auto"  # autocast dtype: auto = float32 on CPU, bf16/fp16 on CUDA
    embed_dim: int | None = None  # model-size overrides (tests, own checkpoints); not with pretrained
    depth: int | None = None
    num_heads: int | None = None

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, tuple(ARCHS))
        check_choice("output", self.output, tuple(OUTPUTS))
        check_choice("dtype", self.dtype, DTYPES)
        overrides = (self.embed_dim, self.depth, self.num_heads)
        if any(v is not None for v in overrides) and self.pretrained and not self.weights:
            raise ValueError("embed_dim/depth/num_heads need pretrained=False (or weights=PATH of that size)")
        if self.segment_seconds is not None and not 1.0 <= self.segment_seconds <= self.window_seconds:
            raise ValueError(f"segment_seconds must be in [1, {self.window_seconds}] for {self.arch}")
        if self.pad_quantum_seconds <= 0.16 or self.segment_batch_size < 1:
            raise ValueError("need pad_quantum_seconds > 0.16 (one patch) and segment_batch_size >= 1")

    @property
    def window_seconds(self) -> float:
        return round(ARCHS[self.arch][1] / FRAMES_PER_SECOND)


def plan_segments(lengths: list[int], window: int, quantum: int) -> list[tuple[int, int, int, int]]:
    """Cut each clip into window-long segments: [(row, start, length, padded_length)].

    ``padded_length`` = length rounded up to a multiple of ``quantum`` (capped at ``window``)."""
    plan = []
    for row, n in enumerate(lengths):
        for start in range(0, max(n, 1), window):
            length = min(window, n - start)
            padded = min(window, math.ceil(max(length, 1) / quantum) * quantum)
            plan.append((row, start, length, padded))
    return plan


class PasstEncoder(Encoder):
    name = "passt"
    modality = "audio"
    input_column = "path"
    Options = PasstOptions

    def _static_dim(self) -> int:
        width = self.opts.embed_dim or 768
        return {"embedding": width, "logits": N_CLASSES, "all": N_CLASSES + width}[self.opts.output]

    def preprocess(self, batch):
        return preprocess_audio(batch, sample_rate=SAMPLE_RATE, max_seconds=self.opts.max_audio_seconds)

    # ------------------------------------------------------------------ model
    def _load(self, device: str) -> None:
        from hear21passt.wrapper import PasstBasicWrapper

        mel, net = build_passt(self.opts)
        model = PasstBasicWrapper(mel=mel, net=net, mode=OUTPUTS[self.opts.output]).to(device).eval()
        self._rt["model"] = model
        self._rt["dtype"] = resolve_dtype(self.opts.dtype, device)

    # ------------------------------------------------------------------ embedding
    def _embed(self, batch):
        import torch

        o = self.opts
        model, dtype = self._rt["model"], self._rt["dtype"]
        waves = [np.asarray(w, dtype=np.float32) for w in batch["audio"]]
        window = int((o.segment_seconds or o.window_seconds) * SAMPLE_RATE)
        quantum = int(o.pad_quantum_seconds * SAMPLE_RATE)
        plan = plan_segments([len(w) for w in waves], window, quantum)
        sums = torch.zeros(len(waves), self.dim, dtype=torch.float64)  # (B, D) length-weighted sums
        weights = torch.zeros(len(waves), dtype=torch.float64)  # (B,) total seconds embedded
        by_len: dict[int, list] = {}
        for seg in plan:
            by_len.setdefault(seg[3], []).append(seg)
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        autocast = torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PaSST warns when the input is shorter than its window
            for padded, segs in sorted(by_len.items()):
                for i in range(0, len(segs), o.segment_batch_size):
                    chunk = segs[i : i + o.segment_batch_size]
                    x = np.zeros((len(chunk), padded), dtype=np.float32)  # (b, T) zero-padded segments
                    for j, (row, start, length, _) in enumerate(chunk):
                        x[j, :length] = waves[row][start : start + length]
                    emb = model(torch.from_numpy(x).to(self.device)).float().cpu().double()  # (b, D)
                    for j, (row, _, length, _) in enumerate(chunk):
                        sums[row] += length * emb[j]
                        weights[row] += length
        return (sums / weights.clamp_min(1)[:, None]).float().numpy()


def build_passt(opts: PasstOptions, *, freqm: int = FREQM, timem: int = TIMEM):
    """(mel front-end, PaSST net) for ``opts``: the one place both are built, for the encoder and for
    ``e2i finetune`` (which passes its own SpecAugment widths ``freqm``/``timem``; 0 = no mask).

    mel: (B, S) waveform at 32 kHz -> (B, 128, S / 320) log-mel frames. net: weights from
    hear21passt's release (``pretrained``), from ``weights=PATH``, or random (with the size overrides).
    hear21passt's prints (the whole network, the first forward's shapes) are silenced."""
    from hear21passt.models import passt as passt_mod
    from hear21passt.models.preprocess import AugmentMelSTFT

    _quiet_passt_warnings()
    passt_mod.first_RUN = False  # its forward prints tensor shapes on the first call otherwise
    mel = AugmentMelSTFT(
        n_mels=N_MELS,
        sr=SAMPLE_RATE,
        win_length=WIN_LENGTH,
        hopsize=HOP,
        n_fft=N_FFT,
        freqm=freqm,
        timem=timem,
        htk=False,
        fmin=0.0,
        fmax=FMAX,
        norm=1,
        fmin_aug_range=FMIN_AUG_RANGE,
        fmax_aug_range=FMAX_AUG_RANGE,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the whole network
        net = _build_net(opts, passt_mod)
    if opts.weights:
        _load_state(net, opts.weights)
    return mel, net


def _build_net(o: PasstOptions, passt_mod):
    stride, tdim = ARCHS[o.arch]
    if o.embed_dim is None and o.depth is None and o.num_heads is None:
        download = o.pretrained and not o.weights
        try:  # pretrained: hear21passt fetches the release checkpoint (torch hub cache)
            return passt_mod.get_model(
                arch=o.arch,
                pretrained=download,
                n_classes=N_CLASSES,
                in_channels=1,
                fstride=stride,
                tstride=stride,
                input_fdim=N_MELS,
                input_tdim=tdim,
            )
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            if not download:
                raise
            raise CheckpointError(
                f"passt: cannot load pretrained weights of {o.arch} ({str(e).splitlines()[0]}); "
                "check the network or pass weights=PATH"
            ) from None
    # Same class and patching as the arch, smaller transformer, random weights.
    net = passt_mod.PaSST(
        u_patchout=0,
        s_patchout_t=0,
        s_patchout_f=0,
        img_size=(N_MELS, tdim),
        patch_size=16,
        stride=(stride, stride),
        in_chans=1,
        num_classes=N_CLASSES,
        embed_dim=o.embed_dim or 768,
        depth=o.depth or 12,
        num_heads=o.num_heads or 12,
        distilled=True,
    )
    return passt_mod.fix_embedding_layer(net)


def _quiet_passt_warnings() -> None:
    for msg in ("Input image size", "stft with return_complex=False", r"`torch.cuda.amp.autocast"):
        warnings.filterwarnings("ignore", message=msg)


def _load_state(net, path: str) -> None:
    """Load a PaSST net state dict (safetensors or torch with weights_only=True); strips wrapper prefixes."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        for prefix in ("module.", "model.", "net."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        net.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - unpickling/safetensors/shape errors all mean a bad file
        raise CheckpointError(f"{path}: cannot load PaSST weights ({str(e).splitlines()[0]})") from None
