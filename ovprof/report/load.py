"""Read JSONL stores into pandas: one row per run_id (its latest record), and the max-batch searches.

    from ovprof.report.load import load
    data = load(["results/quickstart.jsonl"])
    data.runs[["run_id", "variant", "status", "step_time_ms_median"]]

Reading goes through `ovprof.results.store.read_with_stats`, which skips a torn
last line instead of failing on it; the surviving records are flattened with
`pandas.json_normalize`. A later record for a run_id supersedes an earlier one
(in the order the stores are given, then file order), as `store.latest_by_run_id`
decides for run records; max-batch summaries are deduplicated the same way.

Comparability. Two runs are comparable when they differ in the objective
variant alone: (objective, mask_ratio, mask_position). `setting_key` is the
canonical JSON of everything else that changes what is measured: every other
RunConfig field, the hardware (GPU name, else CPU model) and the software
(torch, DeepSpeed versions). Runs with equal `setting_key` form one group. A
record written before a field existed counts as having run with its default
(or, for a field that split an older one, the older one's value).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ovprof.config import FIELD_NAMES, RunConfig
from ovprof.results import store

# loss_impl is part of the caption-only variant: a fused-CE caption run is compared with the same (eager)
# OpenVision run as the eager caption run, in its own row ("caption-only + fused CE").
VARIANT_FIELDS = ("objective", "mask_ratio", "mask_position", "loss_impl")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
SETTING_FIELDS = tuple(f for f in FIELD_NAMES if f not in VARIANT_FIELDS)
ENV_FIELDS = ("hardware", "torch", "deepspeed")

# Memory as each source sees it (STYLE habit 5); the CUDA ones are absent on CPU.
MEMORY_SOURCES = {
    "tracked": "peak_tracked_bytes",
    "rss": "peak_rss_bytes",
    "allocated": "peak_allocated_bytes",
    "reserved": "peak_reserved_bytes",
    "nvml_process": "nvml_process_peak_bytes",
}
BREAKDOWN = ("parameters", "gradients", "optimizer_state", "activations", "temporaries", "inputs", "other")
STATUSES = ("ok", "oom", "error", "timeout")


@dataclass
class Data:
    """What the stores hold, ready for the tables."""

    runs: pd.DataFrame  # one row per run_id; see `_run_row` for the columns
    max_batch: pd.DataFrame  # one row per max-batch search
    stores: list[str] = field(default_factory=list)
    records_read: int = 0  # lines parsed, all kinds
    skipped_lines: int = 0  # torn or foreign lines
    superseded: int = 0  # run records hidden by a later one with the same run_id


def side_of(objective: str, mask_ratio: float, loss_impl: str = "eager") -> str:
    """Which column of the savings table a run fills: the papers' OpenVision is unmasked, so is plain CLIP;
    both with the eager loss (a fused-CE OpenVision run has no savings column)."""
    if objective == "caption":
        return "caption"
    if mask_ratio == 0 and loss_impl == "eager":
        return objective  # "openvision" or "clip"
    return ""  # masked openvision / FLIP-style clip: no savings column (a string: pandas keeps None as NaN)


def variant_label(objective: str, mask_ratio: float, mask_position: str, loss_impl: str = "eager") -> str:
    fused = "" if loss_impl == "eager" else f" + fused CE ({loss_impl})"
    if not mask_ratio:
        return f"{objective} no masking{fused}"
    return f"{objective} mask {mask_ratio:g} ({mask_position}){fused}"


def hardware_of(env: dict | None) -> str:
    env = env or {}
    if env.get("gpu_name"):
        return str(env["gpu_name"])
    if env.get("cpu_model"):
        return f"{env['cpu_model']} (CPU)"
    return "unknown hardware"


# A field added to RunConfig after a record was written: the record ran with the behaviour the field's value
# names here (the default, unless listed). `checkpointing` meant every block until `checkpointing_text` split it.
_LEGACY = {"checkpointing_text": lambda cfg: bool(cfg.get("checkpointing"))}


def config_value(config: dict, key: str) -> Any:
    if key in config:
        return config[key]
    return _LEGACY[key](config) if key in _LEGACY else _DEFAULTS.get(key)


def setting_of(config: dict, env: dict | None, *, without: Iterable[str] = ()) -> dict[str, Any]:
    """The fields that must match for two runs to be compared (all but the objective variant)."""
    skip = set(without)
    out = {k: config_value(config, k) for k in SETTING_FIELDS if k not in skip}
    env = env or {}
    out.update(hardware=hardware_of(env), torch=env.get("torch"), deepspeed=env.get("deepspeed"))
    return out


def key_of(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def _latest(records: Iterable[dict], kind: str) -> tuple[dict[str, dict], int]:
    latest: dict[str, dict] = {}
    seen = 0
    for r in records:
        if r.get("kind", "run") == kind and isinstance(r.get("run_id"), str):
            seen += 1
            latest[r["run_id"]] = r
    return latest, seen - len(latest)


def load(paths: Iterable[str | Path]) -> Data:
    """Read the stores in order; a missing store is the caller's check (this reads it as empty)."""
    paths = [str(p) for p in paths]
    records: list[dict] = []
    skipped = 0
    for p in paths:
        recs, bad = store.read_with_stats(p)
        records += recs
        skipped += bad
    latest_runs = store.latest_by_run_id(records)
    _, superseded = _latest(records, "run")
    latest_mb, _ = _latest(records, "max_batch")
    env_by_run = {r["run_id"]: r.get("env") for r in records if r.get("kind", "run") == "run" and r.get("env")}

    runs = pd.DataFrame([_run_row(r) for r in latest_runs.values()], columns=_RUN_COLUMNS)
    flat = pd.json_normalize(list(latest_runs.values()), max_level=1) if latest_runs else pd.DataFrame()
    if len(runs):
        # json_normalize flattens metrics.* one level; keep the raw step times for the plots
        runs["step_times_ms"] = flat.get("metrics.step_times_ms", pd.Series([None] * len(runs))).tolist()
    mb = pd.DataFrame([_max_batch_row(r, env_by_run) for r in latest_mb.values()], columns=_MB_COLUMNS)
    return Data(runs=runs, max_batch=mb, stores=paths, records_read=len(records), skipped_lines=skipped,
                superseded=superseded)


