"""The T2T-ViT-t network (tokens-to-token with transformer token blocks) sized for 64×64 inputs by default."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from fasttrain.errors import UserError
from fasttrain.models.layers import norm_and_bias_names
from fasttrain.models.registry import InvalidKnobValueError


def soft_split_padding(kernel: int, stride: int) -> int:
    """Padding of a soft split: 2 for the published 7/4 split, 1 for 3/2 (as in T2T-ViT)."""
    return (kernel - stride + 1) // 2


def soft_split_side(side: int, kernel: int, stride: int) -> int:
    return (side + 2 * soft_split_padding(kernel, stride) - kernel) // stride + 1


def sinusoid_position_table(positions: int, dim: int) -> torch.Tensor:
    """(1, positions, dim) fixed 1-D sine/cosine table, class token at position 0 (T2T-ViT's choice)."""
    position = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    frequency = torch.pow(10000.0, -2.0 * (torch.arange(dim) // 2).to(torch.float64) / dim)
    angles = position * frequency
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.unsqueeze(0).to(torch.float32)


class TokenAttention(nn.Module):
    """Single-head attention that maps `dim`-wide tokens to `out_dim` and adds the values as the shortcut.

    The input and output widths differ, so the residual path is v (T2T-ViT's token transformer).
    The softmax scale is 1/sqrt(out_dim), the standard one (T2T-ViT's code scales by the input width).
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, out_dim * 3, bias=False)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # one head as a head dimension: CUDA's fused SDPA kernels take (B, heads, N, D) only; a 3-D call
        # falls back to the math kernel and builds the whole N×N matrix
        attended = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return v + self.proj(attended)


class TokenTransformer(nn.Module):
    """The "-t" token block: pre-norm token attention, then a pre-norm MLP with ratio 1."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(in_features=out_dim, hidden_features=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Module):
    """Three overlapping soft splits (nn.Unfold) with token blocks between them, then a projection."""

    def __init__(
        self, img_size: int, kernels: Sequence[int], strides: Sequence[int], token_dim: int, embed_dim: int
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.splits = nn.ModuleList(
            nn.Unfold(kernel_size=k, stride=s, padding=soft_split_padding(k, s)) for k, s in zip(kernels, strides)
        )
        sides = [img_size]
        for k, s in zip(kernels, strides):
            sides.append(soft_split_side(sides[-1], k, s))
        if sides[-1] < 1:
            raise InvalidKnobValueError(
                f"soft splits kernels={list(kernels)} strides={list(strides)} leave no tokens of a "
                f"{img_size}×{img_size} image; use smaller strides or a larger img_size"
            )
        self.sides = sides[1:]
        self.num_tokens = sides[-1] ** 2
        self.token_blocks = nn.ModuleList(
            [
                TokenTransformer(3 * kernels[0] ** 2, token_dim),
                TokenTransformer(token_dim * kernels[1] ** 2, token_dim),
            ]
        )
        self.project = nn.Linear(token_dim * kernels[2] ** 2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise UserError(
                f"T2T-ViT built for {self.img_size}×{self.img_size} images got "
                f"{x.shape[-2]}×{x.shape[-1]}; set model knob img_size to the data's image size"
            )
        x = self.splits[0](x).transpose(1, 2)
        for split, block, side in zip(self.splits[1:], self.token_blocks, self.sides):
            x = block(x)
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
            x = split(x).transpose(1, 2)
        return self.project(x)


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both branches."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, attn_dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2TViT(nn.Module):
    """Tokens-to-token module → class token + fixed sinusoid positions → transformer → class-token head.

    Default 64×64 soft splits: three overlapping 3×3 stride-2 splits (64 → 32 → 16 → 8), so the
    transformer sees 8×8 = 64 tokens. The published splits (7/4, 3/2, 3/2) are for 224×224
    (196 tokens) and would leave only 4×4 = 16 tokens of a 64×64 image.
    Padding of each split: (kernel − stride + 1) // 2. Stochastic depth grows linearly from 0 to
    `drop_path` over the blocks; the token blocks have none (as in T2T-ViT).
    The knobs' types, ranges and defaults are the builders' (fasttrain.models.builders).
    """

    def __init__(
        self,
        num_classes: int = 200,
        *,
        img_size: int,
        t2t_kernels: Sequence[int],
        t2t_strides: Sequence[int],
        token_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise InvalidKnobValueError(
                f"knob embed_dim={embed_dim} must be a multiple of num_heads={num_heads}"
            )

        self.tokens_to_token = TokensToToken(img_size, t2t_kernels, t2t_strides, token_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, so a non-persistent buffer: rebuilt from img_size, not trained, not checkpointed.
        self.register_buffer(
            "pos_embed", sinusoid_position_table(self.tokens_to_token.num_tokens + 1, embed_dim), persistent=False
        )
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(
                Block(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout, rate)
                for rate in (drop_path * index / max(depth - 1, 1) for index in range(depth))
            )
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_vit_layer)

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: LayerNorm scales and shifts, biases and the class token.

        (The position table is a fixed buffer, not a parameter.)
        """
        return norm_and_bias_names(self) | {"cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised class-token features (N, embed_dim) the head sees."""
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_vit_layer(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
