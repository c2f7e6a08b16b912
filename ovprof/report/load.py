"""Read JSONL stores into pandas: one row per run_id (its latest record), and the max-batch searches.

    from ovprof.report.load import load
    data = load(["results/quickstart.jsonl"])
    data.runs[["run_id", "variant", "status", "step_time_ms_median"]]

Reading goes through `ovprof.results.record.read_store`, which skips a torn or
malformed line with one warning instead of failing on it, and hands back typed
records whose configs are already normalised. A later record for a run_id
supersedes an earlier one (in the order the stores are given, then file order),
as `record.latest` decides, for run records and max-batch summaries alike.

Comparability. Two runs are comparable when they differ in the objective
variant alone: (objective, mask_ratio, mask_position). `setting_key` is the
canonical JSON of everything else that changes what is measured: every other
RunConfig field, the hardware (GPU name, else CPU model) and the software
(torch, DeepSpeed versions). Runs with equal `setting_key` form one group. A
record written before a field existed counts as having run with its default
(or, for a field that split an older one, the older one's value): the record
module's normaliser decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ovprof import metrics as M
from ovprof import objectives
from ovprof.config import FIELD_NAMES, ConfigError
from ovprof.results import record as R

# loss_impl is part of the caption-only variant: a fused-CE caption run is compared with the same (eager)
# OpenVision run as the eager caption run, in its own row ("caption-only + fused CE").
VARIANT_FIELDS = ("objective", "mask_ratio", "mask_position", "loss_impl")
SETTING_FIELDS = tuple(f for f in FIELD_NAMES if f not in VARIANT_FIELDS)
ENV_FIELDS = ("hardware", "torch", "deepspeed")

# Memory as each source sees it (STYLE habit 5), from the metric registry; the CUDA ones are null on CPU.
MEMORY_SOURCES = {key: m.name for key, m in M.report_sources().items()}
BREAKDOWN = ("parameters", "gradients", "optimizer_state", "activations", "temporaries", "inputs", "other")
STATUSES = ("ok", "oom", "error", "timeout")


@dataclass
class Data:
    """What the stores hold, ready for the tables."""

    runs: pd.DataFrame  # one row per run_id; see `_run_row` for the columns
    max_batch: pd.DataFrame  # one row per max-batch search
    stores: list[str] = field(default_factory=list)
    records_read: int = 0  # lines parsed, all kinds
    skipped_lines: int = 0  # torn, malformed or foreign lines (each warned about once)
    superseded: int = 0  # run records hidden by a later one with the same run_id
    warnings: list[str] = field(default_factory=list)  # one per skipped line: store, line, field


def side_of(objective: str, mask_ratio: float, loss_impl: str = "eager") -> str:
    """Which column of the savings table a run fills, as its objective declares (ovprof/objectives): the
    papers' OpenVision is unmasked with the eager loss, so is plain CLIP; caption-only fills its column in
    every variant. "" for none (a string: pandas keeps None as NaN)."""
    try:
        spec = objectives.get(objective)
    except ConfigError:  # an objective this version does not know: listed, never compared
        return ""
    if spec.savings_side is None:
        return ""
    if spec.savings_every_variant or (mask_ratio == 0 and loss_impl == "eager"):
        return spec.savings_side
    return ""


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


def config_value(config: dict, key: str) -> Any:
    """A field of a record's config; records come normalised (ovprof.results.record.normalize_config)."""
    return config[key] if key in config else R.normalize_config(config)[key]


def setting_of(config: dict, env: dict | None, *, without: Iterable[str] = ()) -> dict[str, Any]:
    """The fields that must match for two runs to be compared (all but the objective variant)."""
    skip = set(without)
    out = {k: config_value(config, k) for k in SETTING_FIELDS if k not in skip}
    env = env or {}
    out.update(hardware=hardware_of(env), torch=env.get("torch"), deepspeed=env.get("deepspeed"))
    return out


