"""A sweep's points as submitit jobs (Slurm, or submitit's local executor): submit, watch, re-attach.

    ovprof sweep run sweeps/ci-memory.toml --executor submitit --cluster local
    ovprof sweep run sweeps/paper-vit-l14-224.toml --executor submitit --cluster slurm --partition gpu \\
        --gpus-per-node 8 --time 60

Each job runs `point_job`, the path a local point takes: it claims the point in
the store (ovprof/results/claims.py), looks whether the store (or a record
another job left in its inbox) already has it done, and runs it through
`run_point` and the local executor, on the job's node, so an OOM, a crash or a
timeout is a row as it is locally. Its records go to a file of its own beside
the store (ovprof/results/inbox.py: NFS-safe, no shared appends); this process
appends them to the store as they come.

Re-attach. Every submission is written to a ledger beside the store
(`<store>.submitit.jsonl`: run_id, job id, folder, cluster). A rerun after this
process died first merges what the jobs left in the inbox, so a point whose
job finished meanwhile is simply done; a point whose ledger job is still
pending or running (Slurm: sacct, then squeue; local cluster: its controller
process) is waited for, not submitted again; a point whose job ended without a
record is submitted again. A job submitted just before a kill, before its
ledger line was written, is caught by the job itself: it finds the point
claimed or done and returns without running it.

Slurm gets one job array per group of points with the same node count
(`max_jobs` caps the tasks running at once: the array's %N); the local cluster
gets one job per point, `max_jobs` (default 1) at a time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ovprof.config import ExecOptions
from ovprof.errors import UsageError
from ovprof.results import claims, inbox, store
from ovprof.results import record as R
from ovprof.runner.cluster import (LOCAL_MAX_JOBS, ClusterOptions, JobRef, check_point, job_minutes, local_gpus,
                                   make_executor, node_group, parameters, require_submitit)
from ovprof.sweep import maxbatch
from ovprof.sweep.execute import (PointOutcome, StoreIndex, SweepOutcome, _Ctx, _max_batch_point, _max_detail, _now,
                                  _run_detail, interrupts_as_keyboard_interrupt)
from ovprof.sweep.progress import Reporter
from ovprof.sweep.spec import Expansion, RunPlan

# How often the sweep looks at its jobs (on Slurm, submitit throttles its sacct calls further); OVPROF_SUBMITIT_POLL_S
# sets both (tests with a fake Slurm use a short one).
POLL_S = {"local": 0.5, "slurm": 5.0}
ENDED_ROUNDS = 2  # polls a job may be over before its missing record counts as missing (a slow shared filesystem)
GO_WAIT_S = 600.0  # how long another node of a job waits for the first node's verdict


def ledger_path(store_path: str | Path) -> Path:
    return store.sidecar(store_path, ".submitit.jsonl")


def read_ledger(store_path: str | Path) -> dict[str, dict]:
    """run_id -> its latest submission: {"run_id", "job_id", "folder", "cluster", "submitted_at", "sweep"}."""
    out: dict[str, dict] = {}
    for entry in store.read(ledger_path(store_path)):
        if isinstance(entry.get("run_id"), str) and isinstance(entry.get("job_id"), str):
            out[entry["run_id"]] = entry
    return out


def check_plans(expansion: Expansion, copts: ClusterOptions, opts: ExecOptions) -> dict[str, int]:
    """run_id -> nodes, for every point; a UsageError before anything is submitted when one cannot run."""
    if opts.hostfile:
        raise UsageError("--hostfile is for the local executor (DeepSpeed's launcher over ssh); under submitit a "
                         "multi-node point gets its nodes from the scheduler")
    out = {}
    for plan in expansion.plans:
        n = check_point(plan.config.world_size, copts, plan.label())
        if n > 1 and plan.is_max_batch:
            raise UsageError(f"point {plan.label()}: a max-batch search on {n} nodes is not supported under "
                             "submitit (its trials run one after another inside one job); give it a batch")
        out[plan.run_id] = n
    return out


# -- inside the job ---------------------------------------------------------------------------------------


def _say(path: Path, verdict: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(verdict)
    os.replace(tmp, path)


def _wait_for(path: Path, limit_s: float) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            time.sleep(1.0)
    return "no verdict"


def point_job(plan: RunPlan, opts: ExecOptions, sweep: str, since: str | None, root: str) -> dict:
    """What a submitted job runs (on every node of it): one point, through the same path as a local point.

    The first node claims the point, skips it when it is done (a record started at or after `since`, when set:
    --rerun), and runs it with run_point; the other nodes of a multi-node point start their share of its ranks
    once the first says so. Returns {"outcome": "ran" | "done" | "held" | "node", ...}."""
    submitit = require_submitit()
    from ovprof.runner.executor import LocalExecutor, make_job
    from ovprof.runner.launch import run_point

    job_id = submitit.JobEnvironment().job_id
    os.environ["OVPROF_ZYGOTE"] = "0"  # one point per job: a warm zygote would pay the same imports once more
    store_path = opts.store
    job_opts = dataclasses.replace(opts, store=str(inbox.job_file(store_path, f"{plan.run_id}-{job_id}")),
                                   log_dir=opts.log_dir or str(Path(store_path).parent / "logs"))
    nodes = node_group(Path(root))
    go = Path(root) / f"go-{job_id}"
    if nodes is not None and nodes.node_rank != 0:
        verdict = _wait_for(go, GO_WAIT_S)
        if verdict == "run":  # the first node keeps the record; this node's log sits beside its log
            job = make_job(plan.config, job_opts)
            log = job.log_path.with_name(f"{job.log_path.stem}-node{nodes.node_rank}.log")
            LocalExecutor(nodes=nodes).run_one(dataclasses.replace(job, log_path=log))
        return {"outcome": "node", "node": nodes.node_rank, "verdict": verdict}
    with claims.claim(store_path, plan.run_id) as mine:
        if not mine:
            if nodes is not None:
                _say(go, "skip")
            return {"outcome": "held", "owner": claims.owner(store_path, plan.run_id)}
        index = StoreIndex(store_path)
        for rec in inbox.records(store_path):
            index.add(rec, fresh=False)
        rec = index.done_point(plan, rerun=False)
        if rec is not None and (since is None or (rec.started_at or "") >= since):
            if nodes is not None:
                _say(go, "skip")
            return {"outcome": "done", "status": rec.status}
        if nodes is not None:
            shutil.rmtree(nodes.result_dir, ignore_errors=True)  # a requeued job's first attempt left its files
            nodes.result_dir.mkdir(parents=True)
            _say(go, "run")
        if plan.is_max_batch:
            ctx = _Ctx(job_opts, index, since is not None, Reporter(1, live=False), sweep, threading.RLock())
            rec = _max_batch_point(plan, ctx)
        else:
            rec = run_point(plan.config, job_opts, sweep=sweep,
                            executor=LocalExecutor(nodes=nodes) if nodes is not None else None)
        if nodes is not None:  # the record holds what the rank files said
            shutil.rmtree(nodes.result_dir, ignore_errors=True)
            go.unlink(missing_ok=True)
        return {"outcome": "ran", "status": rec.status, "run_id": rec.run_id}


# -- the sweep that submits and watches -------------------------------------------------------------------


@dataclass
class _InFlight:
    plan: RunPlan
    ref: JobRef
    submitted: float  # monotonic
    started_at: str
    ended_rounds: int = 0  # polls since the job was first seen over without its record


def _final_record(index: StoreIndex, plan: RunPlan):
    """The record this sweep has seen arrive for the point (a run record, or a max-batch summary), or None."""
    if plan.run_id not in index.fresh:
        return None
    return index.max_summaries.get(plan.run_id) if plan.is_max_batch else index.latest.get(plan.run_id)


def _trials(plan: RunPlan) -> int:
    return maxbatch.trial_bound(plan.max_batch, None) if plan.is_max_batch else 1


def _claim_free(store_path: str, run_id: str) -> bool:
    with claims.claim(store_path, run_id) as mine:
        return mine


def _died_record(f: _InFlight, why: str, sweep: str, opts: ExecOptions) -> R.RunRecord:
    """The row of a job that ended without writing one (cancelled, node failure, killed by the scheduler)."""
    from ovprof.runner.deepspeed_config import build

    cfg = f.plan.config.resolved()
    rec = R.build_run_record(cfg, build(cfg), [], exit_code=None, timed_out=False, timeout_s=opts.timeout_s,
                             log_path=f.ref.stdout, started_at=f.started_at,
                             wall_time_s=time.monotonic() - f.submitted, sweep=sweep)
    error = dict(rec.error or {}, type="JobDied", message=why, job_id=f.ref.job_id)
    return dataclasses.replace(rec, error=error)


def run_sweep_submitit(expansion: Expansion, opts: ExecOptions, copts: ClusterOptions, *, rerun: bool = False,
                       reporter: Reporter | None = None) -> SweepOutcome:
    """Submit every point not yet done as a submitit job, re-attach to the jobs a previous run left, and wait."""
    require_submitit()
    nodes_of = check_plans(expansion, copts, opts)
    cluster = copts.resolved_cluster()
    folder = copts.folder(opts.store).resolve()
    spec = expansion.spec
    said: list[str] = list(R.recover_pending(opts.store))
    merger = inbox.Merger(opts.store)
    picked = merger.merge()  # what jobs recorded while no sweep watched them
    index = StoreIndex(opts.store)
    since = _now() if rerun else None
    out = SweepOutcome(expansion=expansion, store=opts.store, index=index)
    ledger = read_ledger(opts.store)
    queue: deque[RunPlan] = deque()
    inflight: list[_InFlight] = []
    held: list[RunPlan] = []  # claimed by a live process that is not one of our jobs: its record decides
    for plan in expansion.plans:
        rec = index.done_point(plan, rerun)
        if rec is not None:
            out.outcomes.append(PointOutcome(plan, rec.status, rec, skipped=True))
            continue
        entry = ledger.get(plan.run_id)
        if entry is not None:
            ref = JobRef(entry.get("cluster", cluster), entry.get("folder", ""), entry["job_id"])
            if ref.active(force=True):
                inflight.append(_InFlight(plan, ref, time.monotonic(), entry.get("submitted_at") or _now()))
                continue
        queue.append(plan)
    rep = reporter or Reporter(len(queue) + len(inflight))
    for line in said:
        rep.note(line)
    picked_ids = {r.run_id for r in picked}
    if picked_ids:
        rep.note(f"picked up {len(picked)} record(s) that jobs wrote while no sweep watched them "
                 f"({len(picked_ids)} point(s)), from {inbox.inbox_dir(opts.store)}")
    if out.skipped:
        rep.note(f"{out.skipped} of {len(expansion.plans)} points already have an ok or oom record in "
                 f"{opts.store}: skipped (--rerun runs them again)")
    if inflight:
        rep.note(f"re-attached to {len(inflight)} job(s) still pending or running: "
                 + ", ".join(f.ref.job_id for f in inflight))
    rep.note(f"submitit: {copts.describe()}; job files in {folder}")
    # a job may start in another folder, on another node: it gets absolute paths
    job_opts = dataclasses.replace(opts, store=str(Path(opts.store).resolve()),
                                   log_dir=str(Path(opts.log_dir or Path(opts.store).parent / "logs").resolve()))
    made: dict = {}  # submitit's executor, made at the first submission (a sweep that only re-attaches makes none)
    limit = (copts.max_jobs or LOCAL_MAX_JOBS) if cluster == "local" else math.inf
    poll = float(os.environ.get("OVPROF_SUBMITIT_POLL_S") or POLL_S[cluster])
    t0 = time.monotonic()

    def finish(plan: RunPlan, rec, *, shared: bool = False, note: str = "") -> None:
        out.outcomes.append(PointOutcome(plan, rec.status if rec is not None else "error", rec, skipped=shared))
        if shared:
            out.shared += 1
        rep.start(plan.label())
        if rec is None:
            rep.finish("error", None, note)
        else:
            detail = _max_detail(rec) if plan.is_max_batch else _run_detail(rec)
            rep.finish(rec.status, rec.wall_time_s, note or detail)

    def submit(batch: list[RunPlan]) -> None:
        if not made:
            made["executor"] = make_executor(cluster, folder)
            made["gpus"] = local_gpus() if cluster == "local" else ()
        executor, visible = made["executor"], made["gpus"]
        groups: dict[int, list[RunPlan]] = {}
        for plan in batch:
            groups.setdefault(nodes_of[plan.run_id], []).append(plan)
        for n, group in groups.items():
            minutes = max(job_minutes(opts.timeout_s, _trials(p), copts) for p in group)
            executor.update_parameters(**parameters(copts, cluster, nodes=n, minutes=minutes,
                                                    name=f"ovprof-{spec.name}", visible_gpus=visible))
            with executor.batch():
                jobs = [executor.submit(point_job, p, job_opts, spec.name, since, str(folder)) for p in group]
            for plan, job in zip(group, jobs):
                entry = {"run_id": plan.run_id, "job_id": str(job.job_id), "folder": str(executor.folder),
                         "cluster": cluster, "submitted_at": _now(), "sweep": spec.name, "nodes": n}
                store.append(ledger_path(opts.store), entry)
                inflight.append(_InFlight(plan, JobRef(cluster, str(executor.folder), str(job.job_id), job=job),
                                          time.monotonic(), entry["submitted_at"]))
            rep.note(f"submitted {len(group)} point(s) on {n} node(s) each, {minutes} min: job(s) "
                     + ", ".join(str(j.job_id) for j in jobs))

    with interrupts_as_keyboard_interrupt() as seen:
        try:
            while queue or inflight or held:
                index.refresh()
                batch = []
                while queue and len(inflight) + len(batch) < limit:
                    plan = queue.popleft()
                    rec = index.done_point(plan, rerun)  # not done when this sweep began: someone finished it since
                    if rec is not None:
                        finish(plan, rec, shared=True, note="done by another sweep")
                    elif _claim_free(opts.store, plan.run_id):
                        batch.append(plan)
                    else:  # a live process runs it: another sweep, or a job whose submission we never saw
                        held.append(plan)
                if batch:
                    submit(batch)
                merger.merge()
                index.refresh()
                for f in list(inflight):
                    rec = _final_record(index, f.plan)
                    if rec is not None:
                        inflight.remove(f)
                        finish(f.plan, rec)
                        continue
                    if f.ref.active():
                        continue
                    f.ended_rounds += 1
                    if f.ended_rounds <= ENDED_ROUNDS:  # its last record may still be on its way
                        continue
                    inflight.remove(f)
                    kind, value = f.ref.outcome()
                    outcome = value.get("outcome") if kind == "result" and isinstance(value, dict) else None
                    if outcome == "held":
                        held.append(f.plan)
                    elif outcome == "done":
                        finish(f.plan, index.done_point(f.plan, False), shared=True,
                               note=f"job {f.ref.job_id} found it done")
                    elif kind == "error" and not f.plan.is_max_batch:
                        rec = _died_record(f, value, spec.name, opts)
                        R.append(opts.store, rec)
                        index.refresh()
                        finish(f.plan, rec, note=f"{value}")
                    else:
                        why = value if kind == "error" else f"job {f.ref.job_id} returned {value!r} but its " \
                                                             f"record is not in {inbox.inbox_dir(opts.store)}"
                        finish(f.plan, None, note=str(why))
                for plan in list(held):
                    rec = _final_record(index, plan) or index.done_point(plan, rerun)
                    if rec is not None:
                        held.remove(plan)
                        finish(plan, rec, shared=True, note="done by another sweep")
                    elif _claim_free(opts.store, plan.run_id):  # its holder ended without a record: ours to run
                        held.remove(plan)
                        queue.append(plan)
                if queue or inflight or held:
                    time.sleep(poll)
        except KeyboardInterrupt:
            out.interrupted = seen["signal"]
        except R.RecordNotStored as e:
            out.store_error = str(e)
        finally:
            rep.close()
            out.wall_s = time.monotonic() - t0
    out.left_running = [f.ref.job_id for f in inflight]
    return out
