"""The DeepSpeed config a run uses: the user's base, with the point's own fields over it.

    python -c "from ovprof.config import RunConfig; from ovprof.runner.deepspeed_config import build; print(build(RunConfig(zero=2)))"
    ovprof run --ds-config base.json --dry-run      # the merged config, nothing run

Precedence (docs/sweeps.md). A base DeepSpeed config (`--ds-config FILE`, or
`ds_config_base` in a sweep) sets the point's fields it speaks for when the
command line or the sweep does not: `zero_optimization.stage` -> zero,
`bf16`/`fp16.enabled` -> precision, `train_micro_batch_size_per_gpu` -> batch,
`zero_optimization.reduce_bucket_size` -> bucket_elems,
`gradient_accumulation_steps` -> grad_accum (`fields_from_base`). So
a base with stage 3 and bf16 runs, and is recorded, as zero 3 and bf16. A
field given on the command line or in the sweep that contradicts the base is an
error naming both (`ovprof run --ds-override` makes it a warning, and the given
value wins). Everything else in the base is kept as written: its optimizer
(ovprof's default is used only when the base has none), offload blocks, comms
options. `train_batch_size` follows from micro-batch x accumulation x ranks.

The default optimizer is torch's AdamW (`torch_adam`), the same on CPU and CUDA
and needing no compiled DeepSpeed op; its hyperparameters follow OpenVision 2
(betas 0.9/0.95, weight decay 0.2). Its
implementation is explicit (`foreach`, and `fused` for optimizer_impl fused,
from `config.optimizer_impl`): left at None, torch would pick foreach on CUDA
only, and the step's memory would differ. With optimizer_state_dtype bf16 the
config has no optimizer block: the worker hands DeepSpeed ovprof's
AdamWBf16Moment (ovprof/kernels/adamw.py) with the same hyperparameters
(`ADAMW_PARAMS`), and DeepSpeed wraps it as it wraps its own (at ZeRO 1-3 with
`zero_allow_untested_optimizer`, which DeepSpeed asks of any optimizer it has not listed).

Accumulation: `grad_accum` is DeepSpeed's gradient_accumulation_steps (a base
that sets gradient_accumulation_steps speaks for grad_accum, as for the fields
above); `train_batch_size` = batch x grad_accum x ranks.

Bucket sizes: at ZeRO 2/3 DeepSpeed allocates its reduce bucket in full
(default 5e8 elements), which dwarfs a small model. `bucket_elems` sets
reduce/allgather (and stage-3 prefetch) buckets; None keeps DeepSpeed's default
so that what is measured is what a default user gets.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ovprof.config import RunConfig, optimizer_impl

# AdamW's hyperparameters (OpenVision 2), for DeepSpeed's torch AdamW and for the worker's bf16-moment AdamW alike
ADAMW_PARAMS: dict[str, Any] = {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.2}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _get(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def fields_from_base(base: dict) -> dict[str, tuple[Any, str]]:
    """The RunConfig fields a DeepSpeed base speaks for: field -> (value, where in the base it says so)."""
    out: dict[str, tuple[Any, str]] = {}
    stage = _get(base, "zero_optimization.stage")
    if stage is not None:
        out["zero"] = (stage, "zero_optimization.stage")
    if _get(base, "bf16.enabled") is True:
        out["precision"] = ("bf16", "bf16.enabled")
    elif _get(base, "fp16.enabled") is True:
        out["precision"] = ("fp16", "fp16.enabled")
    elif _get(base, "bf16.enabled") is False or _get(base, "fp16.enabled") is False:
        out["precision"] = ("fp32", "bf16/fp16.enabled = false")
    micro = base.get("train_micro_batch_size_per_gpu")
    if micro is not None:
        out["batch"] = (micro, "train_micro_batch_size_per_gpu")
    accum = base.get("gradient_accumulation_steps")
    if accum is not None and accum != "auto":
        out["grad_accum"] = (accum, "gradient_accumulation_steps")
    bucket = _get(base, "zero_optimization.reduce_bucket_size")
    if bucket is not None:
        out["bucket_elems"] = (bucket, "zero_optimization.reduce_bucket_size")
    return out


def apply_base(given: dict[str, Any], *, source: str, override: bool = False,
               warn=None) -> dict[str, Any]:
    """`given` (the fields the command line or a sweep set, ds_config_base among them) with the fields the
    base speaks for filled in; a contradiction is a ConfigError naming both (a warning with override=True)."""
    from ovprof.config import ConfigError, coerce

    raw = given.get("ds_config_base")
    if not raw:
        return dict(given)
    base = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(base, dict):
        return dict(given)
    out = dict(given)
    for field, (value, where) in fields_from_base(base).items():
        value = coerce(field, value, f"{source}: ds_config_base {where}")
        if field not in given:
            out[field] = value
        elif given[field] != value and not (field == "batch" and given[field] == "max"):
            msg = (f"{field} = {given[field]!r} contradicts the DeepSpeed base config ({where} = {value!r})")
            if not override:
                raise ConfigError(msg + "; drop one of them", source=source, key=field, value=given[field],
                                  hint="ovprof run --ds-override lets the given value win")
            if warn is not None:
                warn(f"{msg}: the given value wins (--ds-override)")
    return out


def build(cfg: RunConfig) -> dict[str, Any]:
    c = cfg.resolved()
    base = json.loads(c.ds_config_base)
    zero: dict[str, Any] = {"stage": c.zero}
    if c.bucket_elems is not None:
        zero["reduce_bucket_size"] = c.bucket_elems
        zero["allgather_bucket_size"] = c.bucket_elems
        if c.zero == 3:
            zero["stage3_prefetch_bucket_size"] = c.bucket_elems
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": c.batch,
        "gradient_accumulation_steps": c.grad_accum,
        "train_batch_size": c.batch * c.grad_accum * c.world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": c.precision == "bf16"},
        "fp16": {"enabled": c.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    # the base's own optimizer, when it has one, is the user's choice; bf16 moments: the worker's client optimizer
    if "optimizer" not in base and c.optimizer_state_dtype == "fp32":
        params = {**ADAMW_PARAMS, "torch_adam": True, "foreach": optimizer_impl(c) == "foreach"}
        if optimizer_impl(c) == "fused":
            params["fused"] = True
        ours["optimizer"] = {"type": "AdamW", "params": params}
    elif "optimizer" not in base and c.zero > 0:
        # ZeRO wraps any torch optimizer, but DeepSpeed refuses one it has not listed unless told (the client
        # AdamWBf16Moment steps whatever tensors it is given: ZeRO 1/2 hand it the rank's flat fp32 partition)
        ours["zero_allow_untested_optimizer"] = True
    return deep_merge(base, ours)
