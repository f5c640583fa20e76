"""Built-in toy corpus: procedurally synthesised sounds with captions that describe them.

    root = make_toy_corpus("data/toy", n_items=300, seed=0)       # ~2 s, ~50 MB
    corpus = read_corpus("clotho", root, split="development")       # 300 items x 5 captions

Each clip is 1-4 s of 32 kHz mono 16-bit PCM WAV, one of five kinds (balanced):

======  ============================================  ==========================================
kind    attributes                                    sounds like
======  ============================================  ==========================================
tone    pitch low/mid/high, fade steady/in/out        a sine tone (100-220 / 330-880 / 1.5-4 kHz)
noise   color white/pink, length short/long           a 0.15-0.5 s burst in silence, or a steady hiss
chirp   pitch low/mid/high, direction rising/falling, one exponential sweep over the clip (slow) or
        speed slow/fast                               repeated 0.15-0.3 s chirps (fast)
clicks  tempo slow/fast                               2-4 or 12-25 clicks per second
beeps   pitch low/mid/high, tempo slow/fast           1.5-3 or 5-9 beeps per second
======  ============================================  ==========================================

plus ``loudness`` quiet/medium/loud (peak 0.06 / 0.3 / 0.85) and, for tone/chirp/beeps, an optional
``background`` hiss. Five distinct captions per clip come from templates with synonyms ("A faint
shrill whistle fading away.", "Fast rhythmic beeping can be heard."), so text and audio share signal.

Written in Clotho's layout under ``root``: ``clotho_captions_<split>.csv``,
``clotho_audio_files/<split>/toy_NNNN.wav`` and ``toy_attributes_<split>.csv`` (one row per clip: the
attributes above plus duration_s, f0_hz, f1_hz, rate_hz, peak). Deterministic: the same
``(seed, split, n_items)`` gives the same bytes (stdlib ``wave``, per-clip numpy generators seeded by
``(seed, crc32(split), index)``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import wave
import zlib
from pathlib import Path

import numpy as np

from e2i.corpus.audio import SAMPLE_RATE
from e2i.errors import ConfigError

KINDS = ("tone", "noise", "chirp", "clicks", "beeps")
PEAKS = {"quiet": 0.06, "medium": 0.3, "loud": 0.85}
PITCH_HZ = {"low": (100.0, 220.0), "mid": (330.0, 880.0), "high": (1500.0, 4000.0)}
CHIRP_HZ = {"low": (100.0, 400.0), "mid": (300.0, 1200.0), "high": (1000.0, 4000.0)}  # (bottom, top)
RATE_HZ = {
    ("clicks", "slow"): (2.0, 4.0),
    ("clicks", "fast"): (12.0, 25.0),
    ("beeps", "slow"): (1.5, 3.0),
    ("beeps", "fast"): (5.0, 9.0),
}
ATTRIBUTE_COLUMNS = (
    "file_name",
    "kind",
    "duration_s",
    "loudness",
    "pitch",
    "fade",
    "color",
    "length",
    "direction",
    "speed",
    "tempo",
    "background",
    "f0_hz",
    "f1_hz",
    "rate_hz",
    "peak",
)


# --------------------------------------------------------------------------------------------------
# Attributes


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def sample_attributes(kind: str, rng: np.random.Generator) -> dict:
    """Random attributes of one clip of ``kind`` (the columns of ``toy_attributes_<split>.csv``)."""
    pick = functools.partial(_pick, rng)
    a = {c: "" for c in ATTRIBUTE_COLUMNS}
    a.update(
        kind=kind,
        duration_s=float(rng.choice(np.arange(1.0, 4.01, 0.25))),
        loudness=pick(list(PEAKS)),
        f0_hz=0.0,
        f1_hz=0.0,
        rate_hz=0.0,
    )
    a["peak"] = PEAKS[a["loudness"]]
    if kind in ("tone", "chirp", "beeps"):
        a["pitch"] = pick(["low", "mid", "high"])
        a["background"] = "hiss" if rng.random() < 0.25 else "none"
    if kind == "tone":
        a["fade"] = pick(["steady", "steady", "in", "out"])
        a["f0_hz"] = a["f1_hz"] = round(float(rng.uniform(*PITCH_HZ[a["pitch"]])), 1)
    elif kind == "noise":
        a["color"], a["length"] = pick(["white", "pink"]), pick(["short", "long"])
    elif kind == "chirp":
        a["direction"], a["speed"] = pick(["rising", "falling"]), pick(["slow", "fast"])
        lo, hi = CHIRP_HZ[a["pitch"]]
        a["f0_hz"], a["f1_hz"] = (lo, hi) if a["direction"] == "rising" else (hi, lo)
        a["rate_hz"] = round(float(rng.uniform(2.5, 4.0)), 2) if a["speed"] == "fast" else 0.0
    else:  # clicks, beeps
        a["tempo"] = pick(["slow", "fast"])
        a["rate_hz"] = round(float(rng.uniform(*RATE_HZ[kind, a["tempo"]])), 2)
        if kind == "beeps":
            a["f0_hz"] = a["f1_hz"] = round(float(rng.uniform(*PITCH_HZ[a["pitch"]])), 1)
    return a


# --------------------------------------------------------------------------------------------------
# Synthesis (float signals, shape (T,))


def _ramp(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Linear fade in/out over ``seconds`` (in place) so segments start and end without a click."""
    n = min(int(seconds * SAMPLE_RATE), len(x) // 2)
    if n > 0:
        env = np.linspace(0.0, 1.0, n)
        x[:n] *= env
        x[-n:] *= env[::-1]
    return x


def _noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white / np.max(np.abs(white))
    # Pink noise: power ~ 1/f, i.e. amplitude spectrum scaled by 1/sqrt(f) (DC removed).
    spec = np.fft.rfft(white)
    spec[1:] /= np.sqrt(np.arange(1, len(spec)))
    spec[0] = 0.0
    pink = np.fft.irfft(spec, n)
    return pink / np.max(np.abs(pink))


def _sweep(n: int, f0: float, f1: float) -> np.ndarray:
    """Exponential sweep f(t) = f0 (f1/f0)^(t/T); phase(t) = 2 pi f0 T / ln(f1/f0) ((f1/f0)^(t/T) - 1)."""
    dur = n / SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    k = np.log(f1 / f0)
    return np.sin(2 * np.pi * f0 * dur / k * (np.exp(k * t / dur) - 1.0))


def _pulses(n: int, rate: float, seg: np.ndarray) -> np.ndarray:
    """Copies of ``seg`` every 1/rate s from 0.05 s on (a click train or a beep rhythm)."""
    out = np.zeros(n)
    for start in np.arange(0.05, n / SAMPLE_RATE, 1.0 / rate):
        i = int(start * SAMPLE_RATE)
        m = min(len(seg), n - i)
        out[i : i + m] += seg[:m]
    return out


def synthesise(a: dict, rng: np.random.Generator) -> np.ndarray:
    """Signal for attributes ``a``: (T,) float64 with peak ``a['peak']``."""
    n = int(a["duration_s"] * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    kind = a["kind"]
    if kind == "tone":
        x = _ramp(np.sin(2 * np.pi * a["f0_hz"] * t + rng.uniform(0, 2 * np.pi)))
        if a["fade"] != "steady":
            env = np.linspace(0.05, 1.0, n)
            x *= env if a["fade"] == "in" else env[::-1]
    elif kind == "noise":
        x = _noise(n, a["color"], rng)
        if a["length"] == "short":  # one burst somewhere in the clip, silence around it
            m = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
            start = int(rng.integers(0, n - m))
            burst, x = _ramp(x[:m].copy(), 0.005), np.zeros(n)
            x[start : start + m] = burst
        else:
            x = _ramp(x, 0.02)
    elif kind == "chirp":
        if a["speed"] == "slow":  # one sweep over the whole clip
            x = _ramp(_sweep(n, a["f0_hz"], a["f1_hz"]))
        else:  # repeated short chirps, 0.15-0.3 s each
            seg = _ramp(_sweep(int(rng.uniform(0.15, 0.3) * SAMPLE_RATE), a["f0_hz"], a["f1_hz"]), 0.005)
            x = _pulses(n, a["rate_hz"], seg)
    elif kind == "clicks":
        m = int(0.003 * SAMPLE_RATE)  # 3 ms exponentially decaying noise impulse
        seg = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.0006 * SAMPLE_RATE))
        x = _pulses(n, a["rate_hz"], seg / np.max(np.abs(seg)))
    else:  # beeps: tone bursts with a 50 % duty cycle
        m = int(0.5 / a["rate_hz"] * SAMPLE_RATE)
        seg = _ramp(np.sin(2 * np.pi * a["f0_hz"] * np.arange(m) / SAMPLE_RATE), 0.005)
        x = _pulses(n, a["rate_hz"], seg)
    if a.get("background") == "hiss":  # steady background noise ~18 dB below the foreground peak
        x = x / max(np.max(np.abs(x)), 1e-9) + 0.12 * _noise(n, "white", rng)
    return x * (a["peak"] / max(np.max(np.abs(x)), 1e-9))


