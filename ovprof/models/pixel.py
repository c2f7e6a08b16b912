"""Pixel reconstruction (MAE, Pixio): block masking of the patch grid and the decoder that predicts the pixels.

    python -c "from ovprof.models.pixel import block_mask; print(block_mask(2, 4, 2, 1, 'cpu'))"

After MAE (He et al. 2022) and Pixio (pretraining/models_pixio.py): the encoder
sees only the kept patches (and its class tokens); the decoder embeds the
encoder's output, puts a shared learned mask token at every dropped position,
adds its own position embedding over [class tokens; all patches], runs its
blocks and predicts patch^2 x 3 pixels per patch with a linear head. Masking
draws whole g x g blocks of patches (g = 1: per patch, MAE; g = 4: Pixio): of
the (grid / g)^2 blocks, int(blocks x (1 - mask ratio)) are kept per sample.
Shapes: B batch, N patches, K kept patches, C class tokens, D widths.
"""

from __future__ import annotations

import torch
from torch import nn

from ovprof.models.layers import Transformer
from ovprof.presets import TowerSpec


def block_mask(batch: int, grid: int, block: int, keep_blocks: int,
               device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random block masking of a grid x grid patch grid, drawn independently per sample.

    Returns (index (B, K) of the kept patches in ascending order, K = keep_blocks x block^2;
    masked (B, N) bool, True where the patch was dropped). `block` must divide `grid`.
    """
    per_side = grid // block
    blocks = per_side * per_side
    order = torch.rand(batch, blocks, device=device).argsort(dim=1)[:, :keep_blocks]  # (B, kept blocks)
    # patch ids of each block, blocks in row-major order: (blocks, block^2)
    ids = torch.arange(grid * grid, device=device).view(per_side, block, per_side, block)
    members = ids.permute(0, 2, 1, 3).reshape(blocks, block * block)
    index = members[order].reshape(batch, -1).sort(dim=1).values  # (B, K)
    masked = torch.ones(batch, grid * grid, dtype=torch.bool, device=device)
    masked.scatter_(1, index, False)
    return index, masked


class PixelDecoder(nn.Module):
    """forward(latent (B, C + K, Dv), index (B, K)) -> predicted pixels (B, N, patch^2 x 3)."""

    def __init__(self, spec: TowerSpec, visual_width: int, num_patches: int, cls_tokens: int, patch: int, *,
                 checkpointing: bool = False):
        super().__init__()
        self.spec, self.num_patches, self.cls_tokens = spec, num_patches, cls_tokens
        D = spec.width
        self.embed = nn.Linear(visual_width, D)
        self.mask_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, cls_tokens + num_patches, D) * 0.02)
        self.trunk = Transformer(D, spec.depth, spec.mlp, spec.heads, checkpointing)
        self.head = nn.Linear(D, patch * patch * 3)

    def forward(self, latent: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        C, N = self.cls_tokens, self.num_patches
        x = self.embed(latent)  # (B, C + K, D)
        B, _, D = x.shape
        # every position a mask token, then the kept patches written back in place
        full = self.mask_token.expand(B, N, D).scatter(1, index.unsqueeze(-1).expand(-1, -1, D), x[:, C:])
        x = torch.cat([x[:, :C], full], dim=1) + self.pos_embed  # (B, C + N, D)
        x = self.trunk(x)
        return self.head(x[:, C:])  # (B, N, patch^2 x 3): the class tokens predict nothing
