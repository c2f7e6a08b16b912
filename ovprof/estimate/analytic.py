"""Analytic memory of the model's own step: activations per tower, caption logits, gradients.

    from ovprof.config import RunConfig
    from ovprof.estimate.analytic import model_step
    model_step(RunConfig(encoder="vit-l14", batch=256, precision="bf16"), attention="flash")

Per token and block (pre-norm block of ovprof/models/layers.py, width D, MLP M,
H heads, b bytes per element of the training dtype), autograd keeps:
  LN1 output D, qkv 3D, attention output D (+ an fp32 logsumexp per head, 4H
  bytes, for flash-style kernels), its contiguous reshape D, the residual sum D
  (LN2's input), LN2 output D, fc1 output M, GELU output M, and the block's
  output D (the next block's input); plus two fp32 LayerNorm statistics per
  LayerNorm (16 bytes). Sum: b(9D + 2M) + 16 + 4H bytes.
  A math (non-fused) attention kernel (attention="math") also keeps scores and
  softmax: 2 H S b bytes per token for sequence length S. CUDA's flash and
  memory-efficient kernels never materialize them, and neither does PyTorch
  2.13's fused CPU kernel, even with the query decoder's boolean mask (fake
  execution shows it), so "flash" models both devices here.
  Activation checkpointing keeps only each block's input (b D) and recomputes
  one block at a time in backward (+ one block's activations).
Caption head with the eager loss: logits N V b, their fp32 upcast N V 4 (the
same tensor when b = 4) and log-softmax N V 4, for N predicted tokens. With
loss_impl chunked or triton only one chunk of logits exists at a time.
Backward adds, at its start, the fp32 gradient of the log-softmax and of the
logits (N V 4 + N V b), the gradients of every parameter (pb P) by its end.
Dropped from the count: embedding outputs consumed by the first block and
tensors below one block's size. tests/test_estimate.py states the agreement
with fake execution.
"""

from __future__ import annotations

from ovprof import presets
from ovprof.config import RunConfig
from ovprof.estimate.zero import ModelStep
from ovprof.measure.flops import model_params

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _block_bytes_per_token(t: presets.TowerSpec, b: int, seq: int, math_attention: bool) -> int:
    per = b * (9 * t.width + 2 * t.mlp) + 16 + 4 * t.heads
    if math_attention:
        per += 2 * t.heads * seq * b
    return per


def _tower_bytes(t: presets.TowerSpec, n_seq: int, seq: int, b: int, *, math_attention: bool,
                 checkpointing: bool) -> tuple[int, int]:
    """(kept for backward, transient peak of one block in backward) for n_seq sequences of length seq."""
    tokens = n_seq * seq
    block = tokens * _block_bytes_per_token(t, b, seq, math_attention)
    if checkpointing:
        return t.depth * tokens * b * t.width + tokens * b * t.width, block
    return t.depth * block + tokens * b * t.width, 0  # + final LayerNorm output


def _max_param_numel(c: RunConfig) -> int:
    e = presets.ENCODERS[c.encoder].tower
    sizes = [e.width * e.mlp, c.num_patches * e.width]
    if c.uses_text_encoder:
        t = presets.TEXT_ENCODERS[c.text_encoder]
        sizes += [c.vocab_size * t.width, t.width * t.mlp]
    if c.uses_decoder:
        d = presets.DECODERS[c.decoder]
        sizes += [c.vocab_size * d.width, d.width * d.mlp]
    return max(sizes)


