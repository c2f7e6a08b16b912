"""Analytic parameter counts and training FLOPs, one formula per term. No torch import.

    python -c "from ovprof.config import RunConfig; from ovprof.measure.flops import step_flops; print(step_flops(RunConfig(encoder='vit-l14')))"

Convention (the one nanoGPT's estimate_mfu and the PaLM paper's MFU use):
model FLOPs of matrix multiplies only, 2 FLOPs per multiply-add; backward =
2 x forward (gradient w.r.t. the input and w.r.t. the weight), except where the
input needs no gradient (the patch embedding sees raw pixels: backward = 1 x).
Attention scores and the weighted sum are counted over the full S x S matrix
even when causal (as torch.utils.flop_counter counts them), so attention adds
4 * S^2 * D forward per layer and twice that backward: 12 * depth * D * S^2 per
sequence, the reference's attention term. Activation-checkpoint recompute is
not model FLOPs and is not counted. Norms, softmax, GELU and the loss's
elementwise work are ignored (well under 1% at the presets' sizes).

Cross-checked against torch.utils.flop_counter.FlopCounterMode (MATH SDPA
backend, which exposes the attention matmuls) in tests/test_flops.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovprof import presets
from ovprof.config import RunConfig
from ovprof.presets import TowerSpec


# ---- parameters ------------------------------------------------------------------
def block_params(t: TowerSpec) -> int:
    D, M = t.width, t.mlp
    attn = 3 * D * D + 3 * D + D * D + D  # qkv + proj, with biases
    mlp = D * M + M + M * D + D
    norms = 2 * 2 * D
    return attn + mlp + norms


def trunk_params(t: TowerSpec) -> int:
    return t.depth * block_params(t) + 2 * t.width  # + final LayerNorm


def map_head_params(t: TowerSpec) -> int:
    D, M = t.width, t.mlp
    return D + (3 * D * D + 3 * D + D * D + D) + 2 * D + (D * M + M + M * D + D)


def encoder_params(name: str, res: int, *, head: bool = False) -> int:
    e = presets.ENCODERS[name]
    D, P = e.tower.width, e.patch
    n = (res // P) ** 2
    p = 3 * P * P * D + D + n * D + trunk_params(e.tower)
    return p + (map_head_params(e.tower) if head else 0)


def model_params(cfg: RunConfig) -> dict[str, int]:
    """Per tower, as the built model has them (tests compare with numel)."""
    c = cfg.resolved()
    Dv = presets.ENCODERS[c.encoder].tower.width
    out = {"encoder": encoder_params(c.encoder, c.res), "text_encoder": 0, "decoder": 0, "other": 0}
    if c.uses_text_encoder:
        t = presets.TEXT_ENCODERS[c.text_encoder]
        out["text_encoder"] = c.vocab_size * t.width + c.text_len * t.width + trunk_params(t)
        out["other"] = Dv * t.width + t.width * t.width + 1  # image/text projections, logit scale
    if c.objective == "caption":
        d = presets.DECODERS[c.decoder]
        out["decoder"] = (Dv * d.width + c.vocab_size * d.width + c.caption_len * d.width
                          + trunk_params(d) + d.width * c.vocab_size)
    elif c.objective == "openvision":
        d = presets.DECODERS[c.decoder]
        t = presets.TEXT_ENCODERS[c.text_encoder]
        out["decoder"] = (Dv * d.width + t.width * d.width + c.caption_len * d.width
                          + trunk_params(d) + d.width * c.vocab_size)
    out["total"] = sum(out.values())
    return out


# ---- FLOPs -------------------------------------------------------------------------
def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def trunk_forward_flops(t: TowerSpec, seq: int, n_seq: int) -> int:
    """Forward FLOPs of `n_seq` sequences of length `seq` through a tower's blocks."""
    D, M = t.width, t.mlp
    per_token = 2 * (4 * D * D + 2 * D * M)  # qkv (3 D^2) + proj (D^2) + MLP (2 D M)
    attention = 4 * seq * seq * D  # Q K^T and A V, all heads
    return t.depth * n_seq * (seq * per_token + attention)


@dataclass(frozen=True)
class StepFlops:
    """Forward and backward FLOPs of one step on one rank (its micro-batch)."""

    forward: int
    backward: int
    forward_by_tower: dict

    @property
    def total(self) -> int:
        return self.forward + self.backward


def step_flops(cfg: RunConfig) -> StepFlops:
    c = cfg.resolved()
    e = presets.ENCODERS[c.encoder]
    B, W = c.batch, c.world_size
    Dv, P = e.tower.width, e.patch
    N = c.num_patches
    K = c.kept_tokens if c.mask_ratio > 0 else N
    enc_seq = K if c.mask_position == "encoder" else N  # tokens the encoder blocks see
    dec_visual = K  # tokens the decoder sees: masked either side, or N when mask_ratio == 0

    fwd: dict[str, int] = {}
    bwd_discount = 0  # backward work skipped where the input needs no gradient
    patch = _linear(B * N, 3 * P * P, Dv)
    fwd["encoder"] = patch + trunk_forward_flops(e.tower, enc_seq, B)
    bwd_discount += patch  # no gradient w.r.t. pixels

    if c.uses_text_encoder:
        t = presets.TEXT_ENCODERS[c.text_encoder]
        n_text = 2 * B if c.objective == "openvision" else B
        fwd["text_encoder"] = trunk_forward_flops(t, c.text_len, n_text)
        # projections to the shared embedding, then this rank's rows against the global batch, both ways
        fwd["contrastive"] = (_linear(B, Dv, t.width) + _linear(n_text, t.width, t.width)
                              + 2 * 2 * n_text * (B * W) * t.width)
    if c.objective == "caption":
        d = presets.DECODERS[c.decoder]
        L = c.caption_len - 1  # inputs / predictions
        seq = dec_visual + L
        fwd["decoder"] = (_linear(B * dec_visual, Dv, d.width) + trunk_forward_flops(d, seq, B)
                          + _linear(B * L, d.width, c.vocab_size))
    elif c.objective == "openvision":
        d = presets.DECODERS[c.decoder]
        t = presets.TEXT_ENCODERS[c.text_encoder]
        Q = c.caption_len
        seq = dec_visual + c.text_len + Q
        fwd["decoder"] = (_linear(B * dec_visual, Dv, d.width) + _linear(B * c.text_len, t.width, d.width)
                          + trunk_forward_flops(d, seq, B) + _linear(B * Q, d.width, c.vocab_size))
    forward = sum(fwd.values())
    return StepFlops(forward=forward, backward=2 * forward - bwd_discount, forward_by_tower=fwd)


def gflops_per_image(cfg: RunConfig) -> dict[str, float]:
    """Forward and forward+backward GFLOPs per image (global-batch-independent part at batch 1)."""
    import dataclasses

    one = dataclasses.replace(cfg, batch=1, world_size=1)
    s = step_flops(one)
    return {"fwd_gflops_per_image": s.forward / 1e9, "train_gflops_per_image": s.total / 1e9}
