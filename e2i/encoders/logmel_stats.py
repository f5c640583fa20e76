"""``logmel-stats`` (audio): log-mel band statistics + spectral/temporal summaries, in torch (any device).

A light built-in encoder: no download, deterministic, real signal (the embedded default, the demo and the
tests). The output row is L2-normalised (cosine similarity = dot product), so its blocks are weighted by
fixed constants stated next to them. dim = 3 * n_mels + 21 (213 with the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import Encoder, preprocess_audio

# Scalar summaries appended after the three per-band blocks; each is scaled to be O(1).
LOGMEL_SCALARS = (
    "loudness",
    "peak_loudness",
    "loudness_std",
    "loudness_slope",
    "silence_fraction",
    "centroid",
    "centroid_std",
    "centroid_slope",
    "flatness",
    "flatness_std",
    "rolloff",
    "bandwidth",
    "zero_crossing_rate",
    "peak_freq",
    "peak_freq_iqr",
    "peak_freq_slope",
    "onset_strength",
    "onset_rate",
    "periodicity",
    "periodicity_rate",
    "log_duration",
)


@dataclass(frozen=True)
class LogMelOptions:
    sample_rate: int = 16000  # 8 kHz bandwidth covers the toy corpus and most captioned sounds
    n_mels: int = 64  # dim = 3 * n_mels + 21
    n_fft: int = 1024  # 64 ms window at 16 kHz
    hop_length: int = 256  # 16 ms hop -> 62.5 frames/s (envelope periodicities up to ~30 Hz)
    top_db: float = 80.0  # dynamic range kept below each clip's loudest mel bin
    max_audio_seconds: float | None = None  # crop to the first N seconds

    def __post_init__(self) -> None:
        if self.n_mels < 4 or self.n_fft < 64 or self.hop_length < 1 or self.sample_rate < 8000:
            raise ValueError("need n_mels >= 4, n_fft >= 64, hop_length >= 1, sample_rate >= 8000")


class LogMelStatsEncoder(Encoder):
    """Log-mel statistics: per band mean (centred on the clip's mean level), std and mean |delta| over
    time, plus loudness/fade, spectral centroid/flatness/rolloff/bandwidth, dominant-frequency ("pitch")
    level and slope (rising/falling), onset rate and envelope periodicity (tempo). Clips of any length."""

    name = "logmel-stats"
    modality = "audio"
    input_column = "path"
    Options = LogMelOptions

    def _static_dim(self) -> int:
        return 3 * self.opts.n_mels + len(LOGMEL_SCALARS)

    def preprocess(self, batch):
        return preprocess_audio(
            batch, sample_rate=self.opts.sample_rate, max_seconds=self.opts.max_audio_seconds
        )

    def _load(self, device: str) -> None:
        import torch
        import torchaudio

        o = self.opts
        fb = torchaudio.functional.melscale_fbanks(
            o.n_fft // 2 + 1,
            20.0,
            o.sample_rate / 2,
            o.n_mels,
            o.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self._rt["fbanks"] = fb.to(device)  # (F, M)
        self._rt["window"] = torch.hann_window(o.n_fft, device=device)
        freqs = torch.linspace(0, o.sample_rate / 2, o.n_fft // 2 + 1, device=device) / 1000  # (F,) kHz
        self._rt["freqs"] = freqs
        self._rt["mel_freqs"] = freqs[self._rt["fbanks"].argmax(0)]  # (M,) kHz at each band's peak

    def _embed(self, batch):
        import torch

        rows = []
        with torch.inference_mode():
            for wave in batch["audio"]:
                x = torch.as_tensor(np.asarray(wave, dtype=np.float32), device=self.device)
                rows.append(self._features(x))
        return torch.stack(rows).cpu().numpy()

    def _features(self, x):
        """(T,) waveform -> (3M + S,) L2-normalised feature vector."""
        import torch

        o, fb, win = self.opts, self._rt["fbanks"], self._rt["window"]
        if x.numel() < o.n_fft:
            x = torch.nn.functional.pad(x, (0, o.n_fft - x.numel()))
        spec = torch.stft(x, o.n_fft, o.hop_length, window=win, center=True, return_complex=True)
        power = spec.abs().square() / win.sum().square()  # (F, N); a full-scale sine peaks near 0.25
        mel = fb.T @ power  # (M, N)
        logmel = torch.log10(mel + 1e-10)
        logmel = torch.maximum(logmel, logmel.max() - o.top_db / 10)  # (M, N) in log10 units
        n = logmel.shape[1]
        band_mean = logmel.mean(1)  # (M,)
        level = band_mean.mean()
        band_std = logmel.std(1, unbiased=False)  # (M,)
        band_delta = (logmel[:, 1:] - logmel[:, :-1]).abs().mean(1) if n > 1 else torch.zeros_like(band_mean)
        scalars = self._scalars(x, power, mel, logmel)  # (S,)
        m = o.n_mels
        # Block weights: spectral shape carries most identity; scalars carry loudness/pitch/tempo/fade.
        feat = torch.cat(
            [
                (band_mean - level) / math.sqrt(m),
                1.5 * band_std / math.sqrt(m),
                3.0 * band_delta / math.sqrt(m),
                1.5 * scalars / math.sqrt(len(scalars)),
            ]
        )
        return feat / feat.norm().clamp_min(1e-12)

    def _scalars(self, x, power, mel, logmel):
        """Summaries; spectral shape stats use the (M, N) mel power (8x cheaper than the (F, N) STFT)."""
        import torch

        o = self.opts
        n = power.shape[1]
        t = torch.linspace(-0.5, 0.5, n, device=power.device)  # clip time, centred, span 1

        def slope(y, w=None):  # least-squares slope of y over t (weighted), per unit clip length
            w = torch.ones_like(y) if w is None else w
            tm = (w * t).sum() / w.sum()
            ym = (w * y).sum() / w.sum()
            return (w * (t - tm) * (y - ym)).sum() / (w * (t - tm).square()).sum().clamp_min(1e-6)

        energy = torch.log10(power.sum(0) + 1e-10)  # (N,) frame log-power
        active = (energy > energy.max() - 3.0).float()  # frames within 30 dB of the loudest
        freqs, fm = self._rt["freqs"], self._rt["mel_freqs"]  # (F,), (M,) in kHz
        p = mel + 1e-12  # (M, N)
        total = p.sum(0)  # (N,)
        c_lin = (fm[:, None] * p).sum(0) / total  # (N,) spectral centroid in kHz
        centroid = torch.log2(c_lin + 1e-3)
        spread = ((fm[:, None] - c_lin[None]).square() * p).sum(0) / total  # (N,) kHz^2
        flat = torch.exp(torch.log(p).mean(0)) / p.mean(0)  # (N,) in (0, 1]: 1 = white noise (slaney bands)
        cum = p.cumsum(0) / total
        rolloff = torch.log2(fm[(cum < 0.85).sum(0).clamp(max=len(fm) - 1)] + 1e-3)  # 85 % energy point
        peak = torch.log2(freqs[power.argmax(0)] + 1e-3)  # (N,) dominant STFT frequency ("pitch"), log2 kHz
        zcr = (torch.sign(x[1:]) != torch.sign(x[:-1])).float().mean()
        flux = (
            torch.relu(logmel[:, 1:] - logmel[:, :-1]).mean(0) if n > 1 else torch.zeros(1, device=x.device)
        )
        onsets = (
            (
                (flux[1:-1] > flux[:-2])
                & (flux[1:-1] >= flux[2:])
                & (flux[1:-1] > flux.mean() + flux.std(unbiased=False))
            ).sum()
            if flux.numel() > 2
            else 0
        )
        seconds = x.numel() / o.sample_rate
        per_rate, per_strength = _periodicity(energy, o.sample_rate / o.hop_length)
        w = active

        def wmean(y):
            return (w * y).sum() / w.sum()

        def wstd(y):
            return ((w * (y - wmean(y)).square()).sum() / w.sum()).sqrt()

        q = torch.quantile(peak[w > 0], torch.tensor([0.25, 0.5, 0.75], device=x.device))
        vals = {  # name -> value scaled to O(1); order = LOGMEL_SCALARS
            "loudness": energy.mean() / 5,
            "peak_loudness": energy.max() / 5,
            "loudness_std": energy.std(unbiased=False) / 2,
            "loudness_slope": slope(energy) / 5,  # fade in (> 0) / out (< 0)
            "silence_fraction": 1 - active.mean(),
            "centroid": wmean(centroid) / 3,
            "centroid_std": wstd(centroid) / 2,
            "centroid_slope": slope(centroid, w) / 3,
            "flatness": wmean(flat) * 2,  # noise vs tone
            "flatness_std": wstd(flat) * 2,
            "rolloff": wmean(rolloff) / 3,
            "bandwidth": wmean(spread.sqrt()) / 2,
            "zero_crossing_rate": zcr * 2,
            "peak_freq": q[1] / 3,
            "peak_freq_iqr": (q[2] - q[0]) / 2,
            "peak_freq_slope": slope(peak, w) / 3,  # rising (> 0) / falling (< 0) pitch
            "onset_strength": flux.mean() * 2,
            "onset_rate": torch.log1p(torch.as_tensor(float(onsets) / seconds)) / 3,
            "periodicity": per_strength,  # regular beeps/clicks
            "periodicity_rate": per_rate / 4,
            "log_duration": torch.log(torch.as_tensor(seconds + 0.1)) / 2,
        }
        return torch.stack(
            [torch.as_tensor(vals[k], dtype=torch.float32, device=x.device) for k in LOGMEL_SCALARS]
        )


def _periodicity(energy, frame_rate: float):
    """Strength (0..1) and log2 rate (Hz) of the strongest envelope periodicity between 0.5 and 30 Hz:
    the peak of the normalised autocorrelation of the frame log-energy."""
    import torch

    e = energy - energy.mean()
    n = e.numel()
    lo, hi = max(2, int(frame_rate / 30)), min(n - 1, int(frame_rate / 0.5))
    zero = torch.zeros((), device=energy.device)
    if hi <= lo or float(e.square().sum()) < 1e-8:
        return zero, zero
    spec = torch.fft.rfft(e, 2 * n)
    ac = torch.fft.irfft(spec.abs().square(), 2 * n)[:n]  # (N,) autocorrelation
    ac = ac / ac[0] * n / (n - torch.arange(n, device=e.device)).clamp_min(1)  # unbiased, lag 0 = 1
    lag = lo + int(torch.argmax(ac[lo:hi]))
    return ac[lag].clamp(0, 1), torch.log2(torch.as_tensor(frame_rate / lag, device=energy.device))