def key_of(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def load(paths: Iterable[str | Path]) -> Data:
    """Read the stores in order; a missing store is the caller's check (this reads it as empty)."""
    paths = [str(p) for p in paths]
    contents = R.read_stores(paths)
    latest_runs = R.latest(contents.runs)
    latest_mb = R.latest(contents.max_batches)
    env_by_run = {r.run_id: r.env for r in contents.runs if r.env}

    runs = pd.DataFrame([_run_row(r) for r in latest_runs.values()], columns=_RUN_COLUMNS)
    if len(runs):
        runs["step_times_ms"] = [r.metrics.get("step_times_ms") for r in latest_runs.values()]
    mb = pd.DataFrame([_max_batch_row(r, env_by_run) for r in latest_mb.values()], columns=_MB_COLUMNS)
    return Data(runs=runs, max_batch=mb, stores=paths, records_read=len(contents.records),
                skipped_lines=contents.skipped, superseded=len(contents.runs) - len(latest_runs),
                warnings=contents.warnings)


_RUN_COLUMNS = (
    ["run_id", "status", "variant", "side", *VARIANT_FIELDS, *SETTING_FIELDS, *ENV_FIELDS,
     "setting_key", "gpu_memory_bytes", "gpu_count", "cpu_count", "error_type", "error_message",
     "step_time_ms_median", "step_time_ms_p10", "step_time_ms_p90", "samples_per_s", "time_per_sample_ms",
     *MEMORY_SOURCES.values(), *(f"bd_{k}" for k in BREAKDOWN), "null_reasons", "sweep", "started_at", "config",
     "derived", "breakdown_time_ms", "breakdown_memory_bytes", "max_batch_search"]
)
_MB_COLUMNS = ["run_id", "status", "variant", "side", *VARIANT_FIELDS, "setting_key_nobatch", "config_key_nobatch",
               "max_batch", "first_oom_batch", "limit_reached", "trials", "error_message", "config"]


def _run_row(r: R.RunRecord) -> dict:
    cfg, env, m, err = r.config, r.env, r.metrics, r.error or {}
    bd = m.get("tracked_breakdown_bytes") or {}
    obj, ratio, pos, impl = cfg["objective"], float(cfg["mask_ratio"] or 0.0), cfg["mask_position"], cfg["loss_impl"]
    setting = setting_of(cfg, env)
    return {
        "run_id": r.run_id, "status": r.status,
        "variant": variant_label(obj, ratio, pos, impl), "side": side_of(obj, ratio, impl),
        "objective": obj, "mask_ratio": ratio, "mask_position": pos, "loss_impl": impl,
        **{k: cfg[k] for k in SETTING_FIELDS},
        "hardware": setting["hardware"], "torch": setting["torch"], "deepspeed": setting["deepspeed"],
        "setting_key": key_of(setting), "gpu_memory_bytes": env.get("gpu_memory_bytes"),
        # what the machine had (the plots' footer); the cores a CPU run could use, else all of them
        "gpu_count": env.get("gpu_count"), "cpu_count": env.get("cpu_affinity_count") or env.get("cpu_count"),
        "error_type": err.get("type"), "error_message": _first_line(err.get("message")),
        "step_time_ms_median": m.get("step_time_ms_median"), "step_time_ms_p10": m.get("step_time_ms_p10"),
        "step_time_ms_p90": m.get("step_time_ms_p90"), "samples_per_s": m.get("samples_per_s"),
        "time_per_sample_ms": _time_per_sample_ms(cfg, m),
        **{col: m.get(col) for col in MEMORY_SOURCES.values()},
        **{f"bd_{k}": (bd.get(k) if bd else None) for k in BREAKDOWN},
        "null_reasons": r.null_reasons, "sweep": r.sweep, "started_at": r.started_at, "config": cfg,
        "max_batch_search": r.max_batch_search,  # a search's trial: the run_id of that search
        "derived": r.derived,
        "breakdown_time_ms": m.get("breakdown_time_ms"), "breakdown_memory_bytes": m.get("breakdown_memory_bytes"),
    }


def _max_batch_row(r: R.MaxBatchRecord, env_by_run: dict[str, dict]) -> dict:
    cfg = r.config
    env = r.env
    if not env:  # take the hardware of its trials
        env = next((env_by_run[t.get("run_id")] for t in reversed(r.trials) if t.get("run_id") in env_by_run), None)
    obj, ratio, pos, impl = cfg["objective"], float(cfg["mask_ratio"] or 0.0), cfg["mask_position"], cfg["loss_impl"]
    setting = setting_of(cfg, env, without=("batch",))
    config_only = {k: v for k, v in setting.items() if k not in ENV_FIELDS}
    err = r.error or {}
    return {
        "run_id": r.run_id, "status": r.status, "variant": variant_label(obj, ratio, pos, impl),
        "side": side_of(obj, ratio, impl), "objective": obj, "mask_ratio": ratio, "mask_position": pos,
        "loss_impl": impl,
        # with no environment anywhere, match on the config alone
        "setting_key_nobatch": key_of(setting) if env else None,
        "config_key_nobatch": key_of(config_only),
        "max_batch": r.max_batch, "first_oom_batch": r.first_oom_batch,
        "limit_reached": r.limit_reached or (r.status == "ok" and r.first_oom_batch is None),
        "trials": r.trials, "error_message": _first_line(err.get("message")), "config": cfg,
    }


def _time_per_sample_ms(cfg: dict, m: dict) -> float | None:
    """The record's time_per_sample_ms; for a record from before it was recorded, its definition: the median
    step (one optimizer step) over batch x grad_accum x ranks samples."""
    if m.get("time_per_sample_ms") is not None:
        return m["time_per_sample_ms"]
    med = m.get("step_time_ms_median")
    if med is None:
        return None
    return med / (cfg["batch"] * cfg["grad_accum"] * cfg["world_size"])


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


# -- the flat frame: every field of a record a column (ovprof.load_records, ovprof export --to csv/parquet) --------


def pick(records: Iterable[R.R], *, latest: bool) -> list[R.R]:
    """The records in the order given; with `latest`, each run_id's last one only (as `record.latest` decides),
    at its own place. One kind at a time: a run record and a max-batch summary never share a run_id's slot."""
    records = list(records)
    if not latest:
        return records
    keep = {id(r) for r in R.latest(records).values()}
    return [r for r in records if id(r) in keep]


def flat_frame(records: Iterable[tuple[R.Record, str]]) -> pd.DataFrame:
    """One row per (record, store path), its fields flattened into columns: `config.<field>` (normalised),
    `metrics.<name>` (a per-step list stays a list, breakdowns become `metrics.<name>.<part>`), `derived.<name>`,
    `env.<key>`, `error.<key>`, the record's own fields (`run_id`, `status`, `kind`, `sweep`, timestamps...) and
    `store`. per_rank, ds_config and null_reasons are left out (the rank merge, the DeepSpeed config as used,
    and why a metric is null: the record itself has them)."""
    rows = []
    for r, store in records:
        d = r.to_json()
        d.pop("per_rank", None)
        d.pop("ds_config", None)
        d.pop("null_reasons", None)
        d["store"] = str(store)
        rows.append(d)
    frame = pd.json_normalize(rows, max_level=2, sep=".") if rows else pd.DataFrame(columns=["run_id", "status"])
    return frame.reset_index(drop=True)