def write_wav(path: Path, x: np.ndarray) -> None:
    """Mono 16-bit PCM at ``SAMPLE_RATE`` (stdlib ``wave``: no timestamps, byte-identical re-runs)."""
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


# --------------------------------------------------------------------------------------------------
# Captions: templates with synonyms

LOUD_WORDS = {
    "quiet": ["quiet", "soft", "faint", "gentle"],
    "medium": [""],
    "loud": ["loud", "powerful", "strong", "blaring"],
}
PITCH_WORDS = {
    "low": ["low", "deep", "low pitched", "bassy"],
    "mid": ["mid pitched", "medium pitched", "moderate", "middle"],
    "high": ["high", "high pitched", "shrill", "piercing"],
}
FRAMES = ["{np}.", "{np} can be heard.", "You can hear {np}.", "We hear {np}."]  # singular or plural
FRAMES_SINGULAR = FRAMES + ["{np} is heard.", "There is {np}.", "{np} plays."]
BACKGROUND = ["over a background hiss", "with static in the background", "behind a layer of noise"]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(rng: np.random.Generator, a: dict, noun: str, *, plural: bool = False, tail: str = "") -> str:
    """Noun phrase: [article] [loudness] [pitch] noun [tail] [background]; adjectives sometimes left out."""
    words = []
    if a["loudness"] != "medium" and rng.random() < 0.7:
        words.append(str(rng.choice(LOUD_WORDS[a["loudness"]])))
    if rng.random() < 0.9:
        words.append(str(rng.choice(PITCH_WORDS[a["pitch"]])))
    words += [noun, tail]
    if a.get("background") == "hiss" and rng.random() < 0.8:
        words.append(str(rng.choice(BACKGROUND)))
    phrase = " ".join(w for w in words if w)
    return phrase if plural else _article(phrase)


