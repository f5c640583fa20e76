"""Projection heads and ContrastiveModel: shapes, normalisation, temperature/bias, registry errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from e2i.config import ModelConfig
from e2i.errors import ConfigError
from e2i.model.heads import HEADS, AttentionHead, ContrastiveModel, MLPHead, build_head, build_model
from e2i.model.losses import softmax_loss

SMALL = {"output_dim": 16, "hidden_dim": 32, "num_heads": 4, "num_layers": 2, "num_tokens": 4, "dropout": 0.0}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_model_outputs_unit_norm_embeddings_in_shared_space(head):
    torch.manual_seed(0)
    model = build_model(ModelConfig(type=head, **SMALL), item_dim=10, caption_dim=7)
    assert isinstance(model, ContrastiveModel)
    assert isinstance(model.item_head, HEADS[head]) and isinstance(model.caption_head, HEADS[head])
    x, c = torch.randn(5, 10), torch.randn(5, 7)
    item_z, cap_z = model(x, c)
    assert item_z.shape == cap_z.shape == (5, 16)
    torch.testing.assert_close(item_z.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(cap_z.norm(dim=1), torch.ones(5))
    # each side is its own head's output, only rescaled (same direction)
    torch.testing.assert_close(F.cosine_similarity(item_z, model.item_head(x)), torch.ones(5))
    torch.testing.assert_close(F.cosine_similarity(cap_z, model.caption_head(c)), torch.ones(5))
    # row by row: evaluation embeds a split in chunks, which must give the rows of one big batch
    torch.testing.assert_close(torch.cat([model.encode_items(x[:2]), model.encode_items(x[2:])]), item_z)
    torch.testing.assert_close(torch.cat([model.encode_captions(c[:3]), model.encode_captions(c[3:])]), cap_z)
    off_diagonal = (item_z @ item_z.T - torch.eye(5)).abs().max()
    assert off_diagonal < 0.999  # different inputs, different embeddings (no collapse to one point)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_parameter_gets_gradient_and_training_reduces_loss(head):
    """A few Adam steps on synthetic paired data (captions = noisy linear map of items) must lower
    the loss, and every head parameter, log_scale included, must receive a gradient."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(type=head, **SMALL), item_dim=12, caption_dim=9)
    items = torch.randn(32, 12)
    caps = items @ torch.randn(12, 9) + 0.1 * torch.randn(32, 9)
    ids = torch.arange(32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = softmax_loss(*model(items, caps), ids, model.logit_scale)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.7 * losses[0]
    for name, p in model.named_parameters():
        if name != "bias":  # the SigLIP bias is only used by the sigmoid loss
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_temperature_and_bias_initialisation_and_clamp():
    model = build_model(ModelConfig(type="siglip", init_temperature=0.1, init_bias=-10.0, **SMALL), 8, 8)
    assert model.log_scale.item() == pytest.approx(math.log(10.0))
    assert model.logit_scale.item() == pytest.approx(10.0)
    assert model.bias.item() == -10.0
    assert model.log_scale.requires_grad and model.bias.requires_grad
    with torch.no_grad():
        model.log_scale.fill_(math.log(1000.0))
    model.clamp_parameters_()  # the cap is on the parameter, after each optimizer step (open_clip)
    assert model.logit_scale.item() == pytest.approx(100.0)

    frozen = build_model(ModelConfig(type="clip", learn_temperature=False, learn_bias=False, **SMALL), 8, 8)
    assert not frozen.log_scale.requires_grad and not frozen.bias.requires_grad
    assert frozen.logit_scale.item() == pytest.approx(1 / 0.07)


def test_unknown_head_lists_valid_names():
    with pytest.raises(ConfigError, match="siglip, clip, attention, mlp"):
        build_head("transformer", 8, ModelConfig())


def test_mlp_depth_follows_num_layers():
    for depth in (0, 1, 3):
        head = MLPHead(10, output_dim=4, hidden_dim=6, num_layers=depth)
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == depth + 1
        assert head(torch.randn(3, 10)).shape == (3, 4)


def test_attention_head_splits_padded_embedding_into_tokens():
    head = AttentionHead(10, output_dim=4, hidden_dim=8, num_heads=2, num_layers=1, num_tokens=4)
    x = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    tokens = head.tokens(x)
    assert tokens.shape == (2, 4, 3)  # ceil(10 / 4) = 3 values per token, 2 zeros of padding
    torch.testing.assert_close(tokens.reshape(2, 12)[:, :10], x)
    torch.testing.assert_close(tokens.reshape(2, 12)[:, 10:], torch.zeros(2, 2))
    assert head(x).shape == (2, 4)
    with pytest.raises(ValueError, match=r"expects \(B, 10\)"):
        head(torch.randn(2, 3, 10))


def test_attention_head_is_order_aware_through_positional_embeddings():
    torch.manual_seed(0)
    head = AttentionHead(8, output_dim=4, hidden_dim=8, num_heads=2, num_layers=1, num_tokens=4).eval()
    x = torch.randn(1, 8)
    swapped = x.reshape(1, 4, 2)[:, [1, 0, 2, 3]].reshape(1, 8)  # swap the first two tokens
    assert not torch.allclose(head(x), head(swapped))


def test_attention_head_accepts_token_sequences():
    """(T, D) dims build a sequence head: (B, T' <= T, D) inputs, T is the positional table size."""
    torch.manual_seed(0)
    cfg = ModelConfig(type="attention", **SMALL)
    model = build_model(cfg, item_dim=(6, 10), caption_dim=7)
    assert model.item_head.sequence_input and model.item_head.pos.shape == (1, 6, 32)
    item_z = model.encode_items(torch.randn(3, 5, 10))
    assert item_z.shape == (3, 16)
    torch.testing.assert_close(item_z.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="T<=6"):
        model.encode_items(torch.randn(3, 7, 10))
    with pytest.raises(ConfigError, match="token sequences need 'attention'"):
        build_model(ModelConfig(type="mlp", **SMALL), item_dim=(6, 10), caption_dim=7)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="clip", **{**SMALL, "dropout": 0.5}), 8, 8)
    x = torch.randn(4, 8)
    assert not torch.allclose(model.encode_items(x), model.encode_items(x))  # train mode: random masks
    model.eval()
    torch.testing.assert_close(model.encode_items(x), model.encode_items(x))
    assert F.cosine_similarity(model.encode_items(x), model.encode_items(x)).min() > 0.999