def model_step(cfg: RunConfig, attention: str = "flash") -> ModelStep:
    c = cfg.resolved()
    b = BYTES[c.precision]
    B = c.batch
    e = presets.ENCODERS[c.encoder]
    N = c.num_patches
    K = c.kept_tokens if c.mask_ratio > 0 else N
    enc_seq = K if c.mask_position == "encoder" else N
    P = model_params(c)["total"]
    ck = c.checkpointing_text
    kept = 0
    transient = 0

    # vision tower: the position-embedded patches (the first block's input), then the blocks
    kept += B * N * e.tower.width * b
    k, t = _tower_bytes(e.tower, B, enc_seq, b, math_attention=False, checkpointing=c.checkpointing)
    kept, transient = kept + k, max(transient, t)

    logits_tokens = 0
    if c.uses_text_encoder:
        tt = presets.TEXT_ENCODERS[c.text_encoder]
        n_text = 2 * B if c.objective == "openvision" else B
        k, t = _tower_bytes(tt, n_text, c.text_len, b, math_attention=False, checkpointing=ck)
        kept, transient = kept + k + n_text * c.text_len * tt.width * b, max(transient, t)
    if c.objective == "caption":
        d = presets.DECODERS[c.decoder]
        L = c.caption_len - 1
        seq = K + L
        k, t = _tower_bytes(d, B, seq, b, math_attention=False, checkpointing=ck)
        kept, transient = kept + k + B * seq * d.width * b, max(transient, t)  # + the [visual; text] input
        if c.mask_ratio > 0 and c.mask_position == "decoder":
            kept += B * K * e.tower.width * b  # the gathered visual tokens, kept by the projection
        logits_tokens = B * L
    elif c.objective == "openvision":
        d = presets.DECODERS[c.decoder]
        seq = K + c.text_len + c.caption_len
        k, t = _tower_bytes(d, B, seq, b, math_attention=attention == "math", checkpointing=ck)
        kept, transient = kept + k + B * seq * d.width * b, max(transient, t)
        if c.mask_ratio > 0 and c.mask_position == "decoder":
            kept += B * K * e.tower.width * b
        logits_tokens = B * c.caption_len
    V = c.vocab_size
    if c.loss_impl == "eager":
        # Kept for backward: log-softmax's fp32 output (4 N V); the logits (b) and their fp32 upcast are
        # alive only while it is computed. Backward starts with that output, its gradient and the
        # gradient of its input: 12 N V (what the loss alone measures, fp32 and bf16).
        logits = 4 * logits_tokens * V
        transient_fwd = (b + (4 if b != 4 else 0)) * logits_tokens * V
        logits_grad = 8 * logits_tokens * V
    else:
        # chunked / triton (ovprof/kernels/fused_ce.py): one fp32 logsumexp per row is kept. Chunked holds
        # one chunk of logits at a time (<= CHUNK_BYTES in fp32, plus its model-dtype matmul output in
        # 16-bit); Triton keeps its tiles on chip. Both backward passes accumulate the head weight's
        # (V x D) and the hidden states' (N x D) gradients in fp32; chunked also recomputes a chunk.
        from ovprof.kernels.fused_ce import CHUNK_BYTES

        chunk = min(logits_tokens * V * 4, CHUNK_BYTES) * (1 if b == 4 else 1.5)
        chunk = int(chunk) if c.loss_impl == "chunked" else 0
        d_width = presets.DECODERS[c.decoder].width if c.uses_decoder else 0
        logits, transient_fwd = logits_tokens * 4, chunk
        logits_grad = chunk + (V + logits_tokens) * d_width * 4
    inputs = B * 3 * c.res * c.res * b
    inputs += B * 8 * ((c.caption_len if c.objective != "clip" else 0)
                       + (c.text_len if c.objective == "clip" else 0) + (2 * c.text_len if c.objective == "openvision" else 0))
    forward = kept + logits + transient_fwd
    backward_no_grad = kept + logits + max(logits_grad, transient)  # the forward's transients are gone
    # Backward frees activations as it produces gradients; its peak is at its start (activations + the
    # loss's gradients) unless the gradients alone are larger.
    return ModelStep(
        forward_bytes=forward,
        backward_bytes=max(backward_no_grad, b * P + logits_grad),
        backward_no_grad_bytes=backward_no_grad,
        # the head's gradient lands right after the loss's backward: from then on its temporaries are gone
        backward_no_grad_after_first_grad_bytes=kept + logits + transient,
        activation_bytes=forward,
        input_bytes=inputs,
        param_count=P,
        max_param_numel=_max_param_numel(c),
        logits_bytes=logits,
    )
