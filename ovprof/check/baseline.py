"""The baseline file: the points a CI sweep measured, the gated figures, and where they came from.

    ovprof check --update-baseline --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl

It is committed and reviewed, so it is small and deterministic: sorted keys,
indent 2, points ordered by config, only the gated metrics per point (plus the
median step time, for reference), and `created_at` taken from the newest record
it was built from rather than the clock. Rebuilding from the same store gives
the same bytes.

    {"kind": "baseline", "schema_version": 1, "created_at": "...", "gated_metrics": ["peak_tracked_bytes"],
     "env": {"torch": "2.13.0+cpu", "deepspeed": "0.19.8", "ovprof_version": "0.1.0", "git_sha": "...", ...},
     "points": [{"run_id": "...", "config": {...resolved...}, "status": "ok",
                 "metrics": {"peak_tracked_bytes": 5709556, "step_time_ms_median": 41.2}}, ...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ovprof.check.compare import (MEMORY_METRICS, TIME_METRIC, default_metric, is_number, latest_per_point,
                                  normalized)
from ovprof.errors import UsageError
from ovprof.results.record import DONE_STATUSES, RunRecord

KIND = "baseline"
SCHEMA_VERSION = 1  # of the baseline file (records have their own: ovprof/results/record.py)
# The environment a baseline records. All records behind one baseline must agree on every key:
# peak_tracked_bytes is deterministic only for identical software, the allocator's peak only on one GPU model.
ENV_KEYS = ("ovprof_version", "torch", "deepspeed", "cuda", "cuda_available", "gpu_name", "cpu_model", "git_sha",
            "git_dirty")


def _env_of(records: list[RunRecord]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for key in ENV_KEYS:
        values: list[Any] = []
        for r in records:
            v = r.env.get(key)
            if v not in values:
                values.append(v)
        if len(values) > 1:
            raise UsageError(f"the records disagree on env.{key} ({', '.join(map(str, values))}); a baseline "
                             "comes from one environment: rerun the sweep into a fresh store")
        env[key] = values[0] if values else None
    return env


def _sort_key(point: Mapping[str, Any]) -> tuple:
    # Field by field in RunConfig order; None sorts first and never meets a number.
    cfg = normalized(point["config"])
    return tuple((v is not None, str(v) if isinstance(v, str) else "", v if isinstance(v, (int, float)) else 0)
                 for v in cfg.values()) + (point["run_id"],)


def build_baseline(records: Iterable[Mapping[str, Any]], metrics: Iterable[str] = ()) -> dict[str, Any]:
    """A baseline from the latest record of each point. Refuses points that ended in error or timeout."""
    latest = list(latest_per_point(records).values())
    if not latest:
        raise UsageError("the results hold no run records: run the sweep first")
    bad = [r for r in latest if r.status not in DONE_STATUSES]
    if bad:
        listed = ", ".join(f"{r.run_id} ({r.status})" for r in bad[:5])
        raise UsageError(f"{len(bad)} point(s) did not finish ok or oom: {listed}; a baseline holds measured "
                         "points only: rerun them, or drop them from the sweep")
    env = _env_of(latest)
    gated = list(metrics) or [default_metric(env)]
    points = []
    for r in latest:
        m = r.metrics
        if r.status == "ok":
            for metric in gated:
                if not is_number(m.get(metric)):
                    reason = r.null_reasons.get(metric)
                    raise UsageError(f"point {r.run_id} has no {metric}"
                                     + (f" ({reason})" if reason else "") + "; choose another with --metric")
            kept = {k: m.get(k) for k in (*gated, TIME_METRIC)}
        else:
            kept = {}  # oom: the peak where it failed is not a figure to gate
        points.append({"run_id": r.run_id, "config": r.config, "status": r.status, "metrics": kept})
    points.sort(key=_sort_key)
    stamps = [r.finished_at for r in latest if isinstance(r.finished_at, str)]
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "created_at": max(stamps) if stamps else None,
        "env": env,
        "gated_metrics": gated,
        "points": points,
    }


def dump_baseline(baseline: Mapping[str, Any]) -> str:
    return json.dumps(baseline, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _bad(path: Path, what: str) -> UsageError:
    return UsageError(f"{path}: {what}")


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a baseline file; any problem is a one-line UsageError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such baseline file (write one with: ovprof check --update-baseline "
                         f"--baseline {path} --results STORE)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read the baseline ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise _bad(path, 'not an ovprof baseline (expected a JSON object with "kind": "baseline")')
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise _bad(path, f"schema_version {version!r} is not one this ovprof reads (1..{SCHEMA_VERSION})")
    gated = data.get("gated_metrics")
    if not isinstance(gated, list) or not gated or any(m not in MEMORY_METRICS for m in gated):
        raise _bad(path, f"gated_metrics must be a non-empty list of {', '.join(MEMORY_METRICS)}")
    if not isinstance(data.get("env", {}), dict):
        raise _bad(path, "env must be an object")
    points = data.get("points")
    if not isinstance(points, list):
        raise _bad(path, "points must be a list")
    for i, p in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(p, dict):
            raise _bad(path, f"{where} must be an object")
        if not isinstance(p.get("run_id"), str):
            raise _bad(path, f"{where}.run_id must be a string")
        if not isinstance(p.get("config"), dict):
            raise _bad(path, f"{where}.config must be an object")
        if p.get("status") not in DONE_STATUSES:
            raise _bad(path, f"{where}.status must be one of {', '.join(DONE_STATUSES)}, not {p.get('status')!r}")
        m = p.get("metrics")
        if not isinstance(m, dict) or any(v is not None and not is_number(v) for v in m.values()):
            raise _bad(path, f"{where}.metrics must map metric names to numbers")
    return data
