"""Transformer building blocks shared by every tower (vision, text encoder, decoder).

    python -c "from ovprof.models.layers import Transformer; print(Transformer(64, 2, 256, 2))"

Pre-norm blocks, GELU MLP, attention through F.scaled_dot_product_attention so
that CUDA picks flash / memory-efficient kernels. Shapes: B batch, S sequence,
D width, H heads, Dh = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, (width, heads)
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, S, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, S, D))  # (B, S, D)


class Block(nn.Module):
    def __init__(self, width: int, mlp: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal=causal, mask=mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """A stack of blocks with a final LayerNorm; optional activation checkpointing per block."""

    def __init__(self, width: int, depth: int, mlp: int, heads: int, checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, mlp, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # Non-reentrant: works with ZeRO-3's parameter hooks and keyword arguments.
                x = checkpoint(blk, x, causal, mask, use_reentrant=False)
            else:
                x = blk(x, causal, mask)
        return self.ln_f(x)


class MAPHead(nn.Module):
    """Multihead attention pooling (SigLIP / big_vision): one learned probe attends over the tokens.

    ovprof pools by mean for every objective; this head exists so that the
    parameter check can compare presets whose published count includes it.
    """

    def __init__(self, width: int, mlp: int, heads: int):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probe.expand(x.shape[0], -1, -1)
        y = self.attn(p, x, x, need_weights=False)[0]
        y = y + self.fc2(F.gelu(self.fc1(self.ln(y))))
        return y[:, 0]
