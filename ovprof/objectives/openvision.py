"""openvision (OpenVision 1): CLIP on two captions per image + a query decoder predicting the long caption.

    ovprof run --objective openvision --encoder vit-debug --steps 5

The text encoder reads 2B sequences, the alt-texts first, then short synthetic
captions (doubled pairs for the contrastive term). A query decoder (after CLIPS;
ovprof/models/text.py QueryDecoder) over the visual tokens (the kept ones when
masked) and the alt-text states predicts the long synthetic caption with learned
queries; loss = contrastive_weight x InfoNCE + caption_weight x cross-entropy.
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

NAME = "openvision"


@dataclass(frozen=True)
class OpenVisionModelConfig:
    """What the OpenVision model is built from; nothing else of the run reaches it."""

    vision: VisionConfig
    text: TowerSpec  # the text encoder's tower
    decoder: TowerSpec  # the query decoder's tower
    vocab_size: int  # text embedding rows and head columns
    text_len: int  # text-encoder context (alt-text and short caption)
    caption_len: int  # long caption tokens, one learned query each
    contrastive_weight: float  # loss = contrastive_weight x InfoNCE + caption_weight x CE
    caption_weight: float
    loss_impl: str  # eager | compiled | chunked | triton (ovprof/models/losses.py caption_loss)
    checkpointing_text: bool  # activation checkpointing on the text encoder's and decoder's blocks


def model_config(cfg: "RunConfig") -> OpenVisionModelConfig:
    c = cfg.resolved()
    return OpenVisionModelConfig(
        vision=_common.vision_config(c), text=presets.TEXT_ENCODERS[c.text_encoder],
        decoder=presets.DECODERS[c.decoder], vocab_size=c.vocab_size, text_len=c.text_len,
        caption_len=c.caption_len, contrastive_weight=c.contrastive_weight, caption_weight=c.caption_weight,
        loss_impl=c.loss_impl, checkpointing_text=c.checkpointing_text)


def _loss(model, images, alt_text, short_caption, caption):
    import torch

    from ovprof.models.losses import caption_loss

    m: OpenVisionModelConfig = model.config
    visual = model.encode_image(images)  # (B, N or K, Dv)
    states, pooled = model.text(torch.cat([alt_text, short_caption], dim=0))  # (2B, T, Dt), (2B, Dt)
    B = images.shape[0]
    h = model.decoder.hidden(model.decoder_tokens(visual), states[:B])  # (B, Q, D)
    cap = caption_loss(h, model.decoder.head.weight, caption, m.loss_impl)
    return m.contrastive_weight * model.contrastive(visual, pooled) + m.caption_weight * cap


def build(m: OpenVisionModelConfig):
    from ovprof.models.text import QueryDecoder, TextEncoder

    model = _common.new_model(m.vision, _loss, m)
    model.text = TextEncoder(m.text, m.vocab_size, m.text_len, checkpointing=m.checkpointing_text)
    model.add_contrastive_head(m.text.width)
    model.decoder = QueryDecoder(m.decoder, model.vision.width, m.text.width, m.vocab_size, m.caption_len,
                                 checkpointing=m.checkpointing_text)
    return model


def batch_tokens(c: "RunConfig") -> tuple[tuple[str, int], ...]:
    # alt-text and a short synthetic caption for the text encoder, the long caption for the decoder
    return (("alt_text", c.text_len), ("short_caption", c.text_len), ("caption", c.caption_len))


def make_batch(cfg: "RunConfig", device, rank: int = 0) -> dict:
    return _common.synthetic_batch(cfg, device, rank, batch_tokens(cfg.resolved()))


def params(cfg: "RunConfig") -> dict[str, int]:
    c = cfg.resolved()
    Dv = presets.ENCODERS[c.encoder].tower.width
    d = presets.DECODERS[c.decoder]
    t = presets.TEXT_ENCODERS[c.text_encoder]
    out = _common.empty_params(c)
    _common.add_text_params(out, c)
    out["decoder"] = (Dv * d.width + t.width * d.width + c.caption_len * d.width  # visual, text proj; queries
                      + trunk_params(d) + d.width * c.vocab_size)  # blocks, head
    return _common.with_total(out)


def step_flops(cfg: "RunConfig") -> StepFlops:
    c = cfg.resolved()
    n = _common.tokens(c)
    Dv = presets.ENCODERS[c.encoder].tower.width
    d = presets.DECODERS[c.decoder]
    t = presets.TEXT_ENCODERS[c.text_encoder]
    fwd, skipped = {}, 0
    fwd["encoder"], skipped = _common.vision_flops(c, n)
    fwd.update(_common.contrastive_flops(c, n_text=2 * n.B))
    Q = c.caption_len
    seq = n.K + c.text_len + Q  # [visual; alt-text states; queries]
    fwd["decoder"] = (_linear(n.B * n.K, Dv, d.width) + _linear(n.B * c.text_len, t.width, d.width)
                      + trunk_forward_flops(d, seq, n.B) + _linear(n.B * Q, d.width, c.vocab_size))
    return _common.step(fwd, skipped)


def activation_terms(cfg: "RunConfig", attention: str = "flash") -> ActivationTerms:
    c = cfg.resolved()
    b = BYTES[c.precision]
    n = _common.tokens(c)
    d = presets.DECODERS[c.decoder]
    kv, tv = _common.vision_bytes(c, n, b)
    kt, tt = _common.text_bytes(c, 2 * n.B, b)
    seq = n.K + c.text_len + c.caption_len
    kd, td = _common.decoder_bytes(c, n, d, seq, b, math_attention=attention == "math")
    return ActivationTerms(kept_bytes=kv + kt + kd, transient_bytes=max(tv, tt, td), logits_tokens=n.B * c.caption_len,
                           head_width=d.width, input_bytes=_common.input_bytes(c, b, batch_tokens(c)),
                           max_param_numel=_common.max_param_numel(c, text=True, decoder=True))


OBJECTIVE = _common.Objective(
    name=NAME, label="OpenVision (CLIP + caption, OpenVision 1)",
    summary="clip on alt-text + short caption (2 texts per image) + query decoder predicting the long caption",
    family="contrastive",  # OpenVision 1 is CLIP plus a caption decoder; the contrastive loss is its spine
    savings_side="openvision", tower_presets=(("text_encoder", "text_encoder"), ("decoder", "decoder")),
    paper_mask_ratio=0.0,
    model_config=model_config, build=build, make_batch=make_batch, params=params, step_flops=step_flops,
    activation_terms=activation_terms, validate=_common.no_checks,
)
