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
The pixel objectives' loss (ovprof/objectives/mae.py) keeps its fp32 difference
(N P 4 for N patches of P pixels) and starts backward with about three
tensors of that size (`loss_grad_bytes`), in the caption loss's place.
Dropped from the count: embedding outputs consumed by the first block and
tensors below one block's size. tests/test_estimate.py states the agreement
with fake execution.

Which towers run, over how many sequences of what length, is the objective's:
each module of ovprof/objectives/ returns its `ActivationTerms` (kept and
transient bytes of its towers, caption-head tokens and width, input bytes),
built from the per-tower primitives of ovprof/measure/activations.py. This
module adds the caption loss and the phases of the step.
"""

from __future__ import annotations

from ovprof import objectives
from ovprof.config import RunConfig
from ovprof.estimate.zero import ModelStep
from ovprof.measure.activations import BYTES

__all__ = ["BYTES", "model_step"]


def model_step(cfg: RunConfig, attention: str = "flash") -> ModelStep:
    c = cfg.resolved()
    b = BYTES[c.precision]
    P = objectives.model_params(c)["total"]
    # The towers' activations come from the objective (ovprof/objectives/<name>.py, with the per-tower bytes
    # of ovprof/measure/activations.py); the caption loss and the step's phases are costed here.
    terms = objectives.activation_terms(c, attention)
    kept, transient, logits_tokens = terms.kept_bytes, terms.transient_bytes, terms.logits_tokens
    V = c.vocab_size
    if c.loss_impl in ("eager", "compiled"):  # compiled: costed as eager (an upper bound; docs/levers.md)
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
        logits, transient_fwd = logits_tokens * 4, chunk
        logits_grad = chunk + (V + logits_tokens) * terms.head_width * 4
    logits_grad += terms.loss_grad_bytes  # another loss's gradients (pixel loss) take the same place
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
        input_bytes=terms.input_bytes,
        param_count=P,
        max_param_numel=terms.max_param_numel,
        logits_bytes=logits,
    )
