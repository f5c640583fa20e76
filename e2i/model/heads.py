"""Projection heads: cached encoder embeddings -> a shared, L2-normalised retrieval space.

One head per modality (same type, different input dims) maps item embeddings (audio/image) and
caption embeddings into ``output_dim``. The temperature and the SigLIP logit bias are parameters of
:class:`ContrastiveModel`, not of the heads, so every head type works with every loss.

    model = build_model(ModelConfig(type="attention"), item_dim=768, caption_dim=1024)
    item_z, cap_z = model(item_x, cap_x)            # (B, output_dim) each, unit norm
    loss = loss_fn(item_z, cap_z, ids, model.logit_scale, model.bias)

Pure torch: no ray import here.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from e2i.config import SOFTMAX_INIT_TEMPERATURE, ModelConfig
from e2i.errors import ConfigError

MAX_LOGIT_SCALE = 100.0  # CLIP caps the inverse temperature at 100 (parameter clipped after each step)


class SigLIPHead(nn.Module):
    """LayerNorm + Dropout + Linear: the lightest head (a linear map on normalised features).

    Uses output_dim and dropout; ignores hidden_dim/num_heads/num_layers.
    """

    def __init__(self, in_dim: int, *, output_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, output_dim))

    @classmethod
    def from_config(cls, in_dim: int, cfg: ModelConfig) -> SigLIPHead:
        return cls(in_dim, output_dim=cfg.output_dim, dropout=cfg.dropout)

    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, in_dim) -> (B, output_dim)


class CLIPHead(nn.Module):
    """Linear-GELU-Dropout-Linear: CLIP-style projection MLP with one hidden layer.

    The learnable temperature lives on :class:`ContrastiveModel` (``log_scale``).
    Uses output_dim, hidden_dim, dropout.
    """

    def __init__(self, in_dim: int, *, output_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, output_dim)
        )

    @classmethod
    def from_config(cls, in_dim: int, cfg: ModelConfig) -> CLIPHead:
        return cls(in_dim, output_dim=cfg.output_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)

    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, in_dim) -> (B, output_dim)


class MLPHead(nn.Module):
    """Plain MLP baseline: ``num_layers`` x (Linear-ReLU-Dropout) then Linear to output_dim.

    ``num_layers=0`` is a single linear map. Uses output_dim, hidden_dim, dropout, num_layers.
    """

    def __init__(
        self, in_dim: int, *, output_dim: int, hidden_dim: int, num_layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, in_dim: int, cfg: ModelConfig) -> MLPHead:
        return cls(
            in_dim,
            output_dim=cfg.output_dim,
            hidden_dim=cfg.hidden_dim,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
        )

    def output_layer(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, in_dim) -> (B, output_dim)


class AttentionHead(nn.Module):
    """Self-attention over tokens with a learned CLS token whose output is the embedding.

    Two input layouts, fixed at construction:

    * flat (default): x is (B, in_dim), LayerNorm-ed, zero-padded to a multiple of ``num_tokens``
      and split into ``num_tokens`` contiguous chunks of width ``d = ceil(in_dim / num_tokens)``.
      Chunk ``t`` holds *different* features than chunk ``t'`` (dims 0..d-1 vs d..2d-1), so each
      position gets **its own** linear map to ``hidden_dim``: ``h_t = x_t W_t + b_t`` with ``W``
      (T, d, H) and ``b`` (T, H) (one batched einsum; together as many weights as one in_dim x H
      Linear). A shared map + mean pool would treat the chunks as interchangeable and lose position.
    * sequence (``sequence_input=True``): x is (B, T, in_dim) with T <= ``num_tokens`` (a store that
      holds token sequences, e.g. PaSST frames; ``num_tokens`` is then the maximum length). Frames
      are alike, so they share one LayerNorm + Linear to ``hidden_dim``.

    Learned positional embeddings (T, H) are added to the tokens, a learned CLS vector (H,) is put
    in front, ``num_layers`` pre-norm TransformerEncoder layers (``num_heads`` heads, GELU, FFN 4 x
    hidden_dim) mix the T + 1 tokens, a final LayerNorm follows (pre-norm stacks need one), and the
    CLS output goes through a Linear to ``output_dim`` (as ViT/BERT pooling).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        output_dim: int,
        hidden_dim: int,
        num_heads: int = 4,
        num_layers: int = 2,
        num_tokens: int = 8,
        dropout: float = 0.0,
        sequence_input: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ConfigError(
                f"attention head: num_heads ({num_heads}) must divide hidden_dim ({hidden_dim})"
            )
        self.in_dim, self.num_tokens, self.sequence_input = in_dim, num_tokens, sequence_input
        self.token_dim = in_dim if sequence_input else math.ceil(in_dim / num_tokens)
        self.pad = 0 if sequence_input else self.token_dim * num_tokens - in_dim
        self.in_norm = nn.LayerNorm(in_dim)  # flat: over the whole embedding; sequence: per frame
        if sequence_input:
            self.token_proj = nn.Linear(self.token_dim, hidden_dim)  # shared by all frames
        else:
            # per-position maps, initialised as nn.Linear(token_dim, hidden_dim) would be
            bound = 1.0 / math.sqrt(self.token_dim)
            self.token_weight = nn.Parameter(torch.empty(num_tokens, self.token_dim, hidden_dim))  # (T, d, H)
            self.token_bias = nn.Parameter(torch.empty(num_tokens, hidden_dim))  # (T, H)
            nn.init.uniform_(self.token_weight, -bound, bound)
            nn.init.uniform_(self.token_bias, -bound, bound)
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, hidden_dim))  # (1, T, H)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # (1, 1, H)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            num_heads,
            dim_feedforward=4 * hidden_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor only applies to post-norm layers; off to avoid a warning.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, output_dim)

    @classmethod
    def from_config(cls, in_dim: int, cfg: ModelConfig, *, sequence_input: bool = False) -> AttentionHead:
        return cls(
            in_dim,
            output_dim=cfg.output_dim,
            hidden_dim=cfg.hidden_dim,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            num_tokens=cfg.num_tokens,
            dropout=cfg.dropout,
            sequence_input=sequence_input,
        )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> (B, T, token_dim) tokens (split flat embeddings, pass sequences through)."""
        if self.sequence_input:
            if x.dim() != 3 or x.shape[-1] != self.in_dim or x.shape[1] > self.num_tokens:
                raise ValueError(
                    f"attention head expects (B, T<={self.num_tokens}, {self.in_dim}) tokens, got {tuple(x.shape)}"
                )
            return x
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"attention head expects (B, {self.in_dim}) embeddings, got {tuple(x.shape)}")
        x = F.pad(x, (0, self.pad))  # (B, T * token_dim), zero-padded at the end
        return x.reshape(x.shape[0], self.num_tokens, self.token_dim)  # (B, T, token_dim)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> (B, T, H): normalised, split, projected (per position when flat), + positions."""
        if self.sequence_input:
            h = self.token_proj(self.in_norm(self.tokens(x)))  # (B, T, H), shared map
        else:
            t = self.tokens(self.in_norm(x))  # (B, T, d)
            h = torch.einsum("btd,tdh->bth", t, self.token_weight) + self.token_bias  # (B, T, H)
        return h + self.pos[:, : h.shape[1]]

    def output_layer(self) -> nn.Linear:
        return self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(x)  # (B, T, H)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + T, H), CLS first
        h = self.norm(self.encoder(h))  # (B, 1 + T, H)
        return self.proj(h[:, 0])  # CLS output (B, H) -> (B, output_dim)


