"""Analytic parameter counts and training FLOPs, one formula per term. No torch import.

    python -c "from ovprof.config import RunConfig; from ovprof.objectives import step_flops; print(step_flops(RunConfig(encoder='vit-l14')))"

This module holds the objective-independent primitives (a tower's parameters,
a trunk's forward FLOPs, a linear layer, the `StepFlops` result); each
objective in ovprof/objectives/ sums them over the towers it runs.

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
backend, which exposes the attention matmuls) for every registered objective in
tests/test_objectives.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovprof import presets
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


def encoder_params(name: str, res: int, *, head: bool = False, cls_tokens: int = 0) -> int:
    """Patch embedding, position embedding, blocks; + a MAP head; + class tokens and their positions (Pixio)."""
    e = presets.ENCODERS[name]
    D, P = e.tower.width, e.patch
    n = (res // P) ** 2
    p = 3 * P * P * D + D + n * D + trunk_params(e.tower) + 2 * cls_tokens * D
    return p + (map_head_params(e.tower) if head else 0)


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
