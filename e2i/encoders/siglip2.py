"""``siglip2``: SigLIP 2 image embeddings (Tschannen et al. 2025, "SigLIP 2: Multilingual Vision-Language
Encoders with Improved Semantic Understanding, Localization, and Dense Features", arXiv:2502.14786).

Google publishes two kinds of checkpoints on the Hugging Face hub, and both load here with transformers'
own classes and image processors (``from_pretrained(model, revision=..., token=$HF_TOKEN)``):

- fixed resolution, e.g. ``google/siglip2-base-patch16-224`` (also -256/-384/-512, ``-large-``, ``so400m-``,
  ``giant-opt-``): config ``model_type: siglip`` -> ``SiglipVisionModel`` + ``SiglipImageProcessor``
  (resize to the square training size, rescale to [-1, 1]).
- NaFlex, e.g. ``google/siglip2-base-patch16-naflex`` / ``google/siglip2-so400m-patch16-naflex``: config
  ``model_type: siglip2`` -> ``Siglip2VisionModel`` + ``Siglip2ImageProcessor``, which keeps the aspect
  ratio: the image is resized so that its patch grid (h, w) has at most ``max_num_patches`` patches, cut
  into (h * w, 3 * 16 * 16) patches and padded to ``max_num_patches`` rows. ``preprocess`` adds the
  columns ``pixel_values`` (B, N, 3 * p * p), ``pixel_attention_mask`` (B, N) (1 = real patch) and
  ``spatial_shapes`` (B, 2) = (h, w); the model interpolates its position embeddings to each (h, w).

Embedding = the vision tower's ``pooler_output``: SigLIP's multi-head attention-pooling head (MAP), the
same vector ``SiglipModel.get_image_features`` returns (there is no extra projection). SigLIP's logits are
cosines of these, so ``normalize`` defaults to True. dim = vision ``hidden_size`` (B/16: 768, L: 1024,
So400m: 1152, g: 1536).

Options (``--encoder-option image.KEY=VALUE``):

- ``model``: hub id or local dir (default ``google/siglip2-base-patch16-224``); full dual-encoder or
  vision-only checkpoints.
- ``max_num_patches``: NaFlex patch budget (64 ... 1024; null = the processor's, 256); an error for
  fixed-resolution checkpoints, whose size is fixed by the checkpoint.
- ``normalize`` (true), ``dtype`` (auto: fp32 on CPU, bf16/fp16 on CUDA), ``revision``, ``trust_remote_code``.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2i.encoders.base import DTYPES, check_choice
from e2i.encoders.hf import HFImageEncoder
from e2i.errors import ConfigError

FIXED_TYPES = ("siglip", "siglip_vision_model")  # fixed-resolution SigLIP 2 (and SigLIP 1) checkpoints
NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")


@dataclass(frozen=True)
class Siglip2Options:
    model: str = "google/siglip2-base-patch16-224"  # or google/siglip2-base-patch16-naflex, a local dir
    max_num_patches: int | None = None  # NaFlex only: patch budget per image (None = processor's 256)
    normalize: bool = True  # L2-normalise (SigLIP compares images and texts by cosine)
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPES)
        if self.max_num_patches is not None and self.max_num_patches < 1:
            raise ValueError("max_num_patches must be >= 1")


class Siglip2ImageEncoder(HFImageEncoder):
    name = "siglip2"
    modality = "image"
    input_column = "path"
    Options = Siglip2Options

    def __init__(self, **options) -> None:
        super().__init__(**options)
        model_type = self.options["model_type"]
        if model_type not in FIXED_TYPES + NAFLEX_TYPES:
            raise ConfigError(
                f"encoder 'siglip2': model '{self.opts.model}' has model_type '{model_type}', "
                f"not a SigLIP checkpoint (valid: {', '.join(FIXED_TYPES + NAFLEX_TYPES)})"
            )
        naflex = model_type in NAFLEX_TYPES
        if self.opts.max_num_patches is not None and not naflex:
            raise ConfigError(
                f"encoder 'siglip2': max_num_patches is for NaFlex checkpoints; '{self.opts.model}' is "
                "fixed-resolution (model_type siglip)"
            )
        self.options["variant"] = "naflex" if naflex else "fixed"

    def _processor_kwargs(self) -> dict:
        n = self.opts.max_num_patches
        return {} if n is None else {"max_num_patches": int(n)}
