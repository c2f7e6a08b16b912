"""The DeepSpeed config a run uses, generated from its RunConfig and merged over the user's base.

    python -c "from ovprof.config import RunConfig; from ovprof.runner.deepspeed_config import build; print(build(RunConfig(zero=2)))"

Our keys win over the base (`--ds-config base.json`), merged dict by dict, so a
base can add e.g. `zero_optimization.overlap_comm` but cannot change the stage,
precision or micro-batch that define the point. The optimizer is torch's AdamW
(`torch_adam`), the same on CPU and CUDA and needing no compiled DeepSpeed op;
its hyperparameters follow OpenVision 2 (betas 0.9/0.95, weight decay 0.2). Its
implementation is explicit (`foreach`, from `config.optimizer_impl`): left at
None, torch would pick foreach on CUDA only, and the step's memory would differ.

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


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build(cfg: RunConfig) -> dict[str, Any]:
    c = cfg.resolved()
    zero: dict[str, Any] = {"stage": c.zero}
    if c.bucket_elems is not None:
        zero["reduce_bucket_size"] = c.bucket_elems
        zero["allgather_bucket_size"] = c.bucket_elems
        if c.zero == 3:
            zero["stage3_prefetch_bucket_size"] = c.bucket_elems
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": c.batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": c.batch * c.world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.2, "torch_adam": True,
                       "foreach": optimizer_impl(c) == "foreach"},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": c.precision == "bf16"},
        "fp16": {"enabled": c.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return deep_merge(json.loads(c.ds_config_base), ours)
