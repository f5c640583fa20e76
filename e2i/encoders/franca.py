"""``franca``: Franca image embeddings (Venkataramanan et al. 2025, "Franca: Nested Matryoshka Clustering
for Scalable Visual Representation Learning", arXiv:2507.14137; code and weights: github.com/valeoai/Franca).

How the authors publish it: only through torch hub (``torch.hub.load('valeoai/Franca', 'franca_vitl14')``),
whose code builds their DINOv2-style ViT and downloads a ``{"teacher": state_dict}`` file from the GitHub
release. That path runs the repository's code and needs its dependencies, so e2i rebuilds the same network
(:mod:`e2i.encoders.vit`, identical module names) and reads the published file itself with
``torch.load(weights_only=True)`` (or safetensors), strictly: every backbone tensor must be there.

Published checkpoints (release ``v1.0.0``, ``WEIGHTS`` below; the URL pattern is hubconf's
``franca_{arch}_{weights}.pth``): ViT-B/14 In21K, ViT-L/14 In21K / Laion600M, ViT-g/14 In21K / Laion600M
(three ``.tar.gz`` parts, concatenated and unpacked here), and the DINOv2 baselines the authors trained on
In21K (``Dinov2_In21K``, B and L). All: patch 14, SwiGLU FFN, LayerScale, no registers, 4 FSDP block
chunks (keys ``blocks.<chunk>.<block>.``; flattened on load), training heads (``dino_head.``,
``ibot_head.``, ``rasa_head.``) dropped. The position-embedding grid is read from the file (ViT-B: 37x37
for 518 px; others 16x16) and interpolated to the input like Franca does (bicubic, +0.1 offset).

Preprocessing (the authors' inference example): resize the short side to 256 (bicubic), centre-crop 224,
ImageNet mean/std. Output: ``pooling=cls`` the final-norm CLS token (``x_norm_clstoken``, what Franca's
k-NN/linear evaluations use); ``mean`` = the mean of the normalised patch tokens; ``cls+mean`` = both
concatenated (2 * dim, DINOv2's linear-probe input). dim: B 768, L 1024, g 1536.

Options (``--encoder-option image.KEY=VALUE``): ``arch`` (vitb14 | vitl14 | vitg14), ``weights``
(In21K | Laion600M | Dinov2_In21K), ``pretrained`` (true: download the release file into the torch hub
cache), ``checkpoint`` (local file, overrides pretrained), ``pooling``, ``image_size`` (crop, multiple of
14), ``normalize`` (false), ``dtype``, and ``embed_dim``/``depth``/``num_heads`` (random-weight small
models for tests; need pretrained=false).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import DTYPES, ERROR, Encoder, InputError, check_choice, load_image, resolve_dtype
from e2i.encoders.vit import VIT_ARCHS, build_vit, load_vit_checkpoint

RELEASE_URL = "https://github.com/valeoai/Franca/releases/download/v1.0.0"
# (arch, weights) -> release file(s), as valeoai/Franca's hubconf (franca/hub/backbones.py) names them.
WEIGHTS = {
    ("vitb14", "In21K"): "franca_vitb14_In21K.pth",
    ("vitb14", "Dinov2_In21K"): "franca_vitb14_Dinov2_In21K.pth",
    ("vitl14", "In21K"): "franca_vitl14_In21K.pth",
    ("vitl14", "Laion600M"): "franca_vitl14_Laion600M.pth",
    ("vitl14", "Dinov2_In21K"): "franca_vitl14_Dinov2_In21K.pth",
    ("vitg14", "In21K"): "franca_vitg14_In21K_chunked.tar.gz",  # parts _aa, _ab, _ac
    ("vitg14", "Laion600M"): "franca_vitg14_Laion600M_chunked.tar.gz",
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
POOLINGS = ("cls", "mean", "cls+mean")


@dataclass(frozen=True)
class FrancaOptions:
    arch: str = "vitl14"
    weights: str = "In21K"  # In21K | Laion600M | Dinov2_In21K (which exist depends on arch)
    pretrained: bool = True  # download the release checkpoint (torch hub cache) on first load
    checkpoint: str | None = None  # local .pth / .safetensors of the same arch; overrides pretrained
    pooling: str = "cls"  # cls | mean (patch tokens) | cls+mean (concatenated, 2 * dim)
    image_size: int = 224  # centre-crop size (multiple of 14); the short side is resized to 256/224 of it
    normalize: bool = False  # L2-normalise outputs
    dtype: str = "auto"
    embed_dim: int | None = None  # size overrides for random-weight test models (pretrained=False)
    depth: int | None = None
    num_heads: int | None = None

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, tuple(VIT_ARCHS))
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("dtype", self.dtype, DTYPES)
        if self.pretrained and not self.checkpoint and (self.arch, self.weights) not in WEIGHTS:
            have = sorted(w for a, w in WEIGHTS if a == self.arch)
            raise ValueError(
                f"weights: Franca publishes no {self.weights} {self.arch} (valid: {', '.join(have)})"
            )
        if self.image_size % 14 or self.image_size < 14:
            raise ValueError(f"image_size must be a multiple of the patch size 14, got {self.image_size}")
        sized = any(v is not None for v in (self.embed_dim, self.depth, self.num_heads))
        if sized and self.pretrained and not self.checkpoint:
            raise ValueError(
                "embed_dim/depth/num_heads need pretrained=False (or checkpoint=PATH of that size)"
            )


class FrancaEncoder(Encoder):
    name = "franca"
    modality = "image"
    input_column = "path"
    Options = FrancaOptions

    def _static_dim(self) -> int:
        width = self.opts.embed_dim or VIT_ARCHS[self.opts.arch]["embed_dim"]
        return 2 * width if self.opts.pooling == "cls+mean" else width

    def preprocess(self, batch):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        size = self.opts.image_size
        pixels = np.zeros((len(batch["path"]), 3, size, size), dtype=np.float32)  # (B, 3, S, S)
        errors = []
        for i, path in enumerate(batch["path"]):
            try:
                img = TF.resize(load_image(path), round(size * 256 / 224), InterpolationMode.BICUBIC)
                x = TF.to_tensor(TF.center_crop(img, [size, size]))  # (3, S, S) in [0, 1]
                pixels[i] = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD).numpy()
                errors.append("")
            except InputError as e:
                errors.append(str(e))
        out = dict(batch)
        out["pixel_values"] = pixels
        out[ERROR] = np.array(errors, dtype=object)
        return out

    def _load(self, device: str) -> None:
        o = self.opts
        sizes = {
            k: v for k, v in (("embed_dim", o.embed_dim), ("depth", o.depth), ("num_heads", o.num_heads)) if v
        }
        if o.checkpoint or o.pretrained:
            path = o.checkpoint or download_weights(o.arch, o.weights)
            net = load_vit_checkpoint(path, o.arch, **sizes)
        else:
            net = build_vit(o.arch, **sizes)
        self._rt["dtype"] = dtype = resolve_dtype(o.dtype, device)
        self._rt["model"] = net.to(device, dtype).eval()

    def _embed(self, batch):
        import torch

        x = torch.as_tensor(np.asarray(batch["pixel_values"], dtype=np.float32))
        with torch.inference_mode():
            tokens = (
                self._rt["model"].forward_features(x.to(self.device, self._rt["dtype"])).float()
            )  # (B, 1+N, D)
            cls, patches = tokens[:, 0], tokens[:, 1:].mean(1)  # (B, D) each
            out = {"cls": cls, "mean": patches, "cls+mean": torch.cat([cls, patches], dim=1)}[
                self.opts.pooling
            ]
            if self.opts.normalize:
                out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy()


def download_weights(arch: str, weights: str) -> str:
    """Fetch the release file into ``$TORCH_HOME/hub/checkpoints`` (once) and return its path; ViT-g's
    three ``.tar.gz`` parts are concatenated and the ``.pth`` inside is extracted (members checked)."""
    import tarfile

    import torch

    from e2i.errors import CheckpointError

    name = WEIGHTS[(arch, weights)]
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, name.replace("_chunked.tar.gz", ".pth"))
    if os.path.exists(target):
        return target
    try:
        if not name.endswith(".tar.gz"):
            torch.hub.download_url_to_file(f"{RELEASE_URL}/{name}", target, progress=True)
            return target
        joined = os.path.join(cache, name)
        with open(joined + ".part", "wb") as out:
            for part in ("aa", "ab", "ac"):
                piece = f"{joined}.part_{part}"
                torch.hub.download_url_to_file(f"{RELEASE_URL}/{name}.part_{part}", piece, progress=True)
                with open(piece, "rb") as f:
                    out.write(f.read())
                os.remove(piece)
        with tarfile.open(joined + ".part") as tar:
            member = next(m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pth"))
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                dst.write(src.read())
        os.remove(joined + ".part")
        return target
    except (OSError, StopIteration, tarfile.TarError) as e:
        raise CheckpointError(
            f"franca: cannot download {arch} {weights} weights from {RELEASE_URL} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); pass checkpoint=PATH"
        ) from None
