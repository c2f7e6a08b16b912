"""The three objectives ovprof compares, built from small towers.

    python -c "from ovprof.config import RunConfig; from ovprof.models import build_model; print(build_model(RunConfig()))"

- caption (OpenVision 2): vision tower -> keep a random (1 - mask_ratio) share of
  visual tokens per sample -> prefix decoder -> caption_weight x next-token CE.
- clip: vision tower (mean-pooled) + text encoder (last token) -> symmetric InfoNCE.
- openvision (OpenVision 1): clip on two captions per image (alt-text and a
  short synthetic caption, doubled pairs) + a query decoder over all visual
  tokens and the alt-text states that predicts the long synthetic caption;
  loss = contrastive_weight x InfoNCE + caption_weight x CE.

mask_position=decoder drops encoder outputs before the decoder (the encoder
still sees every patch); mask_position=encoder drops patches before the encoder
(FLIP), so every consumer sees only the kept tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ovprof import presets
from ovprof.config import RunConfig
from ovprof.models.losses import caption_loss, clip_loss
from ovprof.models.text import PrefixDecoder, QueryDecoder, TextEncoder
from ovprof.models.vit import VisionTower, keep_random_tokens


class Objective(nn.Module):
    """forward(**batch) -> scalar fp32 loss."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = c = cfg.resolved()
        ck = c.checkpointing_text
        self.vision = VisionTower(presets.ENCODERS[c.encoder], c.res, checkpointing=c.checkpointing)
        self.keep = c.kept_tokens if c.mask_ratio > 0 else None
        if c.uses_text_encoder:
            t = presets.TEXT_ENCODERS[c.text_encoder]
            self.text = TextEncoder(t, c.vocab_size, c.text_len, checkpointing=ck)
            embed = t.width  # shared embedding width: the text tower's
            self.image_proj = nn.Linear(self.vision.width, embed, bias=False)
            self.text_proj = nn.Linear(t.width, embed, bias=False)
            # shape (1,), not a scalar: ZeRO-3 zero.Init cannot broadcast 0-dim parameters
            self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))
        if c.objective == "caption":
            self.decoder = PrefixDecoder(presets.DECODERS[c.decoder], self.vision.width, c.vocab_size,
                                         c.caption_len, checkpointing=ck)
        elif c.objective == "openvision":
            self.decoder = QueryDecoder(presets.DECODERS[c.decoder], self.vision.width, self.text.width,
                                        c.vocab_size, c.caption_len, checkpointing=ck)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        enc_keep = self.keep if self.cfg.mask_position == "encoder" else None
        return self.vision(images, keep=enc_keep)  # (B, N or K, Dv)

    def decoder_tokens(self, visual: torch.Tensor) -> torch.Tensor:
        if self.keep is not None and self.cfg.mask_position == "decoder":
            return keep_random_tokens(visual, self.keep)  # (B, K, Dv)
        return visual

    def contrastive(self, visual: torch.Tensor, text_pooled: torch.Tensor) -> torch.Tensor:
        image = self.image_proj(visual.mean(dim=1))  # (B, E)
        text = self.text_proj(text_pooled)  # (B*c, E)
        return clip_loss(image, text, self.logit_scale)

    def forward(self, images, caption=None, text=None, alt_text=None, short_caption=None) -> torch.Tensor:
        c = self.cfg
        visual = self.encode_image(images)
        if c.objective == "caption":
            h = self.decoder.hidden(self.decoder_tokens(visual), caption)  # (B, L-1, D)
            return c.caption_weight * caption_loss(h, self.decoder.head.weight, caption[:, 1:], c.loss_impl)
        if c.objective == "clip":
            _, pooled = self.text(text)
            return c.contrastive_weight * self.contrastive(visual, pooled)
        # openvision: the text encoder sees 2B sequences, alt-texts first
        states, pooled = self.text(torch.cat([alt_text, short_caption], dim=0))
        B = images.shape[0]
        h = self.decoder.hidden(self.decoder_tokens(visual), states[:B])  # (B, L, D)
        cap = caption_loss(h, self.decoder.head.weight, caption, c.loss_impl)
        return c.contrastive_weight * self.contrastive(visual, pooled) + c.caption_weight * cap


def build_model(cfg: RunConfig) -> Objective:
    return Objective(cfg)


def tower_params(model: Objective) -> dict[str, int]:
    """Parameter count per tower of a built model (numel; works on the meta device)."""
    counts = {"encoder": 0, "text_encoder": 0, "decoder": 0, "other": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        key = {"vision": "encoder", "text": "text_encoder", "decoder": "decoder"}.get(top, "other")
        counts[key] += p.numel()
    counts["total"] = sum(counts.values())
    return counts
