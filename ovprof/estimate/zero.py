"""DeepSpeed's memory per rank by ZeRO stage: what is resident, and what each phase of a step adds.

    from ovprof.estimate.zero import zero_memory

Notation: P parameters, W ranks, pb bytes per parameter in the training dtype
(4 fp32, 2 bf16/fp16), G the reduce bucket in elements (DeepSpeed's default
5e8 unless `bucket_elems` is set), gb = pb bytes per bucketed gradient.

Resident between steps (derived from how ZeRO partitions, and checked term by
term against the tracker on DeepSpeed 0.19.8 with torch's AdamW; see
tests/test_estimate.py):
  ZeRO 0  parameters pb*P; Adam moments 8P (6P with optimizer_state_dtype bf16:
          the first moment in bf16); 16-bit adds fp32 master weights 4P
  ZeRO 1/2  parameters pb*P; master 4P/W and moments 8P/W (6P/W with bf16
          moments; an fp32 master copy is kept even for fp32 training)
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
            AdamW's temporaries over the per-parameter fp32 tensors it steps
            ZeRO 1-3: the fp32 gradient partition 4P/W + AdamW temporaries over
            the one flat fp32 partition of 4P/W bytes it steps
AdamW's temporaries depend on its implementation (`config.optimizer_impl`, "forloop" below;
torch >= 2.5, no amsgrad, not capturable), the same on CPU and CUDA:
  for-loop  one tensor at a time: sqrt(v) and sqrt(v) / bias correction
            coexist (8n for a tensor of n elements), while the previous
            tensor's `denom` (4n', a local rebound only afterwards) is still
            alive: the maximum of 8 n_j + 4 n_(j-1) over the stepping order
            (ovprof's default; ZeRO 0: exact from the parameters' order by fake
            execution, 8 x the largest parameter by the analytic method, short
            by 4 x the one stepped before it; ZeRO 1-3: 8P/W)
  foreach   sqrt(v) of every tensor at once, the rest in place: 4 bytes x all
            the elements stepped (ZeRO 0: 4P, ZeRO 1-3: 4P/W)
  fused     one kernel per parameter group, nothing allocated beyond the state: 0
  forloop with bf16 moments (ovprof/kernels/adamw.py): the fp32 first moment,
            sqrt(v) and its division coexist, everything freed per tensor:
            12 x the largest tensor stepped
Left to itself (foreach=None) torch runs for-loop on CPU and foreach on CUDA,
4P more at ZeRO 0 on the GPU; ovprof's DeepSpeed config always names one.
Accumulation (grad_accum > 1 micro-steps per optimizer step), ZeRO 0: from the
second micro-step on the accumulated gradients pb*P are live through forward and
backward (forward + pb*P; backward at least its non-gradient part + pb*P; measured
exactly at debug size). ZeRO 1/2: the fp32 gradient partition 4P/W accumulates
across micro-steps and is live through forward and backward (measured at ZeRO 2,
world size 1, debug size: +4P in both phases, the peak then in backward and
estimated 2.3% low, as backward at ZeRO 1/2 is without accumulation; ZeRO 1
assumed the same). ZeRO 3 with accumulation:
modelled as without it (an approximation).
The peak is the resident state plus the largest phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovprof.config import DEFAULT_OPTIMIZER_IMPL

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
    # every parameter's numel in the order the optimizer steps them (empty: not known, only the largest)
    param_numels: tuple[int, ...] = ()


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


def adamw_temporaries_bytes(impl: str, *, stepped_numel: int, largest_numel: int,
                            numels: tuple[int, ...] = (), state_dtype: str = "fp32") -> int:
    """What torch's AdamW step allocates over the fp32 tensors it steps, beyond its state (module docstring).
    `numels`: the tensors' sizes in stepping order, when known (else only the largest is)."""
    if state_dtype == "bf16":
        if impl != "forloop":
            raise ValueError(f"bf16 moments are implemented for forloop only, not {impl!r}")
        return 12 * (max(numels) if numels else largest_numel)
    if impl == "foreach":
        return 4 * stepped_numel
    if impl == "fused":
        return 0
    if impl == "forloop":
        if numels:
            return max(8 * n + 4 * prev for prev, n in zip((0, *numels), numels))
        return 8 * largest_numel
    raise ValueError(f"unknown AdamW implementation {impl!r}")


def zero_memory(step: ModelStep, *, zero: int, world_size: int, precision: str,
                bucket_elems: int | None, optimizer_impl: str = DEFAULT_OPTIMIZER_IMPL,
                optimizer_state_dtype: str = "fp32", grad_accum: int = 1) -> ZeroMemory:
    P, W = step.param_count, world_size
    pb = 4 if precision == "fp32" else 2
    G = DEEPSPEED_DEFAULT_BUCKET_ELEMS if bucket_elems is None else bucket_elems
    bucket = G * pb
    grads_full = pb * P
    forward = step.forward_bytes
    # ZeRO 1-3 step one flat fp32 partition per rank
    flat_temps = adamw_temporaries_bytes(optimizer_impl, stepped_numel=P // W, largest_numel=P // W,
                                         state_dtype=optimizer_state_dtype)
    moments = 6 if optimizer_state_dtype == "bf16" else 8  # bytes per element: m (4 or 2) + v (4)
    if zero == 0:
        params, grads_res = pb * P, 0
        opt = moments * P + (4 * P if pb == 2 else 0)
        backward = max(step.backward_bytes, 2 * grads_full)
        if grad_accum > 1:  # from the second micro-step on, the accumulated gradients are live throughout
            forward += grads_full
            backward = max(backward, step.backward_no_grad_bytes + grads_full)
        temps = adamw_temporaries_bytes(optimizer_impl, stepped_numel=P, largest_numel=step.max_param_numel,
                                        numels=step.param_numels, state_dtype=optimizer_state_dtype)
        optimizer = grads_full + (4 * P if pb == 2 else 0) + temps
        bucket_used = 0
    elif zero in (1, 2):
        params, grads_res = pb * P, 0
        opt = (4 + moments) * P // W
        after = step.backward_no_grad_after_first_grad_bytes
        backward = (bucket + step.backward_no_grad_bytes if after is None
                    else max(step.backward_no_grad_bytes, bucket + after))
        if grad_accum > 1:  # the fp32 gradient partition accumulates across micro-steps (measured at ZeRO 2)
            forward += 4 * P // W
            backward += 4 * P // W
        optimizer = 4 * P // W + flat_temps
        bucket_used = bucket
    else:
        params = pb * P // W
        grads_res = pb * P // W + bucket
        opt = (4 + moments) * P // W
        # With W > 1 the parameters gathered for compute stay live up to stage3_max_live_parameters
        # (measured at world size 2: exactly pb * P more than at world size 1).
        gathered = pb * min(P, DEEPSPEED_DEFAULT_MAX_LIVE_PARAMETERS) if W > 1 else 0
        forward = step.forward_bytes + gathered
        backward = max(step.backward_bytes, 2 * grads_full) + gathered
        optimizer = 4 * P // W + flat_temps
        bucket_used = bucket
    return ZeroMemory(parameters_bytes=params, gradients_bytes=grads_res, optimizer_state_bytes=opt,
                      inputs_bytes=step.input_bytes, forward_bytes=forward, backward_bytes=backward,
                      optimizer_bytes=optimizer, bucket_bytes=bucket_used)
