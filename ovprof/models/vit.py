"""Vision tower: patch embedding, learned position embedding, pre-norm transformer.

    python -c "from ovprof.models.vit import VisionTower; from ovprof.presets import ENCODERS; print(VisionTower(ENCODERS['vit-debug'], 32))"

No class token by default (big_vision / OpenVision style): the tower returns
all visual tokens; objectives pool by mean where they need one vector. The
pixel objectives (MAE, Pixio) ask for `cls_tokens` learned class tokens, each
with its own position embedding, prepended after masking (Pixio's
pretraining/models_pixio.py). Encoder-side masking (FLIP patch dropout, MAE's
kept patches) happens after the position embedding, before the blocks, so the
blocks run on the kept patches only.
"""

from __future__ import annotations

import torch
from torch import nn

from ovprof.models.layers import MAPHead, Transformer
from ovprof.presets import EncoderSpec


def keep_random_tokens(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep `keep` distinct tokens per sample, chosen independently per sample, in their original order.

    x: (B, N, D) -> (B, keep, D).
    """
    B, N, D = x.shape
    if keep >= N:
        return x
    noise = torch.rand(B, N, device=x.device)
    idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, keep)
    return x.gather(1, idx.unsqueeze(-1).expand(B, keep, D))


class VisionTower(nn.Module):
    def __init__(self, spec: EncoderSpec, res: int, *, checkpointing: bool = False, pool: str | None = None,
                 cls_tokens: int = 0):
        super().__init__()
        t = spec.tower
        self.spec, self.res = spec, res
        self.num_patches = (res // spec.patch) ** 2
        self.patch_embed = nn.Conv2d(3, t.width, kernel_size=spec.patch, stride=spec.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, t.width) * 0.02)
        # Pixio keeps one position row per class token (pos_embed has num_patches + n_cls_tokens rows)
        self.cls_token = nn.Parameter(torch.randn(1, cls_tokens, t.width) * 0.02) if cls_tokens else None
        self.cls_pos_embed = nn.Parameter(torch.randn(1, cls_tokens, t.width) * 0.02) if cls_tokens else None
        self.trunk = Transformer(t.width, t.depth, t.mlp, t.heads, checkpointing)
        self.head = MAPHead(t.width, t.mlp, t.heads) if pool == "map" else None

    @property
    def width(self) -> int:
        return self.spec.tower.width

    def forward(self, images: torch.Tensor, keep: int | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, R, R) -> tokens (B, C + N, D); (B, C + K, D) with encoder-side masking, C class tokens.

        keep: K random patches per sample; index (B, K): the patches to keep, chosen by the caller (MAE's blocks).
        """
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed
        if index is not None:
            x = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, D)
        elif keep is not None:
            x = keep_random_tokens(x, keep)
        if self.cls_token is not None:
            cls = (self.cls_token + self.cls_pos_embed).expand(x.shape[0], -1, -1)  # (B, C, D)
            x = torch.cat([cls, x], dim=1)
        return self.trunk(x)
