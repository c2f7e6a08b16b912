"""caption (OpenVision 2): vision tower -> kept visual tokens -> prefix decoder -> caption cross-entropy.

    ovprof run --objective caption --encoder vit-debug --mask-ratio 0.65 --steps 5

Keep a random (1 - mask_ratio) share of visual tokens per sample, prepend them
(projected) to the caption embeddings and run one causal decoder over
[visual; text] (ovprof/models/text.py PrefixDecoder); loss = caption_weight x
next-token cross-entropy. No text encoder, no contrastive term: this is the
side whose savings the report measures against OpenVision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovprof import presets
from ovprof.measure.activations import BYTES, ActivationTerms
from ovprof.measure.flops import StepFlops, _linear, trunk_forward_flops, trunk_params
from ovprof.objectives import _common
from ovprof.objectives._common import VisionConfig
from ovprof.presets import TowerSpec

if TYPE_CHECKING:
    from ovprof.config import RunConfig

NAME = "caption"


@dataclass(frozen=True)
class CaptionModelConfig:
    """What the caption model is built from; nothing else of the run reaches it."""

    vision: VisionConfig
    decoder: TowerSpec  # the prefix decoder's tower
    vocab_size: int  # embedding rows and head columns
    caption_len: int  # caption tokens per image; the decoder predicts caption_len - 1 of them
    caption_weight: float  # loss = caption_weight x cross-entropy
    loss_impl: str  # eager | compiled | chunked | triton (ovprof/models/losses.py caption_loss)
    checkpointing_text: bool  # activation checkpointing on the decoder's blocks


def model_config(cfg: "RunConfig") -> CaptionModelConfig:
    c = cfg.resolved()
    return CaptionModelConfig(vision=_common.vision_config(c), decoder=presets.DECODERS[c.decoder],
                              vocab_size=c.vocab_size, caption_len=c.caption_len, caption_weight=c.caption_weight,
                              loss_impl=c.loss_impl, checkpointing_text=c.checkpointing_text)


def _loss(model, images, caption):
    from ovprof.models.losses import caption_loss

    m: CaptionModelConfig = model.config
    visual = model.decoder_tokens(model.encode_image(images))  # (B, K, Dv)
    h = model.decoder.hidden(visual, caption)  # (B, L-1, D)
    return m.caption_weight * caption_loss(h, model.decoder.head.weight, caption[:, 1:], m.loss_impl)


def build(m: CaptionModelConfig):
    from ovprof.models.text import PrefixDecoder

    model = _common.new_model(m.vision, _loss, m)
    model.decoder = PrefixDecoder(m.decoder, model.vision.width, m.vocab_size, m.caption_len,
                                  checkpointing=m.checkpointing_text)
    return model


def batch_tokens(c: "RunConfig") -> tuple[tuple[str, int], ...]:
    return (("caption", c.caption_len),)  # synthetic caption, the decoder's input and target


def make_batch(cfg: "RunConfig", device, rank: int = 0) -> dict:
    return _common.synthetic_batch(cfg, device, rank, batch_tokens(cfg.resolved()))


def params(cfg: "RunConfig") -> dict[str, int]:
    c = cfg.resolved()
    Dv = presets.ENCODERS[c.encoder].tower.width
    d = presets.DECODERS[c.decoder]
    out = _common.empty_params(c)
    out["decoder"] = (Dv * d.width + c.vocab_size * d.width + c.caption_len * d.width  # visual proj, embeddings
                      + trunk_params(d) + d.width * c.vocab_size)  # blocks, head
    return _common.with_total(out)


def step_flops(cfg: "RunConfig") -> StepFlops:
    c = cfg.resolved()
    n = _common.tokens(c)
    Dv = presets.ENCODERS[c.encoder].tower.width
    d = presets.DECODERS[c.decoder]
    fwd, skipped = {}, 0
    fwd["encoder"], skipped = _common.vision_flops(c, n)
    L = c.caption_len - 1  # inputs / predictions
    seq = n.K + L  # the decoder sees the kept tokens, masked either side (N when mask_ratio == 0)
    fwd["decoder"] = (_linear(n.B * n.K, Dv, d.width) + trunk_forward_flops(d, seq, n.B)
                      + _linear(n.B * L, d.width, c.vocab_size))
    return _common.step(fwd, skipped)


def activation_terms(cfg: "RunConfig", attention: str = "flash") -> ActivationTerms:
    c = cfg.resolved()
    b = BYTES[c.precision]
    n = _common.tokens(c)
    d = presets.DECODERS[c.decoder]
    L = c.caption_len - 1
    kv, tv = _common.vision_bytes(c, n, b)
    kd, td = _common.decoder_bytes(c, n, d, n.K + L, b, math_attention=False)  # math: query decoder only
    return ActivationTerms(kept_bytes=kv + kd, transient_bytes=max(tv, td), logits_tokens=n.B * L, head_width=d.width,
                           input_bytes=_common.input_bytes(c, b, batch_tokens(c)),
                           max_param_numel=_common.max_param_numel(c, text=False, decoder=True))


OBJECTIVE = _common.Objective(
    name=NAME, label="caption-only (OpenVision 2)",
    summary="vision tower, random visual-token masking, prefix decoder; caption_weight x caption CE",
    family="captioning", savings_side="caption", tower_presets=(("decoder", "decoder"),),
    paper_mask_ratio=0.65,  # OpenVision 2 keeps ~35% of the visual tokens
    savings_every_variant=True,  # masked and fused-loss caption runs are the savings' candidates
    model_config=model_config, build=build, make_batch=make_batch, params=params, step_flops=step_flops,
    activation_terms=activation_terms, validate=_common.no_checks,
)
