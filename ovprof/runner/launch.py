"""Run one point and keep its record: an executor runs the job, the record module judges it, the store keeps it.

    from ovprof.config import RunConfig, ExecOptions
    from ovprof.runner.launch import run_point
    record = run_point(RunConfig(zero=2), ExecOptions(store="results/runs.jsonl"))
    record.status, record.metrics["peak_tracked_bytes"]

World size 1 runs the worker directly with the rendezvous variables set; world
size > 1 goes through torchrun (default) or DeepSpeed's launcher
(ovprof/runner/executor.py). A worker that dies before writing its result
(killed, segfault, timeout) still yields a record: status error or timeout,
exit code or signal, and the tail of its log. Every record reaches the store
here, in the parent, through `record.append`.
"""

from __future__ import annotations

from ovprof.config import ExecOptions, RunConfig
from ovprof.results import record as R
from ovprof.runner.executor import Executor, JobResult, LocalExecutor, make_job


def record_of(result: JobResult, *, sweep: str | None = None, max_batch_search: str | None = None) -> R.RunRecord:
    job = result.job
    return R.build_run_record(job.config, job.ds_config, result.ranks, exit_code=result.exit_code,
                              timed_out=result.timed_out, timeout_s=job.opts.timeout_s, log_path=job.log_path,
                              started_at=result.started_at, finished_at=result.finished_at,
                              wall_time_s=result.wall_time_s, sweep=sweep, max_batch_search=max_batch_search)


def run_point(cfg: RunConfig, opts: ExecOptions | None = None, *, executor: Executor | None = None,
              sweep: str | None = None, max_batch_search: str | None = None, on_start=None,
              on_phase=None, slot=None, cancel=None) -> R.RunRecord:
    """Run one point through `executor` (default: local, serial), append its record to opts.store, return it.

    on_phase(text) hears each start-up or run phase the worker enters. A store that refuses the append raises
    record.RecordNotStored after keeping the record aside (it is appended on the next run)."""
    opts = opts or ExecOptions()
    executor = executor or LocalExecutor(on_start=on_start, on_phase=on_phase, slot=slot, cancel=cancel)
    (result,) = list(executor.run([make_job(cfg, opts)]))
    rec = record_of(result, sweep=sweep, max_batch_search=max_batch_search)
    R.append(opts.store, rec)
    return rec
