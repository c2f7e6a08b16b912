"""The objective registry: one module per objective, and the functions every caller dispatches through.

    ovprof models --objectives
    python -c "from ovprof import objectives; print(objectives.names(), objectives.get('caption').label)"

Each module (caption.py, clip.py, openvision.py, mae.py, pixio.py) owns everything that differs
between objectives: its label and flags, its model config and build, its
synthetic batch, its analytic parameters, FLOPs and activation bytes, and the
settings it refuses, the RunConfig fields it alone reads and what its "auto" values
resolve to. It registers one `Objective` (ovprof/objectives/_common.py).
Callers never compare objective names; they ask the registry:

    build_model(cfg)             -> torch module, forward(**make_batch(cfg, ...)) = scalar loss
    make_batch(cfg, device, rank=0)
    model_params(cfg)            -> parameters per tower (analytic), == tower_params(build_model(cfg))
    step_flops(cfg)              -> StepFlops of one step on one rank (analytic)
    gflops_per_image(cfg)        -> forward and forward+backward GFLOPs per image
    activation_terms(cfg, attention) -> ActivationTerms for ovprof/estimate/analytic.py

An unknown name is a ConfigError naming the value, the known names and the
nearest one. Importing this package does not import torch (config.py imports
it); `build_model` and `make_batch` do.

To add an objective: write ovprof/objectives/<name>.py after the existing
ones, add its OBJECTIVE below; tests/test_objectives.py sweeps the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any

from ovprof.errors import ConfigError
from ovprof.measure.activations import ActivationTerms
from ovprof.measure.flops import StepFlops
from ovprof.objectives import caption, clip, mae, openvision, pixio
from ovprof.objectives._common import FAMILIES, Objective

if TYPE_CHECKING:
    from ovprof.config import RunConfig

REGISTRY: dict[str, Objective] = {o.name: o for o in (caption.OBJECTIVE, clip.OBJECTIVE, openvision.OBJECTIVE,
                                                      mae.OBJECTIVE, pixio.OBJECTIVE)}

__all__ = ["REGISTRY", "FAMILIES", "Objective", "names", "get", "build_model", "make_batch", "model_params",
           "step_flops", "gflops_per_image", "activation_terms", "tower_params", "describe", "owned_fields"]


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Objective:
    """The registered objective called `name`; a ConfigError (key 'objective') for anything else."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from a sweep file
        pass
    near = difflib.get_close_matches(str(name), names(), n=1)
    raise ConfigError(f"must be one of {', '.join(names())}", key="objective", value=name,
                      hint=f"did you mean {near[0]!r}?" if near else None)


def build_model(cfg: "RunConfig"):
    """The objective's model, built from its own model config (imports torch)."""
    o = get(cfg.objective)
    return o.build(o.model_config(cfg))


def make_batch(cfg: "RunConfig", device, rank: int = 0) -> dict:
    """Synthetic batch for `build_model(cfg)`: the keyword arguments of its forward (imports torch)."""
    return get(cfg.objective).make_batch(cfg, device, rank)


def model_params(cfg: "RunConfig") -> dict[str, int]:
    """Analytic parameters per tower: encoder, text_encoder, decoder, other, total."""
    return get(cfg.objective).params(cfg)


def step_flops(cfg: "RunConfig") -> StepFlops:
    """Analytic forward and backward FLOPs of one step on one rank (ovprof/measure/flops.py convention)."""
    return get(cfg.objective).step_flops(cfg)


def gflops_per_image(cfg: "RunConfig") -> dict[str, float]:
    """Forward and forward+backward GFLOPs per image (global-batch-independent part at batch 1)."""
    s = step_flops(dataclasses.replace(cfg, batch=1, world_size=1))
    return {"fwd_gflops_per_image": s.forward / 1e9, "train_gflops_per_image": s.total / 1e9}


def activation_terms(cfg: "RunConfig", attention: str = "flash") -> ActivationTerms:
    """Analytic bytes the model holds in one step, before the caption loss (ovprof/estimate/analytic.py)."""
    return get(cfg.objective).activation_terms(cfg, attention)


def tower_params(model: Any) -> dict[str, int]:
    """Parameter count per tower of a built model, by top-level name (numel; works on the meta device)."""
    counts = {"encoder": 0, "text_encoder": 0, "decoder": 0, "other": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        key = {"vision": "encoder", "text": "text_encoder", "decoder": "decoder"}.get(top, "other")
        counts[key] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def owned_fields() -> dict[str, list[str]]:
    """RunConfig fields some objectives own (`own_fields`) -> those objectives; the rest refuse a non-default."""
    out: dict[str, list[str]] = {}
    for o in REGISTRY.values():
        for f in o.own_fields:
            out.setdefault(f, []).append(o.name)
    return out


def describe() -> list[dict[str, Any]]:
    """One row per registered objective, for `ovprof models --objectives`."""
    return [{"name": o.name, "label": o.label, "family": o.family, "summary": o.summary, "towers": list(o.towers),
             "tower_presets": dict(o.tower_presets), "own_fields": list(o.own_fields),
             "savings_side": o.savings_side} for o in REGISTRY.values()]