def _caption(a: dict, rng: np.random.Generator) -> str:
    pick = functools.partial(_pick, rng)
    kind = a["kind"]
    if kind == "tone":
        noun = pick(
            ["tone", "sine tone", "pure tone", "steady note"]
            + {"low": ["hum", "drone"], "mid": [], "high": ["whistle"]}[a["pitch"]]
        )
        tail = {
            "steady": pick(["", "", "held steadily", "that stays constant"]),
            "in": pick(["fading in", "slowly growing louder", "swelling up"]),
            "out": pick(["fading away", "dying out", "slowly getting quieter"]),
        }[a["fade"]]
        phrase = _np(rng, a, noun, tail=tail)
    elif kind == "noise":
        noun = pick(
            {
                "white": ["white noise", "hiss", "static", "hissing noise"],
                "pink": ["pink noise", "rushing noise", "soft roar", "rumbling noise"],
            }[a["color"]]
        )
        loud = pick(LOUD_WORDS[a["loudness"]]) if rng.random() < 0.7 else ""
        if a["length"] == "short":
            lead = pick(["short burst", "brief blast", "quick burst", "sudden burst"])
            phrase = _article(" ".join(w for w in (loud, lead, "of", noun) if w))
        else:
            lead = pick(["steady", "continuous", "constant", "long"])
            phrase = _article(" ".join(w for w in (loud, lead, noun) if w))
    elif kind == "chirp":
        move = pick(
            {
                "rising": ["rising", "ascending", "climbing", "sweeping up"],
                "falling": ["falling", "descending", "dropping", "sweeping down"],
            }[a["direction"]]
        )
        if a["speed"] == "slow":
            tail = f"{move} {pick(['slowly', 'gradually', 'steadily', ''])}".strip()
            phrase = _np(rng, a, pick(["tone", "sweep", "glide", "whistle"]), tail=tail)
        else:
            noun = pick(["chirps", "bleeps", "quick sweeps", "bird like chirps"])
            noun = f"{noun} {move}" if rng.random() < 0.5 else f"{move} {noun}"
            phrase = pick(["a series of", "repeated", "rapid", "many"]) + " " + _np(rng, a, noun, plural=True)
    elif kind == "clicks":
        loud = (
            pick(LOUD_WORDS[a["loudness"]]) + " " if a["loudness"] != "medium" and rng.random() < 0.6 else ""
        )
        phrase = pick(
            {
                "slow": [
                    "{l}slow ticking",
                    "{l}clicks at a slow pace",
                    "a {l}clock like ticking",
                    "{l}slow steady clicks",
                    "{l}occasional clicking",
                ],
                "fast": [
                    "{l}rapid clicking",
                    "{l}fast clicking",
                    "a {l}rattling stream of clicks",
                    "a {l}buzzing train of clicks",
                    "{l}quick rapid ticks",
                ],
            }[a["tempo"]]
        ).format(l=loud)
    else:  # beeps
        tempo = pick(
            {
                "slow": ["slow", "slowly repeating", "unhurried", "spaced out"],
                "fast": ["fast", "rapid", "quick", "urgent"],
            }[a["tempo"]]
        )
        noun = pick(["beeps", "beeping", "rhythmic beeping", "pulses", "alarm beeps"])
        phrase = tempo + " " + _np(rng, a, noun, plural=True)
    singular = kind in ("tone", "noise") or (kind == "chirp" and a["speed"] == "slow")
    text = pick(FRAMES_SINGULAR if singular else FRAMES).format(np=phrase)
    return text[0].upper() + text[1:]