_RUN_COLUMNS = (
    ["run_id", "status", "variant", "side", *VARIANT_FIELDS, *SETTING_FIELDS, *ENV_FIELDS,
     "setting_key", "gpu_memory_bytes", "error_type", "error_message",
     "step_time_ms_median", "step_time_ms_p10", "step_time_ms_p90", "samples_per_s",
     *MEMORY_SOURCES.values(), *(f"bd_{k}" for k in BREAKDOWN), "null_reasons", "sweep", "started_at", "config"]
)
_MB_COLUMNS = ["run_id", "status", "variant", "side", *VARIANT_FIELDS, "setting_key_nobatch", "config_key_nobatch",
               "max_batch", "first_oom_batch", "limit_reached", "trials", "error_message"]


def _run_row(r: dict) -> dict:
    cfg = r.get("config") or {}
    env = r.get("env") or {}
    m = r.get("metrics") or {}
    err = r.get("error") or {}
    bd = m.get("tracked_breakdown_bytes") or {}
    obj, ratio, pos = cfg.get("objective"), float(cfg.get("mask_ratio") or 0.0), cfg.get("mask_position", "decoder")
    impl = cfg.get("loss_impl", "eager")
    setting = setting_of(cfg, env)
    row = {
        "run_id": r["run_id"], "status": r.get("status", "error"),
        "variant": variant_label(obj, ratio, pos, impl), "side": side_of(obj, ratio, impl),
        "objective": obj, "mask_ratio": ratio, "mask_position": pos, "loss_impl": impl,
        **{k: config_value(cfg, k) for k in SETTING_FIELDS},
        "hardware": setting["hardware"], "torch": setting["torch"], "deepspeed": setting["deepspeed"],
        "setting_key": key_of(setting), "gpu_memory_bytes": env.get("gpu_memory_bytes"),
        "error_type": err.get("type"), "error_message": _first_line(err.get("message")),
        "step_time_ms_median": m.get("step_time_ms_median"), "step_time_ms_p10": m.get("step_time_ms_p10"),
        "step_time_ms_p90": m.get("step_time_ms_p90"), "samples_per_s": m.get("samples_per_s"),
        **{col: m.get(col) for col in MEMORY_SOURCES.values()},
        **{f"bd_{k}": (bd.get(k) if bd else None) for k in BREAKDOWN},
        "null_reasons": r.get("null_reasons") or {}, "sweep": r.get("sweep"), "started_at": r.get("started_at"),
        "config": cfg,
    }
    return row


def _max_batch_row(r: dict, env_by_run: dict[str, dict]) -> dict:
    cfg = r.get("config") or {}
    env = r.get("env")
    if not env:  # take the hardware of its trials
        env = next((env_by_run[t.get("run_id")] for t in reversed(r.get("trials") or [])
                    if t.get("run_id") in env_by_run), None)
    obj, ratio, pos = cfg.get("objective"), float(cfg.get("mask_ratio") or 0.0), cfg.get("mask_position", "decoder")
    impl = cfg.get("loss_impl", "eager")
    setting = setting_of(cfg, env, without=("batch",))
    config_only = {k: v for k, v in setting.items() if k not in ENV_FIELDS}
    err = r.get("error") or {}
    return {
        "run_id": r["run_id"], "status": r.get("status"), "variant": variant_label(obj, ratio, pos, impl),
        "side": side_of(obj, ratio, impl), "objective": obj, "mask_ratio": ratio, "mask_position": pos,
        "loss_impl": impl,
        # with no environment anywhere, match on the config alone
        "setting_key_nobatch": key_of(setting) if env else None,
        "config_key_nobatch": key_of(config_only),
        "max_batch": r.get("max_batch"), "first_oom_batch": r.get("first_oom_batch"),
        "limit_reached": bool(r.get("limit_reached")) or (r.get("status") == "ok" and r.get("first_oom_batch") is None),
        "trials": r.get("trials") or [], "error_message": _first_line(err.get("message")),
    }


def _first_line(msg: Any, limit: int = 200) -> str | None:
    if not msg:
        return None
    line = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
    return line[:limit] or None


def nobatch_keys(row: pd.Series | dict) -> tuple[str, str]:
    """(setting key without batch, config-only key without batch) of a run row, to find its max-batch search."""
    cfg = row["config"]
    setting = {k: config_value(cfg, k) for k in SETTING_FIELDS if k != "batch"}
    with_env = {**setting, "hardware": row["hardware"], "torch": row["torch"], "deepspeed": row["deepspeed"]}
    return key_of(with_env), key_of(setting)
