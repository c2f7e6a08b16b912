"""DeepSpeed's memory per rank by ZeRO stage: what is resident, and what each phase of a step adds.

    from ovprof.estimate.zero import zero_memory

Notation: P parameters, W ranks, pb bytes per parameter in the training dtype
(4 fp32, 2 bf16/fp16), G the reduce bucket in elements (DeepSpeed's default
5e8 unless `bucket_elems` is set), gb = pb bytes per bucketed gradient.

Resident between steps (derived from how ZeRO partitions, and checked term by
term against the tracker on DeepSpeed 0.19.8 with torch's AdamW; see
tests/test_estimate.py):
  ZeRO 0  parameters pb*P; Adam moments 8P; 16-bit adds fp32 master weights 4P
  ZeRO 1/2  parameters pb*P; master 4P/W and moments 8P/W (an fp32 master copy
          is kept even for fp32 training)
  ZeRO 3  parameters pb*P/W; master 4P/W; moments 8P/W; gradient partition
          pb*P/W; and the reduce bucket G*gb, allocated at initialization;
          with W > 1 forward and backward also hold the gathered parameters,
          pb * min(P, stage3_max_live_parameters)
Added during a step, over that:
  forward   the model's forward (activations, temporaries; FakeTensorMode or
            the analytic model)
  backward  ZeRO 0/3: the model's backward, but at least 2 x the gradients
            (the gradients and their flattened all-reduce copy coexist)
            ZeRO 1/2: the model's backward without parameter gradients (they
            are copied into the bucket as they appear), plus the bucket G*gb
            from the moment the first gradient lands (when DeepSpeed allocates it)
  optimizer ZeRO 0: gradients pb*P (+ fp32 copies 4P in 16-bit) + torch
            AdamW's foreach temporaries, 2 x the largest fp32 tensor it steps
            ZeRO 1-3: the fp32 gradient partition 4P/W + AdamW temporaries over
            the flat partition 2 x 4P/W
The peak is the resident state plus the largest phase.
"""

from __future__ import annotations

from dataclasses import dataclass

DEEPSPEED_DEFAULT_BUCKET_ELEMS = 500_000_000
DEEPSPEED_DEFAULT_MAX_LIVE_PARAMETERS = 1_000_000_000  # stage3_max_live_parameters


@dataclass(frozen=True)
class ModelStep:
    """What the model alone does in one step (from fake execution or the analytic model), in bytes."""

    forward_bytes: int
    backward_bytes: int
    backward_no_grad_bytes: int
    activation_bytes: int
    input_bytes: int
    param_count: int
    max_param_numel: int
    logits_bytes: int = 0  # the caption head's logits (part of activations), for the breakdown
    # backward_no_grad_bytes from the first parameter gradient on (None: not known, assume the whole backward)
    backward_no_grad_after_first_grad_bytes: int | None = None


@dataclass(frozen=True)
class ZeroMemory:
    parameters_bytes: int
    gradients_bytes: int  # resident gradient partition + bucket (ZeRO 3), else 0 between steps
    optimizer_state_bytes: int  # fp32 master weights + Adam moments
    inputs_bytes: int
    forward_bytes: int
    backward_bytes: int
    optimizer_bytes: int
    bucket_bytes: int

    @property
    def resident_bytes(self) -> int:
        return self.parameters_bytes + self.gradients_bytes + self.optimizer_state_bytes + self.inputs_bytes

    @property
    def peak_phase(self) -> str:
        phases = {"forward": self.forward_bytes, "backward": self.backward_bytes, "optimizer": self.optimizer_bytes}
        return max(phases, key=phases.get)

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + max(self.forward_bytes, self.backward_bytes, self.optimizer_bytes)


def zero_memory(step: ModelStep, *, zero: int, world_size: int, precision: str,
                bucket_elems: int | None) -> ZeroMemory:
    P, W = step.param_count, world_size
    pb = 4 if precision == "fp32" else 2
    G = DEEPSPEED_DEFAULT_BUCKET_ELEMS if bucket_elems is None else bucket_elems
    bucket = G * pb
    grads_full = pb * P
    forward = step.forward_bytes
    if zero == 0:
        params, grads_res = pb * P, 0
        opt = 8 * P + (4 * P if pb == 2 else 0)
        backward = max(step.backward_bytes, 2 * grads_full)
        optimizer = grads_full + (4 * P if pb == 2 else 0) + 2 * 4 * step.max_param_numel
        bucket_used = 0
    elif zero in (1, 2):
        params, grads_res = pb * P, 0
        opt = 12 * P // W
        after = step.backward_no_grad_after_first_grad_bytes
        backward = (bucket + step.backward_no_grad_bytes if after is None
                    else max(step.backward_no_grad_bytes, bucket + after))
        optimizer = 12 * P // W
        bucket_used = bucket
    else:
        params = pb * P // W
        grads_res = pb * P // W + bucket
        opt = 12 * P // W
        # With W > 1 the parameters gathered for compute stay live up to stage3_max_live_parameters
        # (measured at world size 2: exactly pb * P more than at world size 1).
        gathered = pb * min(P, DEEPSPEED_DEFAULT_MAX_LIVE_PARAMETERS) if W > 1 else 0
        forward = step.forward_bytes + gathered
        backward = max(step.backward_bytes, 2 * grads_full) + gathered
        optimizer = 12 * P // W
        bucket_used = bucket
    return ZeroMemory(parameters_bytes=params, gradients_bytes=grads_res, optimizer_state_bytes=opt,
                      inputs_bytes=step.input_bytes, forward_bytes=forward, backward_bytes=backward,
                      optimizer_bytes=optimizer, bucket_bytes=bucket_used)