def make_captions(a: dict, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` distinct captions for one clip (repeats only if the templates run out)."""
    out: list[str] = []
    for _ in range(20 * n):
        text = _caption(a, rng)
        if text not in out:
            out.append(text)
        if len(out) == n:
            return out
    return (out * n)[:n]


# --------------------------------------------------------------------------------------------------
# Corpus


def make_toy_corpus(
    root: str | os.PathLike, *, n_items: int = 300, seed: int = 0, split: str = "development"
) -> Path:
    """Write ``n_items`` clips + captions in Clotho's layout under ``root``; return ``root``."""
    root = Path(root)
    audio_dir = root / "clotho_audio_files" / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    split_key = zlib.crc32(split.encode())
    # Balanced kinds (each n_items // 5 or one more), in a seeded random order.
    kinds = np.random.default_rng([seed, split_key]).permutation(np.resize(np.array(KINDS), n_items))
    rows, attrs = [], []
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, split_key, i])
        a = sample_attributes(str(kind), rng)
        a["file_name"] = f"toy_{i:04d}.wav"
        write_wav(audio_dir / a["file_name"], synthesise(a, rng))
        rows.append([a["file_name"], *make_captions(a, rng)])
        attrs.append([a[c] for c in ATTRIBUTE_COLUMNS])
    _write_csv(root / f"toy_attributes_{split}.csv", list(ATTRIBUTE_COLUMNS), attrs)
    # Captions CSV last: its presence means the corpus is complete.
    _write_csv(
        root / f"clotho_captions_{split}.csv", ["file_name"] + [f"caption_{k}" for k in range(1, 6)], rows
    )
    return root


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# CLI: `e2i toy --root data/toy`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", default="data/toy", help="directory to write the corpus to (default: data/toy)"
    )
    parser.add_argument("--n-items", type=int, default=300, help="number of clips (default: 300, ~50 MB)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument(
        "--split", default="development", help="split name in the file names (default: development)"
    )


def run(args: argparse.Namespace) -> int:
    from e2i.corpus.clotho import read_clotho  # read back: the corpus must flow through the Clotho reader

    if args.n_items < 1:
        raise ConfigError(f"--n-items: must be >= 1, got {args.n_items}")
    root = make_toy_corpus(args.root, n_items=args.n_items, seed=args.seed, split=args.split)
    print(f"wrote {read_clotho(root, split=args.split).summary()} to {root}")
    return 0
