"""What every objective shares: the spec it registers, its vision side, and the per-tower terms it sums.

    python -c "from ovprof.objectives import get; o = get('openvision'); print(o.label, o.towers)"

No torch import: `import ovprof.objectives` must stay fast (ovprof/config.py
imports it to validate `objective`). Objective functions receive a RunConfig
duck-typed (this package sits below ovprof/config.py and may not import it)
and resolve it themselves, so each may be called on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ovprof import presets
from ovprof.measure.activations import TOKEN_BYTES, tower_bytes
from ovprof.measure.flops import StepFlops, _linear, encoder_params, trunk_forward_flops, trunk_params
from ovprof.presets import EncoderSpec, TowerSpec

if TYPE_CHECKING:
    from ovprof.config import RunConfig
    from ovprof.measure.activations import ActivationTerms


def no_changes(cfg: "RunConfig") -> dict[str, Any]:
    """The resolve hook of an objective with no "auto" fields of its own."""
    return {}


def random_kept_tokens(c: "RunConfig") -> int:
    """Visual tokens kept per sample after random per-token masking: round(N * (1 - mask_ratio)), at least 1."""
    return max(1, round(c.num_patches * (1.0 - c.mask_ratio)))


FAMILIES = ("contrastive", "captioning", "pixel")  # how the report groups objectives, in its order


@dataclass(frozen=True)
class Objective:
    """One pretraining objective, as the registry holds it. Every field is filled by its module."""

    name: str  # the `objective` value in a RunConfig
    label: str  # how reports and `ovprof models --objectives` name it
    summary: str  # one line: what the model computes
    family: str  # one of FAMILIES: what supervises the encoder (report's families table)
    savings_side: str | None  # column of the report's savings table it fills; None = not compared there
    # The towers it builds besides the vision encoder, each with the RunConfig field naming its preset, e.g.
    # (("text_encoder", "text_encoder"), ("decoder", "decoder")); tower names as `tower_params` counts them.
    tower_presets: tuple[tuple[str, str], ...]
    paper_mask_ratio: float  # visual-token mask ratio of the paper's efficiency table (estimate --paper)
    model_config: Callable[["RunConfig"], Any]  # RunConfig -> the objective's own frozen model config
    build: Callable[[Any], Any]  # model config -> ImageTextModel (imports torch)
    make_batch: Callable[..., dict]  # (RunConfig, device, rank=0) -> synthetic batch, forward's keyword arguments
    params: Callable[["RunConfig"], dict]  # analytic parameters per tower, as tower_params counts the built model
    step_flops: Callable[["RunConfig"], StepFlops]  # analytic FLOPs of one step on one rank
    activation_terms: Callable[["RunConfig", str], "ActivationTerms"]  # (RunConfig, attention) -> analytic bytes
    validate: Callable[["RunConfig"], None]  # raise ConfigError for a setting the objective cannot run
    # True: every variant (masked, fused loss) fills its savings column, as caption-only does; False: only the
    # unmasked eager run, as the papers' OpenVision and CLIP baselines are.
    savings_every_variant: bool = False
    # RunConfig fields only objectives that list them read; every other objective refuses a non-default value
    # (ovprof/config.py validate), so a sweep cannot vary a field that changes nothing.
    own_fields: tuple[str, ...] = ()
    # RunConfig -> {field: value} for the objective's own "auto" values (RunConfig.resolved calls it after the
    # shared ones: res, text_encoder, decoder). Must return {} on a config it resolved.
    resolve: Callable[["RunConfig"], dict] = no_changes
    # RunConfig (resolved, mask_ratio > 0) -> visual tokens kept per sample (RunConfig.kept_tokens)
    kept_tokens: Callable[["RunConfig"], int] = random_kept_tokens

    @property
    def towers(self) -> tuple[str, ...]:
        return ("encoder",) + tuple(t for t, _ in self.tower_presets)

    @property
    def uses_text_encoder(self) -> bool:
        """RunConfig.text_encoder names one of its towers."""
        return any(f == "text_encoder" for _, f in self.tower_presets)

    @property
    def uses_decoder(self) -> bool:
        """RunConfig.decoder (the caption decoder) names one of its towers."""
        return any(f == "decoder" for _, f in self.tower_presets)


def no_checks(cfg: "RunConfig") -> None:
    """The validation hook of an objective that accepts every setting RunConfig accepts."""


# ---- the vision side -------------------------------------------------------------------
@dataclass(frozen=True)
class VisionConfig:
    """The vision tower and its token masking, as every objective's model config holds them."""

    encoder: EncoderSpec  # vision preset
    res: int  # image side in pixels
    keep: int | None  # visual tokens kept per sample; None = no masking
    mask_position: str  # decoder: drop encoder outputs (OpenVision 2); encoder: drop patches (FLIP)
    checkpointing: bool  # activation checkpointing on the vision blocks
    cls_tokens: int = 0  # learned class tokens prepended to the patches (MAE 1, Pixio 8; none elsewhere)


def vision_config(c: "RunConfig") -> VisionConfig:
    return VisionConfig(encoder=presets.ENCODERS[c.encoder], res=c.res,
                        keep=c.kept_tokens if c.mask_ratio > 0 else None,
                        mask_position=c.mask_position, checkpointing=c.checkpointing)


def new_model(v: VisionConfig, loss_fn: Callable, config: Any):
    """The ImageTextModel shell with its vision tower; the objective adds its other towers in order."""
    from ovprof.models.image_text import ImageTextModel

    return ImageTextModel(v.encoder, v.res, keep=v.keep, mask_position=v.mask_position,
                          checkpointing=v.checkpointing, loss_fn=loss_fn, config=config, cls_tokens=v.cls_tokens)


