"""Run the points of a sweep, each in its own worker, skipping what the store already holds.

    from ovprof.sweep import spec, execute
    outcome = execute.run_sweep(spec.expand(spec.load("sweeps/quickstart.toml")), ExecOptions(store=...))

Every point goes through `run_point` (own process group, per-point timeout),
which appends its record to the store the moment the worker ends; a failed
point is a row and the sweep goes on. Resume is read from the store alone: a
point whose run_id has an ok or oom record is done (a max-batch point: its
summary record, with the same search options). Nothing else holds state, so
a kill at any moment -- Ctrl-C, SIGKILL of this process or of a worker -- loses
at most the point in flight, and the next run repeats none of the finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from ovprof import metrics as M
from ovprof.config import ExecOptions
from ovprof.results import claims
from ovprof.results import record as R
from ovprof.results.record import DONE_STATUSES, MaxBatchRecord, RunRecord
from ovprof.sweep import maxbatch
from ovprof.sweep.progress import Reporter
from ovprof.sweep.spec import Expansion, RunPlan

FAILED_STATUSES = ("error", "timeout")
SUMMARY_METRICS = ("step_time_ms_median", "peak_tracked_bytes")  # what a finished point's progress line shows


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class StoreIndex:
    """What the store holds: read once, then re-read (new whole lines only) between points, so records that
    other sweeps on the same store append are seen; plus the records this sweep appends."""

    def __init__(self, path: str):
        self.path = path
        self.latest: dict[str, RunRecord] = {}  # run_id -> latest run record, any status
        self.done: dict[str, RunRecord] = {}  # run_id -> latest ok/oom run record
        self.max_summaries: dict[str, MaxBatchRecord] = {}  # point id -> latest summary
        self.fresh: set[str] = set()  # run_ids written since this invocation began (reused even under --rerun)
        self._cursor = R.store.Cursor()
        self._started = False
        self.refresh()
        self._started = True

    def refresh(self) -> None:
        """Take in the whole lines appended since the last read (a bad line is one warning, never a crash)."""
        for rec in R.read_store(self.path, cursor=self._cursor).records:
            self.add(rec, fresh=self._started)

    def add(self, rec: RunRecord | MaxBatchRecord, fresh: bool = True) -> None:
        if isinstance(rec, MaxBatchRecord):
            self.max_summaries[rec.run_id] = rec
        else:
            self.latest[rec.run_id] = rec
            if rec.done:
                self.done[rec.run_id] = rec
        if fresh:
            self.fresh.add(rec.run_id)

    def done_run(self, run_id: str, rerun: bool) -> RunRecord | None:
        if rerun and run_id not in self.fresh:
            return None
        return self.done.get(run_id)

    def done_point(self, plan: RunPlan, rerun: bool) -> RunRecord | MaxBatchRecord | None:
        """The record that makes this point done, or None when it must run."""
        if not plan.is_max_batch:
            return self.done_run(plan.run_id, rerun)
        if rerun and plan.run_id not in self.fresh:
            return None
        rec = self.max_summaries.get(plan.run_id)
        same = rec is not None and rec.search_options() == plan.max_batch.to_dict()
        return rec if same and rec.done else None


@dataclass
class PointOutcome:
    plan: RunPlan
    status: str  # ok | oom | error | timeout (a max-batch point: its summary's status)
    record: RunRecord | MaxBatchRecord | None  # the run record, or the max-batch summary record
    skipped: bool = False  # done before this run started
    slot: int | None = None  # the slot that ran it (--slots > 1)


@dataclass
class SweepOutcome:
    expansion: Expansion
    store: str
    outcomes: list[PointOutcome] = field(default_factory=list)
    interrupted: str | None = None  # the signal's name when stopped by SIGINT/SIGTERM
    store_error: str | None = None  # the store refused an append: the sweep stopped, the record is kept aside
    shared: int = 0  # points another sweep on the same store finished while this one ran
    wall_s: float = 0.0
    index: StoreIndex | None = None
    left_running: list[str] = field(default_factory=list)  # submitit: jobs still pending or running when it stopped

    @property
    def ran(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if not o.skipped]

    @property
    def skipped(self) -> int:
        return sum(o.skipped for o in self.outcomes)

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.ran)

    @property
    def done_total(self) -> int:
        return sum(o.status in DONE_STATUSES for o in self.outcomes)

    @property
    def failed(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.status in FAILED_STATUSES]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if self.failed or self.store_error else 0


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[dict]:
    """SIGTERM (a CI cancel, `kill`) stops the sweep the way Ctrl-C does: the worker goes, the store stays."""
    seen = {"signal": "SIGINT"}

    def on_term(signum, _frame):
        seen["signal"] = signal.Signals(signum).name
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        yield seen
        return
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, old)


WAIT_POLL_S = 1.0  # how often a sweep looks again at points another live sweep is running


class _Queue:
    """The points left to run, shared by the slots: each point goes to one slot; a point another sweep holds
    waits until the ones still free are taken."""

    def __init__(self, plans):
        from collections import deque

        self.todo, self.waiting = deque(plans), deque()
        self.lock = threading.Lock()

    def take(self, stop: threading.Event):
        """The next point to try, or None when nothing is left (or the sweep stops)."""
        while not stop.is_set():
            with self.lock:
                if self.todo:
                    return self.todo.popleft()
                if not self.waiting:
                    return None
            time.sleep(WAIT_POLL_S)  # only points other sweeps hold are left: look again in a moment
            with self.lock:
                self.todo.extend(self.waiting)
                self.waiting.clear()
        return None

    def later(self, plan) -> None:
        with self.lock:
            self.waiting.append(plan)


def run_sweep(expansion: Expansion, opts: ExecOptions, *, rerun: bool = False,
              reporter: Reporter | None = None, slots: int = 1) -> SweepOutcome:
    """Run every point not yet done; returns what happened (also when interrupted).

    Several sweeps may run on one store at once: each point is claimed before it runs (ovprof/results/claims.py)
    and the store is re-read between points, so every point runs once, by whichever sweep gets it first; a point
    another live sweep holds is left for later and waited for at the end. `slots` > 1 runs that many points at
    once in this process, each on devices of its own (ovprof/runner/slots.py); a max-batch search stays
    sequential inside its slot."""
    from ovprof.runner.slots import make_slots

    for line in R.recover_pending(opts.store):  # records a full disk kept aside last time
        (reporter.note if reporter else print)(line)
    spec = expansion.spec
    slot_list = make_slots(slots, max(p.config.world_size for p in expansion.plans)) if slots > 1 else [None]
    index = StoreIndex(opts.store)
    out = SweepOutcome(expansion=expansion, store=opts.store, index=index)
    todo: list[RunPlan] = []
    for plan in expansion.plans:
        rec = index.done_point(plan, rerun)
        if rec is not None:
            out.outcomes.append(PointOutcome(plan, rec.status, rec, skipped=True))
        else:
            todo.append(plan)
    rep = reporter or Reporter(len(todo))
    if out.skipped:
        rep.note(f"{out.skipped} of {len(expansion.plans)} points already have an ok or oom record in "
                 f"{opts.store}: skipped (--rerun runs them again)")
    if slots > 1:
        rep.note("slots: " + "; ".join(s.describe() for s in slot_list))
    t0 = time.monotonic()
    queue = _Queue(todo)
    stop = threading.Event()
    lock = threading.RLock()  # the index, the outcomes and the reporter are shared by the slots
    failures: list[BaseException] = []

    def work(slot) -> None:
        n = slot.index if slot is not None else None
        while (plan := queue.take(stop)) is not None:
            with lock:
                index.refresh()
                rec = index.done_point(plan, rerun)
                if rec is not None:  # another sweep on this store finished it
                    out.shared += 1
                    out.outcomes.append(PointOutcome(plan, rec.status, rec, skipped=True, slot=n))
                    rep.start(plan.label(), slot=n)
                    rep.finish(rec.status, None, "done by another sweep on this store", slot=n)
                    continue
            with claims.claim(opts.store, plan.run_id) as mine:
                if not mine:
                    queue.later(plan)
                    continue
                with lock:
                    index.refresh()
                    done = index.done_point(plan, rerun) is not None
                    if not done:
                        rep.start(plan.label(), slot=n)
                if done:  # finished just before we claimed it: counted as shared on the next take
                    queue.later(plan)
                    continue
                ctx = _Ctx(opts, index, rerun, rep, spec.name, lock, slot, stop)
                if plan.is_max_batch:
                    rec = _max_batch_point(plan, ctx)
                    detail = _max_detail(rec)
                else:
                    rec = _run(plan.config, ctx, sweep=spec.name)
                    with lock:
                        index.add(rec)
                    detail = _run_detail(rec)
            with lock:
                out.outcomes.append(PointOutcome(plan, rec.status, rec, slot=n))
                rep.finish(rec.status, rec.wall_time_s, detail, slot=n)

    def guarded(slot) -> None:
        try:
            work(slot)
        except BaseException as e:  # noqa: BLE001 - the first failure stops every slot; the main thread re-raises
            failures.append(e)
            stop.set()

    with interrupts_as_keyboard_interrupt() as seen:
        threads = []
        try:
            if slot_list == [None]:
                work(None)
            else:
                threads = [threading.Thread(target=guarded, args=(s,), name=f"ovprof-slot-{s.index}", daemon=True)
                           for s in slot_list]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.2)
                if failures:
                    raise failures[0]
        except KeyboardInterrupt:
            out.interrupted = seen["signal"]
        except R.RecordNotStored as e:
            out.store_error = str(e)
            if e.kept_at is None:  # nowhere to keep it: the record itself is the last copy
                out.store_error += "\n" + json.dumps(e.record.to_json(), sort_keys=True)
        finally:
            stop.set()  # every slot's running worker is killed, and records nothing
            for t in threads:
                t.join(timeout=30)
            rep.close()
            out.wall_s = time.monotonic() - t0
    return out


@dataclass
class _Ctx:
    """What a point needs from the sweep around it."""

    opts: ExecOptions
    index: "StoreIndex"
    rerun: bool
    rep: Reporter
    sweep: str
    lock: threading.RLock
    slot: object = None
    stop: threading.Event | None = None


def _run(cfg, ctx: "_Ctx", **kw) -> RunRecord:
    from ovprof.runner.launch import run_point

    n = ctx.slot.index if ctx.slot is not None else None
    extra = {} if ctx.slot is None else {"slot": ctx.slot, "cancel": ctx.stop}
    return run_point(cfg, ctx.opts, on_phase=lambda text: ctx.rep.phase(text, slot=n), **extra, **kw)


def _first_line(s: object, n: int = 160) -> str:
    text = str(s or "").strip().splitlines()
    return text[0][:n] if text else ""


def _run_detail(rec: RunRecord) -> str:
    if rec.status == "ok":
        shown = [(M.get(name), rec.metrics.get(name)) for name in SUMMARY_METRICS]
        return ", ".join(f"{m.label} {m.format(v)}" for m, v in shown if v is not None)
    err = rec.error or {}
    return f"{err.get('type', '')}: {_first_line(err.get('message'))}  log: {rec.log_path}"


def _max_detail(rec: MaxBatchRecord) -> str:
    n = len(rec.trials)
    if rec.status == "ok":
        oom = rec.first_oom_batch
        tail = f"first oom {oom}" if oom is not None else f"no oom up to limit {rec.limit}"
        return f"max batch {rec.max_batch} ({tail}; {n} trials)"
    if rec.status == "oom":
        return f"even batch {rec.start} is out of memory ({n} trial); lower [max_batch] start"
    return f"{(rec.error or {}).get('message', '')} ({n} trials)"


def _max_batch_point(plan: RunPlan, ctx: _Ctx) -> MaxBatchRecord:
    """Search the largest batch for one point; every trial is a run record; returns the summary record."""
    opts, index, rerun, rep, sweep_name = ctx.opts, ctx.index, ctx.rerun, ctx.rep, ctx.sweep
    n = ctx.slot.index if ctx.slot is not None else None
    mb = plan.max_batch
    records: dict[int, RunRecord] = {}
    started, t0 = _now(), time.perf_counter()

    def attempt(batch: int) -> maxbatch.Trial:
        cfg = dataclasses.replace(plan.config, batch=batch)
        with ctx.lock:
            rec = index.done_run(cfg.run_id, rerun)
        reused = rec is not None
        while rec is None:
            # claimed in the sweep's store (inside a submitit job, opts.store is the job's inbox file)
            with claims.claim(index.path, cfg.run_id) as mine:
                with ctx.lock:
                    index.refresh()
                    rec = index.done_run(cfg.run_id, rerun)
                reused = rec is not None
                if rec is None and mine:
                    with ctx.lock:
                        rep.trial(batch, slot=n)
                    rec = _run(cfg, ctx, sweep=sweep_name, max_batch_search=plan.run_id)
                    with ctx.lock:
                        index.add(rec)
            if rec is None:  # another sweep is running this very trial: its record decides
                time.sleep(WAIT_POLL_S)
        records[batch] = rec
        return maxbatch.Trial(batch=batch, status=rec.status, run_id=rec.run_id, reused=reused)

    def on_trial(t: maxbatch.Trial) -> None:
        with ctx.lock:
            rep.trial(t.batch, t.status, t.reused, slot=n)

    result = maxbatch.search(mb, attempt, on_trial=on_trial)
    error = None
    if result.failed is not None:
        bad = records[result.failed.batch]
        err = bad.error or {}
        error = {
            "type": "TrialFailed",
            "message": (f"trial batch={result.failed.batch} ended in {result.failed.status} "
                        f"({err.get('type', '?')}: {_first_line(err.get('message'), 200)}); the search stops, "
                        "since only an oom shows that a batch does not fit"),
            "trial_run_id": bad.run_id,
            "log_path": bad.log_path,
        }
    env = next((records[t.batch].env for t in reversed(result.trials) if records[t.batch].env), None)
    summary = R.build_max_batch_record(
        run_id=plan.run_id, sweep=sweep_name, config=plan.record_config(), status=result.status,
        max_batch=result.max_batch, first_oom_batch=result.first_oom_batch, limit_reached=result.limit_reached,
        **mb.to_dict(), trials=[t.to_dict() for t in result.trials], trial_count=len(result.trials),
        growth_trials=result.growth_trials, trial_bound=maxbatch.trial_bound(mb, result.first_oom_batch),
        growth_trial_bound=maxbatch.growth_bound(mb, result.first_oom_batch), started_at=started,
        finished_at=_now(), wall_time_s=time.perf_counter() - t0, error=error, env=env)
    R.append(opts.store, summary)
    with ctx.lock:
        index.add(summary)
    return summary
