"""panns (CNN14) and sbert: random checkpoints in the published layouts, the published front-end maths, and
sentence-transformers itself as the reference for sbert (dev dependency ``sentence-transformers``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf
from tiny_models import tiny_mpnet

from e2i.encoders import get_encoder
from e2i.errors import CheckpointError, ConfigError


def col(values):
    return np.array(values, dtype=object)


def tone(path, hz, seconds, sr=32000, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * hz * t)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)
    return str(path)


# ------------------------------------------------------------------------------------------ PANNs
def slaney_mel(sr=32000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (htk=False, norm="slaney") written out, .T:
    (n_fft/2 + 1, n_mels). Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), log above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, float)
        return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                        f / f_sp)  # fmt: skip

    def mel_to_hz(m):
        return np.where(
            m >= min_log_hz / f_sp, min_log_hz * np.exp(logstep * (m - min_log_hz / f_sp)), f_sp * m
        )

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), mel_f[:, None] - fft_freqs[None, :]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney: constant energy per band
    return weights.T.astype(np.float32)


def cnn14_release_checkpoint(seed: int = 0, mel=None) -> dict:
    """A random checkpoint with audioset_tagging_cnn's Cnn14 keys (torchlibrosa front-end included) and
    its training-checkpoint wrapper (the sampler state pickles numpy arrays)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def bn(prefix, n):
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g), f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
                f"{prefix}.running_mean": 0.1 * torch.randn(n, generator=g), f"{prefix}.running_var": 1 + torch.rand(n, generator=g),
                f"{prefix}.num_batches_tracked": torch.tensor(1000)}  # fmt: skip

    state = {
        "spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024, generator=g),
        "spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024, generator=g),
        "logmel_extractor.melW": torch.from_numpy(slaney_mel() if mel is None else mel),
        **bn("bn0", 64),
    }
    cin = 1
    for i, cout in enumerate((64, 128, 256, 512, 1024, 2048), start=1):
        state[f"conv_block{i}.conv1.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        )
        state[f"conv_block{i}.conv2.weight"] = (
            torch.randn(cout, cout, 3, 3, generator=g) * (2 / (9 * cout)) ** 0.5
        )
        state.update(bn(f"conv_block{i}.bn1", cout) | bn(f"conv_block{i}.bn2", cout))
        cin = cout
    for name, n_out in (("fc1", 2048), ("fc_audioset", 527)):
        state[f"{name}.weight"] = torch.randn(n_out, 2048, generator=g) * 2048**-0.5
        state[f"{name}.bias"] = 0.01 * torch.randn(n_out, generator=g)
    sampler = {
        "indexes_per_class": [np.arange(10, dtype=np.int64)],
        "queue": [3, 1],
        "pointers_of_classes": [0],
    }
    return {"iteration": 660000, "model": state, "sampler": sampler}


@pytest.fixture(scope="module")
def panns_ckpt(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("panns")
    ckpt = cnn14_release_checkpoint()
    torch.save(ckpt, d / "Cnn14_mAP=0.431.pth")
    return str(d / "Cnn14_mAP=0.431.pth"), ckpt["model"]


def test_panns_checkpoint_loads_strictly_and_embeds_2048(panns_ckpt, tmp_path):
    import torch

    path, state = panns_ckpt
    enc = get_encoder("panns", checkpoint=path, min_seconds=0.5)  # short clips keep the CPU test quick
    assert enc.dim == 2048
    paths = [tone(tmp_path / "a.wav", 440, 0.5), tone(tmp_path / "b44k.wav", 440, 0.5, sr=44100, channels=2),
             tone(tmp_path / "short.wav", 5000, 0.2)]  # fmt: skip
    batch = enc.preprocess({"path": col(paths)})
    assert batch["num_samples"].tolist() == [16000, 16000, 6400]  # 44.1 kHz stereo -> 32 kHz mono
    emb = enc.embed(batch)
    net = enc._rt["model"]
    assert torch.equal(net.fc1.weight, state["fc1.weight"]) and torch.equal(
        net.bn0.running_var, state["bn0.running_var"]
    )
    assert emb.shape == (3, 2048) and np.isfinite(emb).all() and (emb >= 0).all()  # ReLU(fc1) embedding
    scale = np.abs(emb[0]).max()
    assert (
        np.abs(emb[0] - emb[1]).max() < 0.05 * scale < np.abs(emb[0] - emb[2]).max()
    )  # same tone, resampled
    with torch.inference_mode():  # the network on the clip alone: same embedding (deterministic, unpadded)
        wave = torch.from_numpy(batch["audio"][0])[None]
        mel = net.logmel(wave)
        emb0, probs = net(wave)
    assert mel.shape == (1, 1, 51, 64) and probs.shape == (1, 527) and ((probs > 0) & (probs < 1)).all()
    assert np.array_equal(emb0.numpy(), emb[:1])  # frames = T // 320 + 1, 64 mel bins
    other = get_encoder("panns", checkpoint=path, output="all", normalize=True, min_seconds=0.5)
    both = other.embed({k: v[:1] for k, v in batch.items()})
    want = np.concatenate([emb0.numpy(), probs.numpy()], axis=1)
    assert both.shape == (1, 2575) and np.allclose(both, want / np.linalg.norm(want), atol=1e-6)


def test_panns_front_end_is_librosas_slaney_mel():
    """torchaudio's filterbank == librosa's (what torchlibrosa stores as melW), written out independently."""
    from e2i.encoders.panns import build_cnn14

    assert np.abs(build_cnn14().mel_fbanks().numpy() - slaney_mel()).max() < 1e-6


def test_panns_rejects_bad_checkpoints(panns_ckpt, tmp_path):
    import torch

    _, state = panns_ckpt
    wrong_mel = {"model": {**state, "logmel_extractor.melW": torch.from_numpy(slaney_mel(fmax=16000.0))}}
    torch.save({"model": {k: wrong_mel["model"][k] for k in list(state)[:8]}}, tmp_path / "wrong_mel.pth")
    with pytest.raises(CheckpointError, match="melW differs"):
        get_encoder("panns", checkpoint=str(tmp_path / "wrong_mel.pth")).load("cpu")
    torch.save({"model": {k: state[k] for k in list(state)[:8]}}, tmp_path / "partial.pth")  # front-end + bn0
    with pytest.raises(CheckpointError, match=r"partial.pth: .*missing keys \['conv_block1.conv1.weight'"):
        get_encoder("panns", checkpoint=str(tmp_path / "partial.pth")).load("cpu")
    with pytest.raises(ConfigError, match="output"):
        get_encoder("panns", output="logits")
    from e2i.encoders.panns import CHECKPOINT_URL

    assert "zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth" in CHECKPOINT_URL


# ------------------------------------------------------------------------------------------ SBERT
TEXTS = ["a dog barks loudly in the distance", "Rain falls on a metal roof",
         " ".join(["birds are singing in the trees"] * 12), "a cat"]  # fmt: skip


def sentence_transformer(
    base_dir: str, out_dir, *, max_seq_length: int, pooling: str = "mean", normalize: bool = True
):
    """A SentenceTransformer (Transformer -> Pooling [-> Normalize]) over ``base_dir``, saved to ``out_dir``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    t = Transformer(base_dir, max_seq_length=max_seq_length)
    modules = [t, Pooling(t.get_embedding_dimension(), pooling)] + ([Normalize()] if normalize else [])
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(out_dir))
    return model


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory):
    return tiny_mpnet(tmp_path_factory.mktemp("models") / "mpnet")


def test_sbert_matches_sentence_transformers(mpnet_dir, tmp_path):
    st = sentence_transformer(mpnet_dir, tmp_path / "st", max_seq_length=16)
    want = st.encode(TEXTS, convert_to_numpy=True, batch_size=8)
    enc = get_encoder("sbert", model=str(tmp_path / "st"))
    assert enc.dim == 32 and enc.options["pooling"] == "mean" and enc.options["normalize"] is True
    assert enc.options["max_length"] == 16  # v6 files: max_seq_length kept as the tokenizer's limit
    batch = enc.preprocess({"text": col(TEXTS + [""])})
    assert batch["num_tokens"][2] == 16 and batch["error"][4] == "empty text"  # truncated to max_seq_length
    got = enc.embed(batch)
    assert np.isnan(got[4]).all() and np.allclose(np.linalg.norm(got[:4], axis=1), 1, atol=1e-6)
    assert np.abs(got[:4] - want).max() < 1e-6
    assert np.array_equal(enc.embed(batch)[:4], got[:4])  # deterministic


def test_sbert_reads_v2_model_files_like_all_mpnet_base_v2(mpnet_dir, tmp_path):
    """The hub's all-mpnet-base-v2 has v2-era files (per-mode booleans, max_seq_length in
    sentence_bert_config.json): write that layout, load it with sentence-transformers and with sbert."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

    d = tmp_path / "v2"
    sentence_transformer(mpnet_dir, d, max_seq_length=16, pooling="cls", normalize=False)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (d / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))  # fmt: skip
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": True}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = SentenceTransformer(str(d), device="cpu").encode(TEXTS, convert_to_numpy=True)
    enc = get_encoder("sbert", model=str(d))
    assert (
        enc.options["pooling"] == "cls"
        and enc.options["normalize"] is False
        and enc.options["max_length"] == 12
    )
    assert enc.options["do_lower_case"] is True
    got = enc.encode({"text": col(TEXTS)})
    assert np.abs(got - want).max() < 1e-6 and not np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)


def test_sbert_rejects_unsupported_pipelines(mpnet_dir, tmp_path):
    with pytest.raises(ConfigError, match="no modules.json"):
        get_encoder("sbert", model=mpnet_dir)
    d = tmp_path / "dense"
    sentence_transformer(mpnet_dir, d, max_seq_length=16)
    modules = json.loads((d / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="found Dense"):
        get_encoder("sbert", model=str(d))
