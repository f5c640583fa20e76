"""Tiny random-weight models for tests (no downloads): the real transformers/PaSST classes, small configs.

    text_dir = tiny_roberta(tmp_path / "roberta")     # get_encoder("hf-text", model=text_dir)
    image_dir = tiny_siglip(tmp_path / "siglip")      # get_encoder("hf-image", model=image_dir)
    naflex = tiny_siglip2_naflex(tmp_path / "s2")     # get_encoder("siglip2", model=naflex)
    mpnet = tiny_mpnet(tmp_path / "mpnet")            # wrap in sentence-transformers for "sbert"
    get_encoder("passt", **TINY_PASST)                # real PaSST class, 1 block of width 32

Each builder is deterministic (fixed seeds) and returns the directory as a string; building one takes
well under a second after transformers is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

# PaSST with random weights small enough for CPU tests (~0.1 s per 10 s segment).
TINY_PASST = {"pretrained": False, "embed_dim": 32, "depth": 1, "num_heads": 2}

# Words the tiny tokenizer is trained on (captions in tests should mostly use these).
_CORPUS = [
    "a dog barks loudly in the distance",
    "birds are singing in the trees",
    "a car passes by on a wet road",
    "rain falls on a metal roof",
    "a high pitched tone rises slowly",
    "a low hum with a faint hiss",
    "fast rhythmic beeping can be heard",
    "people talk and laugh in a busy room",
    "water flows in a stream",
    "a red ball on green grass",
    "a cat sleeping on a blue sofa",
    "white noise bursts then silence",
]


def _train_bpe(vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        _CORPUS * 4,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    tok._tokenizer.post_processor = RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def tiny_tokenizer(model_max_length: int = 62):
    """Byte-level BPE trained in memory, wrapped as a RoBERTa-style PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe()._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )


def tiny_roberta(
    path: str | os.PathLike, *, hidden_size: int = 32, layers: int = 2, max_positions: int = 66, seed: int = 0
) -> str:
    """Save a tiny RobertaModel + tokenizer to ``path`` (model_max_length = max_positions - 4)."""
    from transformers import RobertaConfig, RobertaModel

    return _tiny_text_model(path, RobertaConfig, RobertaModel, hidden_size, layers, max_positions, seed)


def _tiny_text_model(
    path, config_cls, model_cls, hidden_size: int, layers: int, max_positions: int, seed: int
):
    """A small encoder of ``model_cls`` over the tiny BPE tokenizer, saved with it to ``path``."""
    import torch

    tok = tiny_tokenizer(model_max_length=max_positions - 4)
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    path = Path(path)
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _siglip_processor(image_size: int):
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": image_size, "width": image_size})


def tiny_siglip(
    path: str | os.PathLike, *, hidden_size: int = 32, image_size: int = 32, seed: int = 0
) -> str:
    """Save a tiny SiglipVisionModel + SiglipImageProcessor to ``path``."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    torch.manual_seed(seed)
    path = Path(path)
    SiglipVisionModel(config).save_pretrained(path)
    _siglip_processor(image_size).save_pretrained(path)
    return str(path)


def tiny_clip(path: str | os.PathLike, *, hidden_size: int = 32, image_size: int = 32, seed: int = 0) -> str:
    """Save a tiny *full* CLIPModel (text + vision) + CLIPImageProcessor: hf-image uses its vision tower."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    small = {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(
        text_config={**small, "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={**small, "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    path = Path(path)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return str(path)


def tiny_dinov2(
    path: str | os.PathLike, *, hidden_size: int = 32, image_size: int = 32, seed: int = 0
) -> str:
    """Save a tiny Dinov2Model + BitImageProcessor (DINOv2's processor) to ``path``."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    torch.manual_seed(seed)
    path = Path(path)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return str(path)


def _small_tower(hidden_size: int) -> dict:
    return {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": 2,
            "num_attention_heads": 2}  # fmt: skip


def tiny_siglip_full(
    path: str | os.PathLike, *, hidden_size: int = 32, image_size: int = 32, seed: int = 0
) -> str:
    """Save a tiny *full* SiglipModel (model_type ``siglip``, the layout of the fixed-resolution SigLIP 2
    checkpoints such as google/siglip2-base-patch16-224) + SiglipImageProcessor."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config={**_small_tower(hidden_size), "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={**_small_tower(hidden_size), "image_size": image_size, "patch_size": 8},
    )
    torch.manual_seed(seed)
    path = Path(path)
    SiglipModel(config).save_pretrained(path)
    _siglip_processor(image_size).save_pretrained(path)
    return str(path)


def tiny_siglip2_naflex(
    path: str | os.PathLike, *, hidden_size: int = 32, max_num_patches: int = 16, seed: int = 0
) -> str:
    """Save a tiny full Siglip2Model (model_type ``siglip2``, as google/siglip2-base-patch16-naflex) +
    Siglip2ImageProcessor (8-px patches, ``max_num_patches`` patches per image)."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    config = Siglip2Config(
        text_config={**_small_tower(hidden_size), "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={**_small_tower(hidden_size), "patch_size": 8, "num_patches": max_num_patches},
    )
    torch.manual_seed(seed)
    path = Path(path)
    Siglip2Model(config).save_pretrained(path)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=max_num_patches).save_pretrained(path)
    return str(path)


def tiny_mpnet(
    path: str | os.PathLike, *, hidden_size: int = 32, max_positions: int = 66, seed: int = 0
) -> str:
    """Save a tiny MPNetModel (all-mpnet-base-v2's architecture) + the tiny BPE tokenizer to ``path``."""
    from transformers import MPNetConfig, MPNetModel

    return _tiny_text_model(path, MPNetConfig, MPNetModel, hidden_size, 2, max_positions, seed)
