"""siglip2 (fixed-resolution and NaFlex) and franca: tiny random-weight models of the published classes /
key layouts; dims, normalisation, determinism, agreement with the reference forward, strict loading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_dinov2, tiny_siglip2_naflex, tiny_siglip_full

from e2i.encoders import get_encoder
from e2i.errors import CheckpointError, ConfigError


def col(values):
    return np.array(values, dtype=object)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = {}
    for name, (h, w) in {"square": (48, 48), "wide": (24, 72), "tall": (60, 30)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{name}.png")
        out[name] = str(d / f"{name}.png")
    (d / "bad.png").write_bytes(b"not an image")
    out["bad"] = str(d / "bad.png")
    return out


def check_rows(emb, dim, normalized):
    assert emb.shape[1] == dim and np.isfinite(emb).all()
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) if normalized else not np.allclose(norms, 1, atol=1e-2)


# ------------------------------------------------------------------------------------------ SigLIP 2
def test_siglip2_fixed_resolution_full_checkpoint(tmp_path, images):
    import torch
    from transformers import SiglipModel

    model_dir = tiny_siglip_full(tmp_path / "siglip2-224")
    enc = get_encoder("siglip2", model=model_dir)
    assert enc.options["variant"] == "fixed" and enc.options["model_type"] == "siglip" and enc.dim == 32
    paths = col([images["square"], images["bad"], images["wide"]])
    batch = enc.preprocess({"path": paths})
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["error"][1].startswith("unreadable image")
    emb = enc.embed(batch)
    assert np.isnan(emb[1]).all()
    check_rows(emb[[0, 2]], 32, normalized=True)
    full = SiglipModel.from_pretrained(model_dir).eval()  # reference: the dual encoder's image features
    with torch.inference_mode():
        want = full.get_image_features(pixel_values=torch.from_numpy(batch["pixel_values"][[0, 2]]))
    want = getattr(want, "pooler_output", want)
    assert np.allclose(emb[[0, 2]], torch.nn.functional.normalize(want, dim=-1).numpy(), atol=1e-5)
    again = get_encoder("siglip2", model=model_dir).encode({"path": paths})  # determinism, fresh load
    assert np.array_equal(np.isnan(again), np.isnan(emb)) and np.allclose(
        again[[0, 2]], emb[[0, 2]], atol=1e-6
    )
    with pytest.raises(ConfigError, match="max_num_patches is for NaFlex"):
        get_encoder("siglip2", model=model_dir, max_num_patches=64)


def test_siglip2_naflex_keeps_aspect_ratio_and_masks_padding(tmp_path, images):
    import torch
    from transformers import Siglip2Model

    model_dir = tiny_siglip2_naflex(tmp_path / "siglip2-naflex", max_num_patches=16)
    enc = get_encoder("siglip2", model=model_dir)
    assert enc.options["variant"] == "naflex" and enc.dim == 32
    paths = col([images["square"], images["wide"], images["tall"]])
    batch = enc.preprocess({"path": paths})
    assert batch["pixel_values"].shape == (3, 16, 3 * 8 * 8)  # (B, max_num_patches, 3 * p * p)
    shapes = batch["spatial_shapes"].tolist()
    assert shapes[0][0] == shapes[0][1] and shapes[1][1] > shapes[1][0] and shapes[2][0] > shapes[2][1]
    assert (batch["pixel_attention_mask"].sum(1) == np.prod(batch["spatial_shapes"], axis=1)).all()
    emb = enc.embed(batch)
    check_rows(emb, 32, normalized=True)
    alone = enc.encode({"path": paths[1:2]})  # a padded batch equals the image on its own
    assert np.allclose(alone[0], emb[1], atol=1e-5)
    full = Siglip2Model.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        want = full.get_image_features(**{k: torch.from_numpy(batch[k]) for k in
                                          ("pixel_values", "pixel_attention_mask", "spatial_shapes")})  # fmt: skip
    want = getattr(want, "pooler_output", want)
    assert np.allclose(emb, torch.nn.functional.normalize(want, dim=-1).numpy(), atol=1e-5)
    small = get_encoder("siglip2", model=model_dir, max_num_patches=9, normalize=False)
    sb = small.preprocess({"path": paths})
    assert sb["pixel_values"].shape[1] == 9 and (np.prod(sb["spatial_shapes"], axis=1) <= 9).all()
    check_rows(small.embed(sb), 32, normalized=False)
    hf = get_encoder("hf-image", model=model_dir)  # hf-image dispatches siglip2 to Siglip2VisionModel too
    assert np.allclose(hf.embed(hf.preprocess({"path": paths})), want.numpy(), atol=1e-5)


def test_siglip2_rejects_other_models(tmp_path):
    with pytest.raises(ConfigError, match="model_type 'dinov2', not a SigLIP checkpoint"):
        get_encoder("siglip2", model=tiny_dinov2(tmp_path / "dino"))


# ------------------------------------------------------------------------------------------ Franca
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def franca_release_state(dim: int, depth: int, grid: int, chunks: int = 2, seed: int = 0) -> dict:
    """A random checkpoint laid out like valeoai/Franca's release files, written from its source
    (DinoVisionTransformer with block_chunks, NestedTensorBlock, SwiGLUFFNFused, LayerScale), not from
    e2i's module: {"teacher": {"backbone.<param>": ..., "dino_head.…": ..., "ibot_head.…": ...}}."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8  # SwiGLUFFNFused width
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    per_chunk = depth // chunks
    for i in range(depth):
        p = f"blocks.{i // per_chunk}.{i}."  # FSDP chunk, then the block's global index
        shapes.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
            p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
            p + "ls1.gamma": (dim,), p + "ls2.gamma": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
            p + "mlp.w12.weight": (2 * hidden, dim), p + "mlp.w12.bias": (2 * hidden,),
            p + "mlp.w3.weight": (dim, hidden), p + "mlp.w3.bias": (dim,),
        })  # fmt: skip
    teacher = {f"backbone.{k}": 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, dim, generator=g)
    teacher["ibot_head.last_layer.weight"] = torch.randn(8, dim, generator=g)
    return {"teacher": teacher}