@dataclass(frozen=True)
class Tokens:
    """Visual token counts of one micro-batch, the quantities every formula starts from."""

    B: int  # images per rank
    N: int  # patches per image
    K: int  # visual tokens kept per image (N without masking)
    enc_seq: int  # tokens the encoder blocks see: K with encoder-side masking, else N


def tokens(c: "RunConfig") -> Tokens:
    N = c.num_patches
    K = c.kept_tokens if c.mask_ratio > 0 else N
    return Tokens(B=c.batch, N=N, K=K, enc_seq=K if c.mask_position == "encoder" else N)


def synthetic_batch(cfg: "RunConfig", device, rank: int, fields: Sequence[tuple[str, int]]) -> dict:
    from ovprof.models.data import synthetic_batch as make

    c = cfg.resolved()
    return make(batch=c.batch, res=c.res, precision=c.precision, vocab_size=c.vocab_size, seed=c.seed, rank=rank,
                tokens=fields, device=device)


# ---- analytic parameters -----------------------------------------------------------------
def empty_params(c: "RunConfig") -> dict[str, int]:
    return {"encoder": encoder_params(c.encoder, c.res), "text_encoder": 0, "decoder": 0, "other": 0}


def add_text_params(out: dict[str, int], c: "RunConfig") -> None:
    """The text tower (embedding, positions, blocks) and the contrastive head (two projections, logit scale)."""
    Dv = presets.ENCODERS[c.encoder].tower.width
    t = presets.TEXT_ENCODERS[c.text_encoder]
    out["text_encoder"] = c.vocab_size * t.width + c.text_len * t.width + trunk_params(t)
    out["other"] = Dv * t.width + t.width * t.width + 1


def with_total(out: dict[str, int]) -> dict[str, int]:
    out["total"] = sum(out.values())
    return out


def max_param_numel(c: "RunConfig", *, text: bool, decoder: bool) -> int:
    """The largest single parameter of the vision tower and, where built, the text tower and the decoder."""
    e = presets.ENCODERS[c.encoder].tower
    sizes = [e.width * e.mlp, c.num_patches * e.width]
    if text:
        t = presets.TEXT_ENCODERS[c.text_encoder]
        sizes += [c.vocab_size * t.width, t.width * t.mlp]
    if decoder:
        d = presets.DECODERS[c.decoder]
        sizes += [c.vocab_size * d.width, d.width * d.mlp]
    return max(sizes)


# ---- analytic FLOPs ----------------------------------------------------------------------
def vision_flops(c: "RunConfig", n: Tokens) -> tuple[int, int]:
    """(forward FLOPs of the vision tower, backward FLOPs it skips: no gradient w.r.t. pixels)."""
    e = presets.ENCODERS[c.encoder]
    patch = _linear(n.B * n.N, 3 * e.patch * e.patch, e.tower.width)
    return patch + trunk_forward_flops(e.tower, n.enc_seq, n.B), patch


def contrastive_flops(c: "RunConfig", n_text: int) -> dict[str, int]:
    """The text tower over n_text sequences, and the contrastive head against the global batch."""
    Dv = presets.ENCODERS[c.encoder].tower.width
    t = presets.TEXT_ENCODERS[c.text_encoder]
    B, W = c.batch, c.world_size
    return {
        "text_encoder": trunk_forward_flops(t, c.text_len, n_text),
        # projections to the shared embedding, then this rank's rows against the global batch, both ways
        "contrastive": _linear(B, Dv, t.width) + _linear(n_text, t.width, t.width) + 2 * 2 * n_text * (B * W) * t.width,
    }


def step(fwd: dict[str, int], backward_skipped: int) -> StepFlops:
    forward = sum(fwd.values())
    return StepFlops(forward=forward, backward=2 * forward - backward_skipped, forward_by_tower=fwd)


# ---- analytic activation bytes -----------------------------------------------------------
def vision_bytes(c: "RunConfig", n: Tokens, b: int) -> tuple[int, int]:
    """(kept, transient) of the vision tower: the position-embedded patches (the first block's input), the blocks."""
    e = presets.ENCODERS[c.encoder].tower
    k, t = tower_bytes(e, n.B, n.enc_seq, b, math_attention=False, checkpointing=c.checkpointing)
    return n.B * n.N * e.width * b + k, t


def text_bytes(c: "RunConfig", n_text: int, b: int) -> tuple[int, int]:
    """(kept, transient) of the text tower over n_text sequences, its output states included."""
    tt = presets.TEXT_ENCODERS[c.text_encoder]
    k, t = tower_bytes(tt, n_text, c.text_len, b, math_attention=False, checkpointing=c.checkpointing_text)
    return k + n_text * c.text_len * tt.width * b, t


def decoder_bytes(c: "RunConfig", n: Tokens, d: TowerSpec, seq: int, b: int, *,
                  math_attention: bool) -> tuple[int, int]:
    """(kept, transient) of a caption decoder over a [prefix; text] sequence of length seq."""
    k, t = tower_bytes(d, n.B, seq, b, math_attention=math_attention, checkpointing=c.checkpointing_text)
    k += n.B * seq * d.width * b  # + the decoder's input sequence
    if c.mask_ratio > 0 and c.mask_position == "decoder":
        # the gathered visual tokens, kept by the projection
        k += n.B * n.K * presets.ENCODERS[c.encoder].tower.width * b
    return k, t


def input_bytes(c: "RunConfig", b: int, fields: Sequence[tuple[str, int]]) -> int:
    """The synthetic micro-batch: images in the training dtype, token ids as int64."""
    return c.batch * 3 * c.res * c.res * b + c.batch * TOKEN_BYTES * sum(n for _, n in fields)
