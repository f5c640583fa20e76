"""Encoders: registry/options, light encoders carry signal, tiny real PaSST / RoBERTa / SigLIP, bad rows."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from tiny_models import TINY_PASST, tiny_clip, tiny_dinov2, tiny_roberta, tiny_siglip

from e2i.encoders import ENCODERS, LIGHT_DEFAULTS, get_encoder
from e2i.errors import ConfigError

SR = 32000


def tone(path, hz, seconds=1.0, sr=SR, amp=0.3, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * hz * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr)
    return str(path)


def noise(path, seconds=1.0, sr=SR, seed=0):
    sf.write(path, 0.2 * np.random.default_rng(seed).standard_normal(int(sr * seconds)), sr)
    return str(path)


def col(values):
    return np.array(values, dtype=object)


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    sf.write(d / "empty.wav", np.zeros(0), SR)
    sf.write(d / "lowsr.wav", np.zeros(4000), 4000)
    (d / "junk.wav").write_bytes(b"not audio at all")
    return {
        "empty": str(d / "empty.wav"),
        "lowsr": str(d / "lowsr.wav"),
        "junk": str(d / "junk.wav"),
        "missing": str(d / "missing.wav"),
    }


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200 + rng.integers(0, 30, (64, 64))
    red2 = red.copy()
    red2[..., 1] = 20
    blue = red[..., ::-1].copy()
    hstripes = np.repeat(((y // 4) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    vstripes = np.repeat(((x // 4) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    paths = {}
    for name, arr in {
        "red": red,
        "red2": red2,
        "blue": blue,
        "hstripes": hstripes,
        "vstripes": vstripes,
    }.items():
        Image.fromarray(arr).save(d / f"{name}.png")
        paths[name] = str(d / f"{name}.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    paths["corrupt"] = str(d / "corrupt.jpg")
    return paths


# ------------------------------------------------------------------------------------------ registry
def test_registry_and_option_errors():
    assert set(ENCODERS) == {
        "passt",
        "hf-text",
        "hf-image",
        "siglip2",
        "franca",
        "panns",
        "sbert",
        "logmel-stats",
        "ngram-hash",
        "image-stats",
    }
    assert {ENCODERS[n].modality for n in LIGHT_DEFAULTS.values()} == {"audio", "text", "image"}
    with pytest.raises(ConfigError, match="unknown encoder 'clap'.*valid: passt, hf-text"):
        get_encoder("clap")
    with pytest.raises(ConfigError, match="unknown option 'dims'.*valid: dim"):
        get_encoder("ngram-hash", dims=3)
    with pytest.raises(ConfigError, match="output"):
        get_encoder("passt", output="tokens")
    with pytest.raises(ConfigError, match="pretrained=False"):
        get_encoder("passt", depth=2)
    with pytest.raises(ConfigError, match="size divisible by grid"):
        get_encoder("image-stats", size=100, grid=3)


def test_options_are_json_and_encoders_pickle_without_weights(tmp_path):
    for name in LIGHT_DEFAULTS.values():
        enc = get_encoder(name)
        entry = json.loads(json.dumps(enc.manifest_entry()))
        assert entry["name"] == name and entry["dim"] == enc.dim > 0
    enc = get_encoder("logmel-stats", n_mels=32)
    assert enc.dim == 3 * 32 + 21
    enc.load("cpu")
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._rt == {} and clone.device is None and clone.options == enc.options
    x = {"path": col([tone(tmp_path / "a.wav", 440)])}
    assert np.allclose(clone.encode(x), enc.encode(x), atol=1e-6)  # loads itself (CPU) on first embed


# ------------------------------------------------------------------------------------------ light: audio
def test_logmel_stats_separates_pitch_and_texture(tmp_path, bad_audio):
    enc = get_encoder("logmel-stats")
    paths = [
        tone(tmp_path / "hi1.wav", 2000),
        tone(tmp_path / "hi2.wav", 2300, seconds=1.5),
        tone(tmp_path / "lo.wav", 150),
        noise(tmp_path / "noise.wav"),
        tone(tmp_path / "hi_stereo_44k.wav", 2000, sr=44100, channels=2),
    ]
    emb = enc.encode({"path": col(paths)})
    assert emb.shape == (5, enc.dim) and np.isfinite(emb).all()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    hi1, hi2, lo, nz, hi_st = emb
    assert cos(hi1, hi2) > cos(hi1, lo) + 0.1  # two high tones closer than high vs low
    assert cos(hi1, hi2) > cos(hi1, nz) + 0.1
    assert cos(hi1, hi_st) > 0.98  # decode: stereo 44.1 kHz mixed down and resampled = same sound
    batch = enc.preprocess({"item_id": col(list("abcd")), "path": col(list(bad_audio.values()))})
    assert batch["item_id"].tolist() == list("abcd")  # input columns pass through
    assert batch["error"][0] == "empty audio (0 samples)"
    assert batch["error"][1] == "unsupported sample rate 4000 Hz (< 8000 Hz)"
    assert batch["error"][2].startswith("unreadable audio") and batch["error"][3].startswith(
        "unreadable audio"
    )
    assert np.isnan(enc.embed(batch)).all()  # error rows -> NaN rows, caller rejects them


def test_audio_crop_to_max_seconds(tmp_path):
    enc = get_encoder("logmel-stats", max_audio_seconds=0.5)
    batch = enc.preprocess({"path": col([tone(tmp_path / "long.wav", 440, seconds=3.0)])})
    assert batch["num_samples"].tolist() == [8000]  # 0.5 s at 16 kHz


# ------------------------------------------------------------------------------------------ light: text
def test_ngram_hash_shares_words_and_rejects_empty():
    enc = get_encoder("ngram-hash")
    texts = [
        "a dog barks loudly in the park",
        "the dog is barking loudly",
        "rain falls on a metal roof",
        "",
        "   ",
        "!!!",
        None,
    ]
    batch = enc.preprocess({"text": col(texts)})
    assert batch["error"].tolist()[3:] == [
        "empty text",
        "empty text",
        "text has no words",
        "text is NoneType, not a string",
    ]
    emb = enc.embed(batch)
    assert np.isnan(emb[3:]).all() and np.allclose(np.linalg.norm(emb[:3], axis=1), 1, atol=1e-5)
    assert cos(emb[0], emb[1]) > 0.3 > cos(emb[0], emb[2])
    other_seed = get_encoder("ngram-hash", seed=1).encode({"text": col(texts[:1])})[0]
    assert not np.allclose(other_seed, emb[0])


def test_ngram_hash_is_deterministic_across_processes():
    """blake2b, not Python's salted hash(): another interpreter with another PYTHONHASHSEED agrees."""
    code = (
        "import numpy as np; from e2i.encoders import get_encoder; "
        "print(get_encoder('ngram-hash', dim=64).encode({'text': np.array(['birds sing'], dtype=object)})"
        "[0].round(6).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    here = get_encoder("ngram-hash", dim=64).encode({"text": col(["birds sing"])})[0].round(6).tolist()
    assert json.loads(out) == here


# ------------------------------------------------------------------------------------------ light: image
def test_image_stats_colour_and_orientation(pictures):
    enc = get_encoder("image-stats")
    assert enc.dim == 256
    names = ["red", "red2", "blue", "hstripes", "vstripes", "corrupt"]
    batch = enc.preprocess({"path": col([pictures[n] for n in names])})
    assert batch["error"][5].startswith("unreadable image")
    emb = enc.embed(batch)
    red, red2, blue, hs, vs, bad = emb
    assert np.isnan(bad).all() and np.isfinite(emb[:5]).all()
    assert cos(red, red2) > cos(red, blue) + 0.2
    assert cos(hs, vs) < 0.95  # same colours and edge density, different gradient orientation


# ------------------------------------------------------------------------------------------ PaSST
def test_plan_segments():
    from e2i.encoders.passt import plan_segments

    # at 10 samples/s: a 25 s clip = two 10 s windows + a 5 s tail; a 0.3 s clip is padded to 1 s
    plan = plan_segments([250, 3], window=100, quantum=10)
    assert plan == [(0, 0, 100, 100), (0, 100, 100, 100), (0, 200, 50, 50), (1, 0, 3, 10)]


def test_tiny_passt_averages_segments_by_length(tmp_path, bad_audio, capfd):
    import torch

    enc = get_encoder("passt", **TINY_PASST)
    assert enc.dim == 32 and enc.options["arch"] == "passt_s_swa_p16_128_ap476"
    long_path = tone(tmp_path / "long.wav", 440, seconds=12.0)
    batch = enc.preprocess(
        {"path": col([long_path, tone(tmp_path / "short.wav", 1000, 0.4), bad_audio["junk"]])}
    )
    enc.load("cpu")
    emb = enc.embed(batch)
    assert emb.shape == (3, 32) and np.isfinite(emb[:2]).all() and np.isnan(emb[2]).all()
    assert capfd.readouterr().out == ""  # hear21passt's network/shape prints are silenced
    wave = batch["audio"][0]
    assert len(wave) == 12 * SR
    model = enc._rt["model"]
    with torch.inference_mode():
        first = model(torch.from_numpy(wave[None, : 10 * SR]))[0]  # 10 s window
        tail = model(torch.from_numpy(wave[None, 10 * SR :]))[0]  # 2 s tail (already a whole second)
    want = (10 * first + 2 * tail) / 12  # length-weighted mean of segment embeddings
    assert np.allclose(emb[0], want.numpy(), atol=1e-4)
    assert not np.allclose(emb[0], first.numpy(), atol=1e-3)
    cropped = get_encoder("passt", max_audio_seconds=4.0, **TINY_PASST).preprocess({"path": col([long_path])})
    assert cropped["num_samples"].tolist() == [4 * SR]
    both = get_encoder("passt", output="all", **TINY_PASST)
    assert both.dim == 527 + 32 and both.encode({"path": col([long_path])}).shape == (1, 559)


def test_passt_local_weights(tmp_path):
    """weights=PATH loads a state dict (safetensors, or torch with a wrapper prefix); bad files fail cleanly."""
    import torch
    from safetensors.torch import save_file

    from e2i.errors import CheckpointError

    src = get_encoder("passt", **TINY_PASST)
    src.load("cpu")
    state = {k: v.contiguous() for k, v in src._rt["model"].net.state_dict().items()}
    save_file(state, tmp_path / "net.safetensors")
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}}, tmp_path / "net.pt")
    x = {"path": col([tone(tmp_path / "a.wav", 500, 2.0)])}
    want = src.encode(x)
    sizes = {k: TINY_PASST[k] for k in ("embed_dim", "depth", "num_heads")}
    for name in ("net.safetensors", "net.pt"):
        enc = get_encoder("passt", weights=str(tmp_path / name), **sizes)
        assert np.allclose(enc.encode(x), want, atol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: cannot load PaSST weights"):
        get_encoder("passt", weights=str(tmp_path / "bad.pt"), **sizes).load("cpu")


# ------------------------------------------------------------------------------------------ hf-text
@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return tiny_roberta(tmp_path_factory.mktemp("models") / "roberta")


def test_hf_text_pooling_variants(roberta_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["a dog barks", "birds are singing in the trees near a busy road"]
    tok = AutoTokenizer.from_pretrained(roberta_dir)
    model = AutoModel.from_pretrained(roberta_dir).eval()
    with torch.inference_mode():
        alone = [model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]  # (T, H) unpadded
    want = {"cls": [h[0] for h in alone], "mean": [h.mean(0) for h in alone]}
    auto = get_encoder("hf-text", model=roberta_dir)
    assert auto.options["pooling"] == "cls" and auto.dim == 32 and auto.options["instruction"] is None
    for pooling in ("cls", "mean"):
        emb = get_encoder("hf-text", model=roberta_dir, pooling=pooling).encode({"text": col(texts)})
        for row, w in zip(emb, want[pooling]):  # padded batch == each text alone (mask is honoured)
            assert np.allclose(row, w.numpy(), atol=1e-5)
    last = get_encoder("hf-text", model=roberta_dir, pooling="last-token")
    batch = last.preprocess({"text": col(texts)})
    assert last.options["append_eos"] and all(ids[-1] == tok.eos_token_id for ids in batch["input_ids"])
    emb = last.embed(batch)
    with torch.inference_mode():
        short = model(input_ids=torch.from_numpy(batch["input_ids"][0])[None]).last_hidden_state[0, -1]
    assert np.allclose(emb[0], short.numpy(), atol=1e-5)
    normed = get_encoder("hf-text", model=roberta_dir, normalize=True).encode({"text": col(texts)})
    assert np.allclose(np.linalg.norm(normed, axis=1), 1, atol=1e-5)


def test_hf_text_too_long_truncate_or_reject_and_instruction(roberta_dir, tmp_path):
    long = " ".join(["birds are singing in the trees"] * 30)
    texts = col(["a dog barks", long, ""])
    trunc = get_encoder("hf-text", model=roberta_dir, max_length=16)
    batch = trunc.preprocess({"text": texts})
    assert batch["error"].tolist() == ["", "", "empty text"]
    assert batch["num_tokens"][1] == 16 and batch["input_ids"][1][-1] == 2  # keeps the closing </s>
    out = trunc.embed(batch)
    assert np.isfinite(out[:2]).all() and np.isnan(out[2]).all()
    reject = get_encoder("hf-text", model=roberta_dir, reject_too_long=True)  # limit = tokenizer's 62
    errs = reject.preprocess({"text": texts})["error"]
    assert errs[0] == "" and errs[1].startswith("text too long:") and errs[1].endswith("> max_length 62")
    plain = trunc.preprocess({"text": col(["a dog barks"])})["num_tokens"][0]
    instr = get_encoder("hf-text", model=roberta_dir, max_length=16, instruction="Find the sound")
    assert instr.preprocess({"text": col(["a dog barks"])})["num_tokens"][0] > plain
    # E5-style names resolve defaults: instruction for instruct embedders, mean pooling for E5 encoders
    e5 = tmp_path / "multilingual-e5-small-instruct"
    os.symlink(roberta_dir, e5)
    e5enc = get_encoder("hf-text", model=str(e5))
    assert e5enc.options["pooling"] == "mean" and e5enc.options["instruction"].startswith("Given")


def test_non_finite_model_output_is_returned_as_is(roberta_dir):
    """A broken model (or fp16 overflow) yields NaN rows with error "": the caller rejects them."""
    enc = get_encoder("hf-text", model=roberta_dir)
    enc.load("cpu")
    enc._rt["model"].embeddings.word_embeddings.weight.data.fill_(float("nan"))
    batch = enc.preprocess({"text": col(["a dog barks"])})
    out = enc.embed(batch)
    assert batch["error"].tolist() == [""] and not np.isfinite(out).all(axis=1).any()


def test_hf_text_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load its config"):
        get_encoder("hf-text", model=str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------------ hf-image
@pytest.mark.parametrize(
    "builder,model_type", [(tiny_siglip, "siglip_vision_model"), (tiny_clip, "clip"), (tiny_dinov2, "dinov2")]
)
def test_hf_image_vision_towers(builder, model_type, tmp_path, pictures):
    import torch

    from e2i.encoders.hf import vision_model_class

    model_dir = builder(tmp_path / model_type)
    enc = get_encoder("hf-image", model=model_dir)
    assert enc.options["model_type"] == model_type and enc.dim == 32
    batch = enc.preprocess({"path": col([pictures["red"], pictures["corrupt"], pictures["hstripes"]])})
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["error"][1].startswith("unreadable image")
    emb = enc.embed(batch)
    assert np.isfinite(emb[[0, 2]]).all() and np.isnan(emb[1]).all()
    model = vision_model_class(model_type).from_pretrained(model_dir).eval()
    with torch.inference_mode():
        want = model(pixel_values=torch.from_numpy(batch["pixel_values"][[0]])).pooler_output[0]
    assert np.allclose(emb[0], want.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------ Ray Data
def test_interface_through_ray_data(ray_local, tmp_path):
    """preprocess in Ray tasks, embed in an actor: ragged audio columns and error rows survive Arrow."""
    import ray

    class Embed:
        def __init__(self, enc):
            self.enc = enc
            enc.load("cpu")

        def __call__(self, batch):
            return {"id": batch["id"], "error": batch["error"], "embedding": self.enc.embed(batch)}

    enc = get_encoder("logmel-stats")
    paths = [tone(tmp_path / "a.wav", 300, 0.5), tone(tmp_path / "b.wav", 3000, 1.3), str(tmp_path / "x.wav")]
    rows = [{"id": str(i), "path": p} for i, p in enumerate(paths)]
    ds = ray.data.from_items(rows).map_batches(enc.preprocess, batch_size=3)
    ds = ds.map_batches(
        Embed,
        fn_constructor_args=(enc,),
        batch_size=3,
        num_cpus=0.5,
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["error"].startswith("unreadable") for r in out] == [False, False, True]
    got = np.stack([r["embedding"] for r in out])
    want = enc.encode({"path": col(paths)})
    assert np.allclose(got[:2], want[:2], atol=1e-5) and np.isnan(got[2]).all()
