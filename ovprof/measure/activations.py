"""Analytic activation bytes of one transformer tower, the primitives of the analytic estimate. No torch import.

    python -c "from ovprof.presets import ENCODERS; from ovprof.measure.activations import tower_bytes; print(tower_bytes(ENCODERS['vit-l14'].tower, 256, 256, 2, math_attention=False, checkpointing=True))"

The per-token accounting (what autograd keeps in one pre-norm block of
ovprof/models/layers.py) is derived in ovprof/estimate/analytic.py's docstring;
each objective (ovprof/objectives/) sums these terms over the towers it runs
and reports them as `ActivationTerms`, which the estimate turns into a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovprof.presets import TowerSpec

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per element of the training dtype
TOKEN_BYTES = 8  # token ids are int64


def block_bytes_per_token(t: TowerSpec, b: int, seq: int, math_attention: bool) -> int:
    per = b * (9 * t.width + 2 * t.mlp) + 16 + 4 * t.heads
    if math_attention:
        per += 2 * t.heads * seq * b  # scores and softmax, (H, S) per token
    return per


def tower_bytes(t: TowerSpec, n_seq: int, seq: int, b: int, *, math_attention: bool,
                checkpointing: bool) -> tuple[int, int]:
    """(kept for backward, transient peak of one block in backward) for n_seq sequences of length seq."""
    tokens = n_seq * seq
    block = tokens * block_bytes_per_token(t, b, seq, math_attention)
    if checkpointing:
        return t.depth * tokens * b * t.width + tokens * b * t.width, block
    return t.depth * block + tokens * b * t.width, 0  # + final LayerNorm output


@dataclass(frozen=True)
class ActivationTerms:
    """What an objective's model holds in one step, before the caption loss: the estimate adds the loss and ZeRO."""

    kept_bytes: int  # activations autograd keeps from forward until their backward, all towers
    transient_bytes: int  # largest extra of one checkpointed block recomputed in backward (0 without checkpointing)
    logits_tokens: int  # tokens the caption head predicts per micro-batch (0: no caption head)
    head_width: int  # width of the hidden states fed to the caption head (0: no caption head)
    input_bytes: int  # the micro-batch: images in the training dtype + int64 token ids
    max_param_numel: int  # the largest single parameter (ZeRO-3 gathers at least this much)
    # gradients a loss other than the caption head's holds at the start of backward, before the first
    # parameter gradient lands (the pixel loss: its fp32 elementwise gradients); 0 for none
    loss_grad_bytes: int = 0