def test_franca_random_tiny_vit(images):
    enc = get_encoder("franca", pretrained=False, **TINY)
    assert enc.dim == 32 and get_encoder("franca", pretrained=False, pooling="cls+mean", **TINY).dim == 64
    paths = col([images["square"], images["wide"], images["bad"]])
    batch = enc.preprocess({"path": paths})
    assert batch["pixel_values"].shape == (3, 3, 224, 224) and batch["error"][2].startswith("unreadable")
    crop = batch["pixel_values"][0]
    assert abs(crop.mean()) < 3 and crop.std() > 0.3  # ImageNet mean/std normalised pixels
    emb = enc.embed(batch)
    assert np.isnan(emb[2]).all()
    check_rows(emb[:2], 32, normalized=False)
    assert np.allclose(enc.embed(batch)[:2], emb[:2], atol=1e-6)  # deterministic (eval mode)
    normed = get_encoder("franca", pretrained=False, normalize=True, pooling="mean", **TINY)
    check_rows(normed.encode({"path": paths[:2]}), 32, normalized=True)


def test_franca_release_checkpoint_loads_strictly(tmp_path, images):
    import torch

    state = franca_release_state(dim=32, depth=2, grid=37)  # ViT-B/14's 518-px grid
    torch.save(state, tmp_path / "franca_vitb14_In21K.pth")
    enc = get_encoder("franca", arch="vitb14", checkpoint=str(tmp_path / "franca_vitb14_In21K.pth"), **TINY)
    enc.load("cpu")
    net = enc._rt["model"]
    assert net.grid == 37 and len(net.blocks) == 2
    want = state["teacher"]["backbone.blocks.1.1.mlp.w3.weight"]
    assert torch.equal(net.blocks[1].mlp.w3.weight, want)  # chunked key landed in the flat block 1
    emb = enc.encode({"path": col([images["square"], images["tall"]])})  # 224 px: pos_embed interpolated
    check_rows(emb, 32, normalized=False)
    broken = {"teacher": {k: v for k, v in state["teacher"].items() if not k.endswith("ls2.gamma")}}
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(
        CheckpointError, match=r"missing.pth: cannot load Franca vitb14 weights \(.*ls2.gamma"
    ):
        get_encoder("franca", arch="vitb14", checkpoint=str(tmp_path / "missing.pth"), **TINY).load("cpu")
    extra = {"teacher": {**state["teacher"], "backbone.register_tokens": torch.zeros(1, 4, 32)}}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="register_tokens"):
        get_encoder("franca", arch="vitb14", checkpoint=str(tmp_path / "extra.pth"), **TINY).load("cpu")


def test_franca_options():
    with pytest.raises(ConfigError, match="no Laion600M vitb14"):
        get_encoder("franca", arch="vitb14", weights="Laion600M")
    with pytest.raises(ConfigError, match="multiple of the patch size 14"):
        get_encoder("franca", image_size=100)
    with pytest.raises(ConfigError, match="need pretrained=False"):
        get_encoder("franca", depth=2)
    from e2i.encoders.franca import RELEASE_URL, WEIGHTS

    assert RELEASE_URL.endswith("valeoai/Franca/releases/download/v1.0.0")
    assert WEIGHTS[("vitl14", "In21K")] == "franca_vitl14_In21K.pth"
