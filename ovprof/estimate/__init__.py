"""Predict a run's memory per device, FLOPs and time without running it.

    ovprof estimate --objective caption --encoder vit-l14 --batch 256 --precision bf16 --zero 3 \\
        --world-size 32 --device-memory 32

Two methods share DeepSpeed's ZeRO model (ovprof/estimate/zero.py) and differ
in how the model's own step is costed: `fake` executes the real model on fake
tensors (exact for the model, no memory used), `analytic` uses the formulas of
ovprof/estimate/analytic.py (instant, explainable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ovprof.config import RunConfig, optimizer_impl

METHODS = ("fake", "analytic")
# How attention's memory is costed (fake.py, analytic.py), an approximation of the real kernels: "flash" (scores
# never materialized: CUDA's flash, memory-efficient and cuDNN kernels, and torch's fused CPU kernel), "math"
# (S x S scores kept), "native" (whatever this machine's torch dispatches to; analytic treats it as flash).
ATTENTION = ("flash", "native", "math")


def attention_model(cfg: RunConfig, auto: str = "flash") -> str:
    """The costing of `cfg.attention` (the run field): math -> math; flash, efficient, cudnn -> flash; auto ->
    `auto`, the kernel torch picks on the target: "flash" for a CUDA device, "native" for this machine's CPU."""
    return {"auto": auto, "math": "math"}.get(cfg.attention, "flash")


@dataclass(frozen=True)
class Estimate:
    method: str
    attention: str  # the costing: flash (no scores kept) | native (this machine's kernels) | math (scores kept)
    peak_bytes: int
    peak_phase: str
    parameters_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    inputs_bytes: int
    bucket_bytes: int
    activations_bytes: int
    logits_bytes: int | None
    forward_bytes: int
    backward_bytes: int
    optimizer_bytes: int
    flops_per_step: int  # model FLOPs of one optimizer step (grad_accum micro-steps) per rank
    optimizer_impl: str  # torch AdamW's implementation the optimizer term models (config.optimizer_impl)
    optimizer_state_dtype: str  # fp32 | bf16 (first moment in bf16)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_step(cfg: RunConfig, method: str, attention: str):
    if method == "fake":
        from ovprof.estimate.fake import model_step as fake_step

        return fake_step(cfg, attention)
    from ovprof.estimate.analytic import model_step as analytic_step

    return analytic_step(cfg, attention)


def estimate(cfg: RunConfig, method: str = "fake", attention: str = "flash") -> Estimate:
    """`attention`: how the run field attention = auto is costed (flash: a CUDA target; native: this machine's
    kernels); any other value of the field decides for itself (`attention_model`)."""
    from ovprof.estimate.zero import zero_memory
    from ovprof.objectives import step_flops

    c = cfg.resolved()
    attention = attention_model(c, attention)
    step = model_step(c, method, attention)
    z = zero_memory(step, zero=c.zero, world_size=c.world_size, precision=c.precision, bucket_elems=c.bucket_elems,
                    optimizer_impl=optimizer_impl(c), optimizer_state_dtype=c.optimizer_state_dtype, grad_accum=c.grad_accum)
    return Estimate(
        method=method, attention=attention, peak_bytes=z.peak_bytes, peak_phase=z.peak_phase,
        parameters_bytes=z.parameters_bytes, gradients_bytes=z.gradients_bytes,
        optimizer_state_bytes=z.optimizer_state_bytes, inputs_bytes=z.inputs_bytes, bucket_bytes=z.bucket_bytes,
        activations_bytes=step.activation_bytes, logits_bytes=step.logits_bytes if method == "analytic" else None,
        forward_bytes=z.forward_bytes, backward_bytes=z.backward_bytes, optimizer_bytes=z.optimizer_bytes,
        flops_per_step=step_flops(c).total * c.grad_accum, optimizer_impl=optimizer_impl(c),
        optimizer_state_dtype=c.optimizer_state_dtype,
    )


def max_batch(cfg: RunConfig, device_bytes: int, method: str = "analytic", attention: str = "flash",
              limit: int = 1 << 20) -> tuple[int, int]:
    """Largest micro-batch whose estimated peak fits device_bytes: (batch, evaluations). 0 if batch 1 does not fit."""
    evals = 0

    def fits(b: int) -> bool:
        nonlocal evals
        evals += 1
        return estimate(dataclasses.replace(cfg, batch=b), method, attention).peak_bytes <= device_bytes

    if not fits(1):
        return 0, evals
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo, evals
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, evals