class SkipHead(nn.Module):
    """A head plus a linear "skip" branch on standardised inputs (``model.warm_start``):

        z(x) = head(x) + ((x - mean) / std) @ W + b           x (B, in_dim) -> z (B, output_dim)

    with buffers ``mean``, ``std`` (in_dim,) and the Linear ``skip`` (W (in_dim, output_dim) stored as
    its (output_dim, in_dim) weight, b (output_dim,)). Built with the branch at zero, so a fresh model
    is the bare head; :meth:`set_linear_` installs a closed-form baseline's map into the branch and
    zeroes the head's last Linear, after which ``z(x)`` *is* the baseline's projection (padded with
    zero columns to output_dim) and the model ranks exactly as the baseline does. Trained from there
    (``warm_start_init``) both move: the branch stays a linear map (well conditioned on standardised
    features), the head learns the non-linear residual; trained cold, the branch is frozen at zero and
    only the baseline's state (kept if no epoch beats it on val) uses it. Flat inputs only.
    """

    def __init__(self, head: nn.Module, in_dim: int, output_dim: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", torch.zeros(in_dim))  # (in_dim,) train statistics, saved with the weights
        self.register_buffer("std", torch.ones(in_dim))  # (in_dim,)
        self.skip = nn.Linear(in_dim, output_dim)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    @torch.no_grad()
    def set_linear_(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install ``z = ((x - mean) / std) @ weight + bias``; weight (in_dim, k <= output_dim), bias (k,);
        columns k..output_dim-1 are zero. The head's last Linear is zeroed, so head(x) = 0 until trained."""
        in_dim, k = weight.shape
        if k > self.skip.out_features or in_dim != self.skip.in_features:
            raise ValueError(f"skip map of shape {tuple(weight.shape)} does not fit ({self.skip.in_features}, "
                             f"<= {self.skip.out_features})")
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.skip.weight.zero_()
        self.skip.bias.zero_()
        self.skip.weight[:k].copy_(weight.T)  # (k, in_dim)
        self.skip.bias[:k].copy_(bias)
        last = self.head.output_layer()
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()

    def branch_is_zero(self) -> bool:
        """Whether the skip branch is frozen at zero (trained cold: it adds exactly 0, so :meth:`forward`
        leaves it out; ~20 % of a siglip head's step). Checked again only when its weights change."""
        w, b = self.skip.weight, self.skip.bias
        if w.requires_grad or b.requires_grad:
            return False
        try:
            key = (w._version, b._version, w.data_ptr(), b.data_ptr())
        except RuntimeError:  # inference tensors keep no version counter: check every time
            key = None
        if key is None or key != getattr(self, "_zero_key", None):
            self._zero_key, self._zero = key, not (bool(torch.any(w)) or bool(torch.any(b)))
        return self._zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_is_zero():
            return self.head(x)  # (B, output_dim)
        return self.head(x) + self.skip((x - self.mean) / self.std)  # (B, output_dim)


HEADS: dict[str, type[nn.Module]] = {
    "siglip": SigLIPHead,
    "clip": CLIPHead,
    "attention": AttentionHead,
    "mlp": MLPHead,
}


def build_head(name: str, in_dim: int | tuple[int, int], cfg: ModelConfig) -> nn.Module:
    """One head of type ``name`` for inputs of width ``in_dim``.

    ``in_dim`` may be ``(T, D)`` for token sequences (attention head only): the head then takes
    (B, T' <= T, D) inputs.
    """
    if name not in HEADS:
        raise ConfigError(f"model.type: unknown head {name!r} (valid: {', '.join(HEADS)})")
    if isinstance(in_dim, tuple):
        if HEADS[name] is not AttentionHead:
            raise ConfigError(
                f"model.type: head {name!r} takes flat embeddings; token sequences need 'attention'"
            )
        max_len, width = in_dim
        return AttentionHead.from_config(
            width, dataclasses.replace(cfg, num_tokens=max_len), sequence_input=True
        )
    return HEADS[name].from_config(in_dim, cfg)


class ContrastiveModel(nn.Module):
    """Two heads into one shared space plus the contrastive scalars.

    * ``log_scale``: learnable log of the inverse temperature, initialised to
      ``log(1 / init_temperature)``; frozen when ``learn_temperature`` is False. The scale used is
      ``logit_scale = exp(log_scale)``, **not** clamped in the forward pass (a clamp there has zero
      gradient above the cap, so a too-large scale could never come back down). Instead the training
      loop calls :meth:`clamp_parameters_` after every optimizer step, which clips the *parameter*
      at ``log(100)`` in place, as open_clip does.
    * ``bias``: SigLIP's logit bias, initialised to ``init_bias``; learned when ``learn_bias`` (an
      independent switch from ``learn_temperature``). Only the sigmoid loss uses it
      (``loss_fn.uses_bias``). With a softmax loss it gets no gradient: freeze it
      (``model.bias.requires_grad_(False)``) before wrapping in DDP, which rejects unused parameters.

    Inits: softmax losses (CLIP) ``init_temperature=0.07`` (scale 14.3); the sigmoid loss (SigLIP
    paper) scale 10 and bias -10, i.e. ``init_temperature=0.1, init_bias=-10``. A ModelConfig with
    ``init_temperature=None`` gets this per-loss default when its TrainConfig is built; a bare
    ModelConfig left at None here falls back to the softmax value.
    """

    def __init__(self, item_head: nn.Module, caption_head: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.item_head, self.caption_head = item_head, caption_head
        self.output_dim = cfg.output_dim
        temperature = cfg.init_temperature if cfg.init_temperature is not None else SOFTMAX_INIT_TEMPERATURE
        init = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(init, requires_grad=cfg.learn_temperature)  # scalar
        self.bias = nn.Parameter(torch.tensor(float(cfg.init_bias)), requires_grad=cfg.learn_bias)

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(log_scale): a differentiable scalar tensor (the cap is applied to the parameter by
        :meth:`clamp_parameters_`, never here)."""
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clip ``log_scale`` at ``log(MAX_LOGIT_SCALE)`` in place; call after each optimizer step."""
        self.log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def encode_items(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_head(x), dim=-1)  # (B, output_dim), unit norm

    def encode_captions(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.caption_head(x), dim=-1)  # (B, output_dim), unit norm

    def forward(self, item_x: torch.Tensor, cap_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_items(item_x), self.encode_captions(cap_x)


def build_model(
    cfg: ModelConfig, item_dim: int | tuple[int, int], caption_dim: int | tuple[int, int]
) -> ContrastiveModel:
    """Item and caption heads of type ``cfg.type`` into ``cfg.output_dim``.

    Dims are ints for flat embeddings, or ``(max_tokens, token_dim)`` for token sequences
    (attention head only). With ``cfg.warm_start`` (flat inputs) each head is wrapped in a
    :class:`SkipHead` whose branch ``e2i.train.warm_start`` fills from a closed-form baseline.
    """
    heads = [build_head(cfg.type, item_dim, cfg), build_head(cfg.type, caption_dim, cfg)]
    if cfg.warm_start != "none" and not any(isinstance(d, tuple) for d in (item_dim, caption_dim)):
        # token sequences have no flat features for a linear map: such a model has no skip branch
        heads = [SkipHead(h, d, cfg.output_dim) for h, d in zip(heads, (item_dim, caption_dim))]
    return ContrastiveModel(*heads, cfg)
