"""The contrastive scalars: the logit-scale cap (on the parameter, after the step), the per-loss
initial temperature, and learn_bias separate from learn_temperature."""

from __future__ import annotations

import math

import pytest
import torch

from e2i.config import ModelConfig, load_train_config, save_train_config, train_config_from_dict
from e2i.errors import ConfigError
from e2i.model.heads import MAX_LOGIT_SCALE, build_model
from e2i.model.losses import sigmoid_loss, softmax_loss

SMALL = {"output_dim": 16, "hidden_dim": 32, "num_heads": 4, "num_layers": 1, "num_tokens": 4, "dropout": 0.0}


def _random_pairs(seed: int = 0):
    """Unrelated items and captions: at a huge scale both losses want the scale smaller."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g), torch.arange(16)


@pytest.mark.parametrize("loss", [softmax_loss, sigmoid_loss])
def test_scale_above_cap_gets_gradient_and_comes_back_down(loss):
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="siglip", init_temperature=0.07, **SMALL), 8, 8)
    with torch.no_grad():
        model.log_scale.fill_(math.log(120.0))  # above the cap of 100 (seen in a run: 120.5)
    assert model.logit_scale.item() == pytest.approx(120.0)  # forward is not clamped
    items, caps, ids = _random_pairs()
    value = loss(*model(items, caps), ids, model.logit_scale, model.bias)
    value.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.item() > 0  # wants a smaller scale
    opt = torch.optim.SGD([model.log_scale], lr=0.01)
    opt.step()
    assert model.logit_scale.item() < 120.0
    model.clamp_parameters_()  # what the training loop does after each optimizer step
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-4


def test_clamp_parameters_caps_the_parameter_in_place_and_keeps_small_scales():
    model = build_model(ModelConfig(type="clip", init_temperature=0.07, **SMALL), 8, 8)
    model.clamp_parameters_()
    assert model.logit_scale.item() == pytest.approx(1 / 0.07)  # below the cap: untouched
    with torch.no_grad():
        model.log_scale.fill_(math.log(1000.0))
    param = model.log_scale
    model.clamp_parameters_()
    assert model.log_scale is param  # same Parameter (the optimizer holds it)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert model.log_scale.requires_grad


@pytest.mark.parametrize(
    "loss, temperature", [("sigmoid_infonce", 0.1), ("softmax_infonce", 0.07), ("queue_infonce", 0.07)]
)
def test_default_init_temperature_follows_the_loss(loss, temperature):
    cfg = train_config_from_dict({"loss": {"type": loss}})
    assert cfg.model.init_temperature == temperature  # the loaded config shows the resolved value
    model = build_model(cfg.model, 8, 8)
    assert model.logit_scale.item() == pytest.approx(1 / temperature)


def test_default_config_is_siglip_init_scale_10_bias_minus_10(tmp_path):
    cfg = train_config_from_dict({})
    assert (cfg.model.type, cfg.loss.type) == ("siglip", "sigmoid_infonce")
    model = build_model(cfg.model, 8, 8)
    assert model.logit_scale.item() == pytest.approx(10.0)
    assert model.bias.item() == -10.0
    # written out and read back: the resolved value is in the file, explicit values win over the default
    path = tmp_path / "c.yaml"
    save_train_config(cfg, path)
    assert "init_temperature: 0.1\n" in path.read_text()
    explicit = train_config_from_dict({"model": {"init_temperature": 0.05}})
    assert explicit.model.init_temperature == 0.05
    path.write_text("loss:\n  type: softmax_infonce\nmodel:\n  init_temperature: null\n")
    assert load_train_config(path).model.init_temperature == 0.07


def test_learn_bias_is_independent_of_learn_temperature():
    both = build_model(ModelConfig(**SMALL), 8, 8)
    assert both.log_scale.requires_grad and both.bias.requires_grad
    scale_only = build_model(ModelConfig(learn_temperature=True, learn_bias=False, **SMALL), 8, 8)
    assert scale_only.log_scale.requires_grad and not scale_only.bias.requires_grad
    bias_only = build_model(ModelConfig(learn_temperature=False, learn_bias=True, **SMALL), 8, 8)
    assert not bias_only.log_scale.requires_grad and bias_only.bias.requires_grad
    items, caps, ids = _random_pairs(1)
    sigmoid_loss(*bias_only(items, caps), ids, bias_only.logit_scale, bias_only.bias).backward()
    assert bias_only.bias.grad is not None and bias_only.bias.grad.abs().item() > 0
    assert bias_only.log_scale.grad is None


def test_learn_bias_is_typed_at_load():
    with pytest.raises(ConfigError, match=r"^configs/x.yaml: model.learn_bias: expected bool"):
        train_config_from_dict({"model": {"learn_bias": "yes"}}, "configs/x.yaml")
    with pytest.raises(ConfigError, match=r"model.init_temperature: must be > 0"):
        train_config_from_dict({"model": {"init_temperature": 0}}, "configs/x.yaml")
