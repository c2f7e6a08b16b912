"""The module every objective builds: a vision tower, the towers the objective adds, and its loss as forward.

    python -c "from ovprof.config import RunConfig; from ovprof.objectives import build_model; print(build_model(RunConfig()))"

An objective (ovprof/objectives/<name>.py) creates an `ImageTextModel`, attaches
its towers as top-level attributes (`text`, `decoder`: a caption or a pixel
decoder; `add_contrastive_head` for `image_proj`, `text_proj`, `logit_scale`)
and passes its loss function, which becomes forward. Top-level names matter:
`ovprof.objectives.tower_params` counts parameters per tower by them. The
objective's loss function lives beside its other formulas, so this module
needs no objective and no run config.

mask_position=decoder drops encoder outputs before the decoder (the encoder
still sees every patch); mask_position=encoder drops patches before the encoder
(FLIP), so every consumer sees only the kept tokens.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ovprof.models.losses import clip_loss
from ovprof.models.vit import VisionTower, keep_random_tokens
from ovprof.presets import EncoderSpec


class ImageTextModel(nn.Module):
    """forward(**batch) -> loss_fn(self, **batch), a scalar fp32 loss."""

    def __init__(self, encoder: EncoderSpec, res: int, *, keep: int | None, mask_position: str,
                 checkpointing: bool, loss_fn: Callable[..., torch.Tensor], config: Any = None, cls_tokens: int = 0):
        super().__init__()
        self.vision = VisionTower(encoder, res, checkpointing=checkpointing, cls_tokens=cls_tokens)
        self.keep = keep  # visual tokens kept per sample; None = no masking
        self.mask_position = mask_position
        self.loss_fn = loss_fn
        self.config = config  # the objective's own frozen model config, read by loss_fn

    def add_contrastive_head(self, text_width: int) -> None:
        embed = text_width  # shared embedding width: the text tower's
        self.image_proj = nn.Linear(self.vision.width, embed, bias=False)
        self.text_proj = nn.Linear(text_width, embed, bias=False)
        # shape (1,), not a scalar: ZeRO-3 zero.Init cannot broadcast 0-dim parameters
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        enc_keep = self.keep if self.mask_position == "encoder" else None
        return self.vision(images, keep=enc_keep)  # (B, N or K, Dv)

    def decoder_tokens(self, visual: torch.Tensor) -> torch.Tensor:
        if self.keep is not None and self.mask_position == "decoder":
            return keep_random_tokens(visual, self.keep)  # (B, K, Dv)
        return visual

    def contrastive(self, visual: torch.Tensor, text_pooled: torch.Tensor) -> torch.Tensor:
        image = self.image_proj(visual.mean(dim=1))  # (B, E)
        text = self.text_proj(text_pooled)  # (B*c, E)
        return clip_loss(image, text, self.logit_scale)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self, **batch)
