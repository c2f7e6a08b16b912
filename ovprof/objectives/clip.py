"""clip: vision tower (mean-pooled) + text encoder (last token) -> symmetric InfoNCE.

    ovprof run --objective clip --encoder vit-debug --mask-ratio 0.5 --mask-position encoder --steps 5

One caption per image; the contrastive head projects both towers to the text
tower's width and compares this rank's rows with the global batch (gathered
across ranks); loss = contrastive_weight x InfoNCE. With no decoder, masking
can only drop patches before the encoder (FLIP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovprof import presets
from ovprof.errors import ConfigError
from ovprof.measure.activations import BYTES, ActivationTerms
from ovprof.measure.flops import StepFlops
from ovprof.objectives import _common
from ovprof.objectives._common import VisionConfig
from ovprof.presets import TowerSpec

if TYPE_CHECKING:
    from ovprof.config import RunConfig

NAME = "clip"


@dataclass(frozen=True)
class ClipModelConfig:
    """What the CLIP model is built from; nothing else of the run reaches it."""

    vision: VisionConfig
    text: TowerSpec  # the text encoder's tower
    vocab_size: int  # text embedding rows
    text_len: int  # text-encoder context
    contrastive_weight: float  # loss = contrastive_weight x InfoNCE
    checkpointing_text: bool  # activation checkpointing on the text encoder's blocks


def model_config(cfg: "RunConfig") -> ClipModelConfig:
    c = cfg.resolved()
    return ClipModelConfig(vision=_common.vision_config(c), text=presets.TEXT_ENCODERS[c.text_encoder],
                           vocab_size=c.vocab_size, text_len=c.text_len, contrastive_weight=c.contrastive_weight,
                           checkpointing_text=c.checkpointing_text)


def _loss(model, images, text):
    m: ClipModelConfig = model.config
    visual = model.encode_image(images)  # (B, N or K, Dv)
    _, pooled = model.text(text)  # (B, Dt)
    return m.contrastive_weight * model.contrastive(visual, pooled)


def build(m: ClipModelConfig):
    from ovprof.models.text import TextEncoder

    model = _common.new_model(m.vision, _loss, m)
    model.text = TextEncoder(m.text, m.vocab_size, m.text_len, checkpointing=m.checkpointing_text)
    model.add_contrastive_head(m.text.width)
    return model


def batch_tokens(c: "RunConfig") -> tuple[tuple[str, int], ...]:
    return (("text", c.text_len),)  # the caption the text encoder reads


def make_batch(cfg: "RunConfig", device, rank: int = 0) -> dict:
    return _common.synthetic_batch(cfg, device, rank, batch_tokens(cfg.resolved()))


def params(cfg: "RunConfig") -> dict[str, int]:
    c = cfg.resolved()
    out = _common.empty_params(c)
    _common.add_text_params(out, c)
    return _common.with_total(out)


def step_flops(cfg: "RunConfig") -> StepFlops:
    c = cfg.resolved()
    n = _common.tokens(c)
    fwd, skipped = {}, 0
    fwd["encoder"], skipped = _common.vision_flops(c, n)
    fwd.update(_common.contrastive_flops(c, n_text=n.B))
    return _common.step(fwd, skipped)


def activation_terms(cfg: "RunConfig", attention: str = "flash") -> ActivationTerms:
    c = cfg.resolved()
    b = BYTES[c.precision]
    n = _common.tokens(c)
    kv, tv = _common.vision_bytes(c, n, b)
    kt, tt = _common.text_bytes(c, n.B, b)
    return ActivationTerms(kept_bytes=kv + kt, transient_bytes=max(tv, tt), logits_tokens=0, head_width=0,
                           input_bytes=_common.input_bytes(c, b, batch_tokens(c)),
                           max_param_numel=_common.max_param_numel(c, text=True, decoder=False))


def validate(c: "RunConfig") -> None:
    if c.mask_position == "decoder" and c.mask_ratio > 0:
        raise ConfigError("clip has no decoder to mask for; use mask_position = \"encoder\" (FLIP)",
                          key="mask_position", value=c.mask_position)


OBJECTIVE = _common.Objective(
    name=NAME, label="CLIP",
    summary="vision tower (mean-pooled) + text encoder (last token); contrastive_weight x symmetric InfoNCE",
    family="contrastive", savings_side="clip", tower_presets=(("text_encoder", "text_encoder"),),
    paper_mask_ratio=0.0,
    model_config=model_config, build=build, make_batch=make_batch, params=params, step_flops=step_flops,
    activation_terms=activation_terms, validate=validate,
)
