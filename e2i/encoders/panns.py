"""``panns``: PANNs CNN14 audio embeddings (Kong et al., "PANNs: Large-Scale Pretrained Audio Neural
Networks for Audio Pattern Recognition", IEEE/ACM TASLP 2020; code: github.com/qiuqiangkong/
audioset_tagging_cnn, ``pytorch/models.py`` class ``Cnn14``), the audio side of the older DCASE pipeline.

Weights: ``Cnn14_mAP=0.431.pth`` from Zenodo record 3987831 (``CHECKPOINT_URL``), downloaded once into
``$TORCH_HOME/hub/checkpoints`` (``pretrained=true``) or read from ``checkpoint=PATH``. The file is the
authors' training checkpoint ``{"iteration", "model", "sampler"}``; it is read with
``torch.load(weights_only=True)``, allowing only the numpy array/dtype types its sampler state pickles
(no code runs), and ``model`` is loaded strictly into the network below (same module names).

Front-end (Cnn14's torchlibrosa layers, rebuilt with torchaudio): 32 kHz mono; STFT with a 1024-sample
periodic Hann window, hop 320 (10 ms), centred with reflect padding; power spectrum -> 64 Slaney-scale
Slaney-normalised mel bands from 50 Hz to 14 kHz (librosa's ``filters.mel`` defaults, which torchlibrosa
uses) -> ``10 * log10(max(power, 1e-10))`` (ref 1.0, no top_db). The checkpoint's own copies of those
fixed tensors (``spectrogram_extractor.*``, ``logmel_extractor.melW``) are checked against this front-end
(a mismatch is an error) and not loaded. Audio at other rates is resampled to 32 kHz in ``preprocess``.

Network: ``bn0`` over the mel bins, six (conv3x3-BN-ReLU) x 2 blocks of 64 ... 2048 channels with 2x2
average pooling (none after the last), mean over frequency, max + mean over time -> ``fc1`` + ReLU =
the 2048-d ``embedding``; ``fc_audioset`` + sigmoid = the 527 AudioSet ``clipwise_output``. Each clip is
embedded whole (the CNN pools globally, any length); clips shorter than ``min_seconds`` are zero-padded.

Options (``--encoder-option audio.KEY=VALUE``): ``pretrained`` (true), ``checkpoint`` (local file),
``output`` (embedding 2048 | clipwise 527 | all 2575), ``max_audio_seconds`` (crop), ``min_seconds`` (1.0),
``normalize`` (false; PANNs embeddings are not normalised), ``dtype``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import DTYPES, Encoder, check_choice, preprocess_audio, resolve_dtype
from e2i.errors import CheckpointError

CHECKPOINT_URL = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
CHECKPOINT_NAME = "Cnn14_mAP=0.431.pth"
PANNS_RATE = 32000  # Cnn14's training rate (== e2i's SAMPLE_RATE today; resampled if that ever changes)
WINDOW, HOP, N_MELS, FMIN, FMAX = 1024, 320, 64, 50.0, 14000.0
AMIN = 1e-10
N_CLASSES, EMBED_DIM = 527, 2048
CHANNELS = (64, 128, 256, 512, 1024, 2048)
FRONT_END_KEYS = ("spectrogram_extractor.", "logmel_extractor.")
OUTPUTS = {"embedding": EMBED_DIM, "clipwise": N_CLASSES, "all": EMBED_DIM + N_CLASSES}


@dataclass(frozen=True)
class PannsOptions:
    pretrained: bool = True  # download Cnn14_mAP=0.431.pth from Zenodo (torch hub cache) on first load
    checkpoint: str | None = None  # local PANNs checkpoint ({"model": ...} or a bare state dict)
    output: str = "embedding"  # embedding (2048) | clipwise (527 AudioSet probabilities) | all
    max_audio_seconds: float | None = None  # crop clips to the first N seconds (None = whole clip)
    min_seconds: float = 1.0  # shorter clips are zero-padded (5 poolings need >= 32 frames = 0.32 s)
    normalize: bool = False
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check_choice("output", self.output, tuple(OUTPUTS))
        check_choice("dtype", self.dtype, DTYPES)
        if self.min_seconds < 0.33:
            raise ValueError("min_seconds must be >= 0.33 (Cnn14 needs 32 frames)")


class PannsEncoder(Encoder):
    name = "panns"
    modality = "audio"
    input_column = "path"
    Options = PannsOptions

    def _static_dim(self) -> int:
        return OUTPUTS[self.opts.output]

    def preprocess(self, batch):
        return preprocess_audio(batch, sample_rate=PANNS_RATE, max_seconds=self.opts.max_audio_seconds)

    def _load(self, device: str) -> None:
        o = self.opts
        if o.checkpoint or o.pretrained:
            net = load_cnn14_checkpoint(o.checkpoint or download_checkpoint())
        else:
            net = build_cnn14()
        self._rt["dtype"] = resolve_dtype(o.dtype, device)
        self._rt["model"] = net.to(device).eval()

    def _embed(self, batch):
        import torch

        net, dtype = self._rt["model"], self._rt["dtype"]
        min_len = int(self.opts.min_seconds * PANNS_RATE)
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        rows = []
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            for wave in batch["audio"]:  # one clip per forward: max/mean pooling over time sees no padding
                x = np.zeros(max(len(wave), min_len), dtype=np.float32)
                x[: len(wave)] = wave
                emb, probs = net(torch.from_numpy(x)[None].to(self.device))  # (1, 2048), (1, 527)
                out = {"embedding": emb, "clipwise": probs, "all": torch.cat([emb, probs], 1)}[
                    self.opts.output
                ]
                rows.append(out.float())
        out = torch.cat(rows)
        if self.opts.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy()


def download_checkpoint() -> str:
    import torch

    path = os.path.join(torch.hub.get_dir(), "checkpoints", CHECKPOINT_NAME)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(CHECKPOINT_URL, path, progress=True)
        except OSError as e:  # URLError is an OSError
            raise CheckpointError(
                f"panns: cannot download {CHECKPOINT_NAME} from Zenodo ({str(e).splitlines()[0]}); "
                "pass checkpoint=PATH"
            ) from None
    return path


def _numpy_safe_globals() -> list:
    """The numpy reconstructors a pickled sampler state needs (arrays and dtypes; nothing executable).
    Files written under numpy 1.x name ``numpy.core.multiarray``, numpy 2.x ``numpy._core.multiarray``."""
    from numpy._core import multiarray

    allowed = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("int64", "int32", "float32", "float64", "bool")]
    return allowed


def load_cnn14_checkpoint(path: str):
    """``torch.load(weights_only=True)`` of a PANNs checkpoint, front-end check, strict load of the rest
    into a Cnn14 built without initialising its weights (they are all replaced); returns the network."""
    import torch

    from e2i.encoders.vit import load_strict, one_line

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(path)
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                raw = torch.load(path, map_location="cpu", weights_only=True)
        state = raw.get("model", raw)
        net = build_cnn14(empty=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        mel = state.get("logmel_extractor.melW")
        if mel is not None and not torch.allclose(mel.float(), net.mel_fbanks(), atol=1e-5):
            raise ValueError(
                "its logmel_extractor.melW differs from the 64-band 50-14000 Hz Slaney mel front-end"
            )
        load_strict(net, {k: v for k, v in state.items() if not k.startswith(FRONT_END_KEYS)}, assign=True)
    except Exception as e:  # noqa: BLE001 - unpickling, key or shape errors all mean an unusable file
        raise CheckpointError(f"{path}: cannot load PANNs Cnn14 weights ({one_line(e)})") from None
    return net


def build_cnn14(*, empty: bool = False):
    """Cnn14 with random weights (eval mode is the caller's): waveform (B, T) at 32 kHz ->
    (embedding (B, 2048), clipwise (B, 527)). ``empty``: weights on the meta device (no memory, no init),
    to be replaced by ``load_state_dict(..., assign=True)``; the fixed front-end is real either way."""
    import contextlib

    import torch
    import torchaudio
    from torch import nn

    window = torch.hann_window(WINDOW)  # periodic Hann, as librosa's get_window("hann", fftbins=True)
    fbanks = torchaudio.functional.melscale_fbanks(
        WINDOW // 2 + 1, FMIN, FMAX, N_MELS, PANNS_RATE, norm="slaney", mel_scale="slaney"
    )  # (513, 64) = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T

    F = torch.nn.functional

    class ConvBlock(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

        def forward(self, x, pool: int):
            x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
            return F.avg_pool2d(x, pool) if pool > 1 else x

    class Cnn14(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # the front-end is fixed maths, not weights: non-persistent buffers, outside state_dict()
            self.register_buffer("window", window, persistent=False)
            self.register_buffer("melW", fbanks, persistent=False)
            self.bn0 = nn.BatchNorm2d(N_MELS)
            for i, (cin, cout) in enumerate(zip((1,) + CHANNELS[:-1], CHANNELS), start=1):
                setattr(self, f"conv_block{i}", ConvBlock(cin, cout))
            self.fc1 = nn.Linear(EMBED_DIM, EMBED_DIM)
            self.fc_audioset = nn.Linear(EMBED_DIM, N_CLASSES)

        def mel_fbanks(self):
            return self.melW  # (513, 64), torchlibrosa's melW layout

        def logmel(self, wave):
            """(B, T) -> (B, 1, frames, 64) log-mel power, frames = T // 320 + 1."""
            spec = torch.stft(
                wave.float(),
                WINDOW,
                HOP,
                WINDOW,
                self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )  # (B, 513, frames), centred: n_fft/2 reflect padding on both sides
            power = spec.abs().square().transpose(1, 2) @ self.melW  # (B, frames, 64)
            return (10.0 * torch.log10(power.clamp_min(AMIN)))[:, None]

        def forward(self, wave):
            x = self.logmel(wave)
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over the 64 mel bins
            for i in range(1, 7):
                x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)  # (B, C, frames/2^k, mels/2^k)
            x = x.mean(dim=3)  # (B, 2048, t) mean over frequency
            x = x.max(dim=2).values + x.mean(dim=2)  # (B, 2048) max + mean over time
            emb = F.relu(self.fc1(x))
            return emb, torch.sigmoid(self.fc_audioset(emb))

    with torch.device("meta") if empty else contextlib.nullcontext():
        return Cnn14()
