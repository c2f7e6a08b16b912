"""mae (masked autoencoder): kept patches + class token -> vision tower -> pixel decoder -> masked-patch MSE.

    ovprof run --objective mae --encoder vit-debug --zero 0 --steps 3 --warmup 1

He et al. 2022, as Pixio's pretraining/models_pixio.py writes it: drop a
mask_ratio share of the patches (0.75) before the encoder, in g x g blocks
(mask_grid; MAE: 1, per patch), so the encoder runs on the K kept patches plus
its class tokens (cls_tokens; MAE: 1). The pixel decoder (pixel_decoder; MAE:
dec-mae, 512 wide x 8 blocks) embeds the encoder's output, puts a mask token
at every dropped position, adds its own position embedding and predicts
patch^2 x 3 pixels per patch (ovprof/models/pixel.py). Loss = mean squared
error over the masked patches only, against per-patch normalised pixels
(norm_pix_loss). No text: the family the report calls "pixel".

The recipe is data (`Recipe`): ovprof/objectives/pixio.py registers Pixio as
this objective with Pixio's defaults. What "auto" resolves to (RunConfig.resolved):
mask_ratio 0 -> the recipe's 0.75 (without masking there is nothing to predict),
mask_position -> encoder (always), pixel_decoder auto -> the recipe's decoder
(dec-pixel-debug for vit-debug), cls_tokens none -> the recipe's, mask_grid 0 ->
the recipe's where it leaves at least 4 blocks on the patch grid, else the
largest smaller divisor that does (vit-debug's 4 x 4 grid gets 2 under Pixio).
The text settings (text_encoder, decoder, vocab_size, caption_len, text_len,
the loss weights) are ignored; checkpointing_text checkpoints the pixel decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ovprof import presets
from ovprof.errors import ConfigError
from ovprof.measure.activations import BYTES, ActivationTerms, tower_bytes
from ovprof.measure.flops import StepFlops, _linear, encoder_params, trunk_forward_flops, trunk_params
from ovprof.objectives import _common
from ovprof.objectives._common import VisionConfig
from ovprof.presets import TowerSpec

if TYPE_CHECKING:
    from ovprof.config import RunConfig

NAME = "mae"
# The RunConfig fields only the pixel objectives read (every other objective refuses a non-default value).
OWN_FIELDS = ("pixel_decoder", "mask_grid", "cls_tokens", "norm_pix_loss")
MIN_BLOCKS = 4  # an "auto" mask_grid leaves at least this many blocks, so 0.75 keeps one and masks three


@dataclass(frozen=True)
class Recipe:
    """What a pixel objective resolves its "auto" fields to."""

    pixel_decoder: str  # pixel decoder preset (dec-pixel-debug for vit-debug)
    mask_grid: int  # masking block side in patches, where the patch grid allows it
    cls_tokens: int  # learned class tokens of the encoder
    mask_ratio: float = 0.75  # share of patches dropped


RECIPE = Recipe(pixel_decoder="dec-mae", mask_grid=1, cls_tokens=1)


@dataclass(frozen=True)
class PixelModelConfig:
    """What a pixel-reconstruction model is built from; nothing else of the run reaches it."""

    vision: VisionConfig  # with the class tokens; its masking is chosen by the loss (block_mask), not `keep`
    decoder: TowerSpec  # the pixel decoder's tower
    grid: int  # patches per side of the image
    mask_grid: int  # masking block side in patches (divides grid)
    keep_blocks: int  # blocks kept per sample: int(blocks x (1 - mask_ratio))
    norm_pix_loss: bool  # targets normalised per patch (mean 0, variance 1)
    checkpointing_decoder: bool  # activation checkpointing on the pixel decoder's blocks (checkpointing_text)


# ---- resolution and validation -----------------------------------------------------------
def grid_of(c: "RunConfig") -> int:
    """Patches per side at the config's resolution (res already resolved)."""
    return c.res // presets.ENCODERS[c.encoder].patch