def test_attention_head_maps_each_chunk_with_its_own_weights_and_pools_a_cls_token():
    """Flat inputs: chunk t has its own (d, H) map (no shared projection), and the output is the
    CLS token's: without positional embeddings, swapping two chunks still changes the embedding."""
    torch.manual_seed(0)
    head = AttentionHead(8, output_dim=4, hidden_dim=8, num_heads=2, num_layers=1, num_tokens=4).eval()
    assert head.token_weight.shape == (4, 2, 8) and head.token_bias.shape == (4, 8)
    assert head.cls.shape == (1, 1, 8) and not hasattr(head, "token_proj")
    with torch.no_grad():
        head.pos.zero_()
    x = torch.randn(3, 8)
    swapped = x.reshape(3, 4, 2)[:, [1, 0, 2, 3]].reshape(3, 8)
    assert not torch.allclose(head(x), head(swapped), atol=1e-4)
    # token t of the projection only depends on chunk t, through W_t
    t = head.tokens(head.in_norm(x))
    h = head.embed_tokens(x)
    torch.testing.assert_close(h[:, 2], t[:, 2] @ head.token_weight[2] + head.token_bias[2])


def test_old_attention_checkpoint_is_a_one_line_error(tmp_path):
    from e2i.errors import CheckpointError
    from e2i.train.checkpoint import load_into

    model = build_model(ModelConfig(type="attention", **SMALL), 8, 8)
    old = {k: v for k, v in model.state_dict().items() if ".cls" not in k and "token_" not in k}
    old["item_head.token_proj.weight"] = torch.zeros(32, 2)  # the shared projection of the old head
    with pytest.raises(CheckpointError, match=r"^\S+: does not match the model \(missing") as info:
        load_into(model, old, tmp_path / "model.safetensors")
    assert "\n" not in str(info.value)
