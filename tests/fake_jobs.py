"""A stand-in for ovprof.sweep.submit.point_job that records its point at once (no worker), for fast driver tests.

Submitted jobs import it by name, so the test puts tests/ on the jobs' PYTHONPATH.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def canned_record(cfg, started_at: str | None = None) -> dict:
    cfg = cfg.resolved()
    return {"schema_version": 1, "kind": "run", "run_id": cfg.run_id, "config": cfg.to_dict(), "status": "ok",
            "wall_time_s": 0.01, "log_path": f"logs/{cfg.run_id}.log", "env": {"host": "h"}, "error": None,
            "metrics": {"step_time_ms_median": 10.0, "peak_tracked_bytes": 1000 * cfg.batch},
            "started_at": started_at or _now(), "finished_at": _now()}


def point_job(plan, opts, sweep, since, root) -> dict:
    import submitit

    from ovprof.results import inbox, store

    job_id = submitit.JobEnvironment().job_id
    with open(Path(root) / "starts.jsonl", "a") as f:  # one line per job that ran a point
        f.write(json.dumps({"run_id": plan.run_id, "job_id": job_id}) + "\n")
    if (Path(root) / f"die-{plan.run_id}").exists():  # the test wants this job dead: no record, no result
        import os

        os._exit(3)
    store.append(inbox.job_file(opts.store, f"{plan.run_id}-{job_id}"), canned_record(plan.config))
    return {"outcome": "ran", "status": "ok", "run_id": plan.run_id}