def default_grid(wanted: int, grid: int) -> int:
    """`wanted`, or the largest smaller block side that divides the grid into at least MIN_BLOCKS blocks."""
    for g in range(wanted, 1, -1):
        if grid % g == 0 and (grid // g) ** 2 >= MIN_BLOCKS:
            return g
    return 1


def keep_blocks(c: "RunConfig") -> int:
    """Blocks kept per sample, int(blocks x (1 - mask_ratio)) as Pixio's random_masking (resolved config)."""
    blocks = (grid_of(c) // c.mask_grid) ** 2
    return int(blocks * (1.0 - c.mask_ratio))


def kept_tokens(c: "RunConfig") -> int:
    """Patches the encoder sees per sample (besides its class tokens): whole blocks only."""
    return keep_blocks(c) * c.mask_grid ** 2


def resolver(recipe: Recipe):
    def resolve(c: "RunConfig") -> dict[str, Any]:
        out: dict[str, Any] = {}
        if c.mask_ratio == 0:
            out["mask_ratio"] = recipe.mask_ratio
        if c.mask_position != "encoder":
            out["mask_position"] = "encoder"
        if c.pixel_decoder == "auto":
            out["pixel_decoder"] = presets.auto_pixel_decoder(c.encoder, recipe.pixel_decoder)
        if c.cls_tokens is None:
            out["cls_tokens"] = recipe.cls_tokens
        if c.mask_grid == 0:
            out["mask_grid"] = default_grid(recipe.mask_grid, grid_of(c))
        return out

    return resolve


def validate(c: "RunConfig") -> None:
    if c.pixel_decoder != "auto" and c.pixel_decoder not in presets.PIXEL_DECODERS:
        raise ConfigError(f"must be one of auto, {', '.join(presets.PIXEL_DECODERS)}", key="pixel_decoder",
                          value=c.pixel_decoder)
    if c.mask_grid < 0:
        raise ConfigError("must be >= 1 patch (0 = the objective's default)", key="mask_grid", value=c.mask_grid)
    if c.cls_tokens is not None and c.cls_tokens < 0:
        raise ConfigError("must be >= 0 (none = the objective's default)", key="cls_tokens", value=c.cls_tokens)
    if c.loss_impl != "eager":
        raise ConfigError(f"{c.objective} has no caption head to fuse; use loss_impl = \"eager\"", key="loss_impl",
                          value=c.loss_impl)
    r = c.resolved()
    grid = grid_of(r)
    fits = ", ".join(str(g) for g in range(1, grid) if grid % g == 0)  # at least 2 x 2 blocks
    if grid % r.mask_grid:
        raise ConfigError(f"must divide the {grid} x {grid} patch grid of {r.encoder}@{r.res}",
                          key="mask_grid", value=r.mask_grid, hint=f"one of {fits}")
    blocks = (grid // r.mask_grid) ** 2
    if blocks < 2:
        raise ConfigError(f"makes the {grid} x {grid} patch grid of {r.encoder}@{r.res} one block: nothing to "
                          "keep beside a masked one", key="mask_grid", value=r.mask_grid, hint=f"one of {fits}")
    kept = keep_blocks(r)
    if not 1 <= kept < blocks:
        raise ConfigError(f"keeps int({blocks} x (1 - {r.mask_ratio:g})) = {kept} of the {blocks} blocks of "
                          f"{r.mask_grid} x {r.mask_grid} patches; at least one must be kept and one masked",
                          key="mask_ratio", value=r.mask_ratio, hint="a lower mask ratio or a smaller mask_grid")


# ---- the model ---------------------------------------------------------------------------
def model_config(cfg: "RunConfig") -> PixelModelConfig:
    c = cfg.resolved()
    vision = VisionConfig(encoder=presets.ENCODERS[c.encoder], res=c.res, keep=None, mask_position="encoder",
                          checkpointing=c.checkpointing, cls_tokens=c.cls_tokens)
    return PixelModelConfig(vision=vision, decoder=presets.PIXEL_DECODERS[c.pixel_decoder], grid=grid_of(c),
                            mask_grid=c.mask_grid, keep_blocks=keep_blocks(c), norm_pix_loss=c.norm_pix_loss,
                            checkpointing_decoder=c.checkpointing_text)


def _loss(model, images):
    from ovprof.models.losses import patchify, pixel_loss
    from ovprof.models.pixel import block_mask

    m: PixelModelConfig = model.config
    index, masked = block_mask(images.shape[0], m.grid, m.mask_grid, m.keep_blocks, images.device)  # (B, K), (B, N)
    latent = model.vision(images, index=index)  # (B, C + K, Dv)
    pred = model.decoder(latent, index)  # (B, N, patch^2 x 3)
    return pixel_loss(pred, patchify(images, m.vision.encoder.patch), masked, m.norm_pix_loss)


def build(m: PixelModelConfig):
    from ovprof.models.pixel import PixelDecoder

    model = _common.new_model(m.vision, _loss, m)
    model.decoder = PixelDecoder(m.decoder, model.vision.width, m.grid * m.grid, m.vision.cls_tokens,
                                 m.vision.encoder.patch, checkpointing=m.checkpointing_decoder)
    return model


def make_batch(cfg: "RunConfig", device, rank: int = 0) -> dict:
    return _common.synthetic_batch(cfg, device, rank, ())  # images only: they are also the target


# ---- analytic parameters, FLOPs, activation bytes ----------------------------------------
def _sizes(c: "RunConfig") -> tuple[int, int, int, int, int, TowerSpec]:
    """(B, N, K, C, pixels per patch, decoder tower) of a resolved config."""
    e = presets.ENCODERS[c.encoder]
    return (c.batch, c.num_patches, kept_tokens(c), c.cls_tokens, 3 * e.patch * e.patch,
            presets.PIXEL_DECODERS[c.pixel_decoder])


def params(cfg: "RunConfig") -> dict[str, int]:
    c = cfg.resolved()
    _, N, _, C, P, d = _sizes(c)
    Dv = presets.ENCODERS[c.encoder].tower.width
    out = {"encoder": encoder_params(c.encoder, c.res, cls_tokens=C), "text_encoder": 0, "other": 0}
    out["decoder"] = (Dv * d.width + d.width + d.width + (C + N) * d.width  # embedding, mask token, positions
                      + trunk_params(d) + d.width * P + P)  # blocks, pixel head
    return _common.with_total(out)


def step_flops(cfg: "RunConfig") -> StepFlops:
    """Patch embedding over all N patches (before masking), encoder blocks over C + K tokens, decoder embedding
    over C + K, decoder blocks over C + N, pixel head over the N patch positions (Pixio's head also runs over
    the class tokens and drops them: C / N more head FLOPs, which we do not spend)."""
    c = cfg.resolved()
    B, N, K, C, P, d = _sizes(c)
    e = presets.ENCODERS[c.encoder]
    patch = _linear(B * N, P, e.tower.width)
    fwd = {"encoder": patch + trunk_forward_flops(e.tower, C + K, B),
           "decoder": (_linear(B * (C + K), e.tower.width, d.width) + trunk_forward_flops(d, C + N, B)
                       + _linear(B * N, d.width, P))}
    return _common.step(fwd, patch)  # the patch embedding needs no gradient w.r.t. the pixels


def activation_terms(cfg: "RunConfig", attention: str = "flash") -> ActivationTerms:
    c = cfg.resolved()
    b = BYTES[c.precision]
    B, N, K, C, P, d = _sizes(c)
    e = presets.ENCODERS[c.encoder].tower
    kv, tv = tower_bytes(e, B, C + K, b, math_attention=False, checkpointing=c.checkpointing)
    kv += B * (C + K) * e.width * b  # [class tokens; kept patches], the first block's input
    kd, td = tower_bytes(d, B, C + N, b, math_attention=False, checkpointing=c.checkpointing_text)
    kd += B * (C + N) * d.width * b  # [class tokens; kept patches and mask tokens] + positions
    loss = B * N * P * 4  # pred - target in fp32, kept by the square
    return ActivationTerms(kept_bytes=kv + kd + loss, transient_bytes=max(tv, td), logits_tokens=0, head_width=0,
                           input_bytes=_common.input_bytes(c, b, ()),
                           max_param_numel=max(e.width * e.mlp, N * e.width, d.width * d.mlp, (C + N) * d.width,
                                               e.width * d.width, d.width * P),
                           # backward of the square: the mean's expanded gradient, 2 x diff, their product
                           loss_grad_bytes=3 * loss)


def make_objective(name: str, label: str, summary: str, recipe: Recipe) -> _common.Objective:
    """A pixel-reconstruction objective with `recipe`'s defaults (mae below, pixio in pixio.py)."""
    return _common.Objective(
        name=name, label=label, summary=summary, family="pixel", savings_side=None,
        tower_presets=(("decoder", "pixel_decoder"),), paper_mask_ratio=recipe.mask_ratio,
        model_config=model_config, build=build, make_batch=make_batch, params=params, step_flops=step_flops,
        activation_terms=activation_terms, validate=validate, own_fields=OWN_FIELDS, resolve=resolver(recipe),
        kept_tokens=kept_tokens,
    )


OBJECTIVE = make_objective(
    NAME, "MAE (masked autoencoder)",
    "vision tower on the kept 25% of patches + 1 class token; pixel decoder (512 x 8) predicts the masked "
    "patches; MSE on normalised pixels",
    RECIPE)
