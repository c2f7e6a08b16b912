"""The Python API: run records as a pandas DataFrame.

    import ovprof
    runs = ovprof.load_records("results/quickstart.jsonl")
    runs[["run_id", "status", "config.objective", "metrics.peak_tracked_bytes"]]

One row per record, its fields flattened into columns: `config.<field>` (the
normalised config: every current field, old records included),
`metrics.<name>` (scalars; the per-step list stays a list in
`metrics.step_times_ms`, breakdowns become `metrics.<name>.<part>`),
`derived.<name>`, `env.<key>`, `error.<key>`, plus `run_id`, `status`,
`sweep`, `started_at`, `finished_at`, `wall_time_s`, `log_path` and `store`.
A bad store line is skipped with one warning (ovprof/results/record.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def load_records(stores: str | Path | Iterable[str | Path], latest: bool = True, *, kind: str = "run"):
    """Read one or more JSONL stores into a DataFrame.

    latest: one row per run_id, its latest record (later lines and later stores win); False keeps every record
    in file order, superseded ones included. kind: "run" (run records) or "max_batch" (search summaries)."""
    from ovprof.report.load import flat_frame, pick
    from ovprof.results import record as R

    if kind not in ("run", "max_batch"):
        raise ValueError(f"kind must be 'run' or 'max_batch', not {kind!r}")
    paths = [stores] if isinstance(stores, (str, Path)) else list(stores)
    store_of, records = {}, []
    for p in paths:
        contents = R.read_store(p)
        for r in contents.runs if kind == "run" else contents.max_batches:
            store_of[id(r)] = str(p)
            records.append(r)
    return flat_frame((r, store_of[id(r)]) for r in pick(records, latest=latest))
