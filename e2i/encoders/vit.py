"""The DINOv2-style ViT that Franca publishes (valeoai/Franca ``franca/models/vision_transformer.py``, itself
DINOv2's), rebuilt with the same module and parameter names so its release files load strictly.

Why not timm's ``VisionTransformer``: its SwiGLU MLP names the packed projection ``mlp.fc1``/``mlp.fc2``
where Franca has ``mlp.w12``/``mlp.w3``, it has no ``mask_token``, and it resizes position embeddings to an
output size, while Franca (like DINOv2) scales by ``(grid + 0.1) / M`` ("interpolate_offset"), which gives
slightly different embeddings when the input grid differs from the checkpoint's (ViT-B/14: 37x37 grid,
224 px inputs = 16x16). Matching both would need a key-renaming shim *and* a patched interpolation.

Token layout of :meth:`DinoViT.forward_features`: ``(B, 1 + N, D)`` after the final LayerNorm, CLS first,
then the N = (H/14) * (W/14) patch tokens in row-major order (no register tokens in Franca's models).
"""

from __future__ import annotations

import math
import re

# arch -> DinoVisionTransformer sizes (Franca's vit_base / vit_large / vit_giant2 at patch 14).
VIT_ARCHS = {
    "vitb14": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vitl14": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vitg14": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}
PATCH = 14
LAYERSCALE_INIT = 1e-5  # FrancaConfig.layerscale
INTERPOLATE_OFFSET = 0.1  # FrancaConfig.interpolate_offset (DINO's historical kludge, kept for parity)
TRAINING_HEADS = ("dino_head.", "ibot_head.", "rasa_head.")


def _nn():
    import torch
    from torch import nn

    return torch, nn


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """Franca's SwiGLUFFNFused width: 2/3 of the MLP width, rounded up to a multiple of 8 (ViT-L: 2736)."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def build_vit(arch: str, *, img_size: int = 224, embed_dim=None, depth=None, num_heads=None):
    """A randomly initialised :class:`DinoViT` of ``arch`` (sizes overridable for small test models)."""
    spec = {**VIT_ARCHS[arch]}
    spec.update(
        {k: v for k, v in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)) if v}
    )
    return _classes()["DinoViT"](img_size=img_size, **spec)


def load_vit_checkpoint(path: str, arch: str, **sizes):
    """Build the ViT for a Franca checkpoint file and load it strictly.

    Accepts the release format ``{"teacher": {"backbone.blocks.<chunk>.<i>.…": tensor, "dino_head.…"}}``
    (prefixes ``module.``/``backbone.`` stripped, chunk level flattened, training heads dropped) or a
    plain backbone state dict (``.pth`` or ``.safetensors``). The image size comes from ``pos_embed``."""
    from e2i.errors import CheckpointError

    try:
        state = backbone_state(_read(path))
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)  # pos_embed: (1, 1 + M*M, D)
        net = build_vit(arch, img_size=grid * PATCH, **sizes)
        load_strict(net, state)
    except Exception as e:  # noqa: BLE001 - unpickling, missing/unexpected keys, shape mismatch: a bad file
        raise CheckpointError(f"{path}: cannot load Franca {arch} weights ({one_line(e)})") from None
    return net


def load_strict(net, state: dict, *, assign: bool = False) -> None:
    """``load_state_dict`` that fails on any missing or unexpected key, naming the first few."""
    result = net.load_state_dict(state, strict=False, assign=assign)  # shape mismatches still raise
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception message on one line (torch's load errors span several), cut at ``limit`` chars."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: str) -> dict:
    torch, _ = _nn()
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def backbone_state(raw: dict) -> dict:
    """Release checkpoint -> the backbone's own state dict (see :func:`load_vit_checkpoint`)."""
    state = raw.get("teacher", raw)
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if key.startswith(TRAINING_HEADS):
            continue
        # FSDP chunking: blocks.<chunk>.<global index>.<param> -> blocks.<global index>.<param>
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        out[key] = value
    return out


_CACHE: dict = {}


def _classes() -> dict:
    """The nn.Module classes, defined on first use so importing e2i.encoders does not import torch."""
    if _CACHE:
        return _CACHE
    torch, nn = _nn()
    F = torch.nn.functional

    class PatchEmbed(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

        def forward(self, x):  # (B, 3, H, W) -> (B, N, D)
            return self.proj(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):
        def __init__(self, dim: int, num_heads: int) -> None:
            super().__init__()
            self.num_heads = num_heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d/heads)
            return self.proj(y.transpose(1, 2).reshape(b, n, d))

    class SwiGLU(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            hidden = swiglu_hidden(dim)
            self.w12 = nn.Linear(dim, 2 * hidden)  # gate and value, packed
            self.w3 = nn.Linear(hidden, dim)

        def forward(self, x):
            gate, value = self.w12(x).chunk(2, dim=-1)
            return self.w3(F.silu(gate) * value)

    class LayerScale(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(LAYERSCALE_INIT * torch.ones(dim))

        def forward(self, x):
            return x * self.gamma

    class Block(nn.Module):
        """Pre-norm residual block: x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x)))."""

        def __init__(self, dim: int, num_heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.attn, self.mlp = Attention(dim, num_heads), SwiGLU(dim)
            self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)

        def forward(self, x):
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))

    class DinoViT(nn.Module):
        def __init__(self, *, img_size: int, embed_dim: int, depth: int, num_heads: int) -> None:
            super().__init__()
            self.grid = img_size // PATCH  # checkpoint's position grid M (M x M patches)
            self.patch_embed = PatchEmbed(embed_dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # iBOT masking; unused at inference
            self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def position_embedding(self, h: int, w: int):
            """(1, 1 + h*w, D): the M x M grid resized bicubically by scale (h + 0.1)/M, (w + 0.1)/M."""
            if h == w == self.grid:
                return self.pos_embed
            pos = self.pos_embed.float()
            cls, grid = pos[:, :1], pos[:, 1:]
            m, d = self.grid, pos.shape[-1]
            grid = F.interpolate(
                grid.reshape(1, m, m, d).permute(0, 3, 1, 2),  # (1, D, M, M)
                scale_factor=((h + INTERPOLATE_OFFSET) / m, (w + INTERPOLATE_OFFSET) / m),
                mode="bicubic",
                antialias=False,
            )
            grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, d)
            return torch.cat([cls, grid], dim=1).to(self.pos_embed.dtype)

        def forward_features(self, x):
            """(B, 3, H, W), H and W multiples of 14 -> (B, 1 + N, D) normalised tokens."""
            h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.patch_embed(x)], dim=1)
            tokens = tokens + self.position_embedding(h, w)
            for block in self.blocks:
                tokens = block(tokens)
            return self.norm(tokens)

    _CACHE.update(DinoViT=DinoViT)
    return _CACHE
