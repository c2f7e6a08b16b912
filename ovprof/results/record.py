"""The run record: the only code that builds one (from a worker's rank files) and parses one (from a store).

    from ovprof.results import record
    contents = record.read_store("results/quickstart.jsonl")     # warns once per bad line, never raises
    latest = record.latest(contents.runs)                          # run_id -> RunRecord, later lines win
    latest["ab12..."].metrics["peak_tracked_bytes"]

Two kinds of record share a store: `RunRecord` (one measured point, `kind`
"run") and `MaxBatchRecord` (the summary of a max-batch search, `kind`
"max_batch"). A line that is torn, not a JSON object, of a schema newer than
this code, of an unknown kind, or that has a wrongly typed field is skipped
with one warning naming the store, the line number and the field; every other
line is read. A record's `config` is normalised on the way in by the one
normaliser (`normalize_config`): fields the record predates take the value they
meant then (a field's default, or a legacy rule), and fields today's RunConfig
no longer has are dropped. Figures derived from the config alone (kept tokens,
GFLOPs per image, parameters per tower) are stored once in `derived`, so report
and check read them instead of recomputing; for an older record they are
computed on read.

The rank merge follows ovprof/metrics.py: each metric's declared rule (max,
sum, rank 0, the slowest rank's timing taken whole, the peak rank's breakdowns).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ovprof import metrics as M
from ovprof.errors import printable
from ovprof.config import DEFAULTS, FIELD_NAMES, RunConfig, config_field_types
from ovprof.results import store

SCHEMA_VERSION = 2  # 2: `derived` block; typed parse. 1: the first records (still read).
READABLE_SCHEMAS = (1, 2)
STATUSES = ("ok", "oom", "error", "timeout")
DONE_STATUSES = ("ok", "oom")  # a point with one of these is done: a sweep does not run it again
MAX = "max"  # the batch of a max-batch search's config
STDERR_TAIL_CHARS = 4000

# A field added to RunConfig after records were written: what such a record ran with. The default, unless
# listed here. `checkpointing` meant every tower's blocks until `checkpointing_text` split it off.
_LEGACY: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "checkpointing_text": lambda cfg: bool(cfg.get("checkpointing")),
}


class RecordError(ValueError):
    """A store line that is not a record this code can read: which field, and why."""

    def __init__(self, field_name: str, reason: str):
        self.field, self.reason = field_name, reason
        super().__init__(f"field '{field_name}': {reason}")


# -- the config ---------------------------------------------------------------------------------------


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every current RunConfig field, in field order: the stored value, else the legacy rule, else the default.

    Fields today's RunConfig no longer has are dropped. This is the one normaliser: the sweep's resume, the
    report's grouping and the gate's matching all see a record's config through it."""
    out = {}
    for k in FIELD_NAMES:
        if k in config:
            out[k] = config[k]
        elif k in _LEGACY:
            out[k] = _LEGACY[k](config)
        else:
            out[k] = DEFAULTS[k]
    return out


def run_config(config: Mapping[str, Any]) -> RunConfig:
    """A validated RunConfig from a (normalised) record config; ConfigError if today's rules refuse it."""
    from ovprof.config import from_mapping

    return from_mapping(normalize_config(config))


def derived_figures(cfg: RunConfig) -> dict[str, Any]:
    """Figures that follow from the config alone, stored once in the record."""
    from ovprof import objectives

    c = cfg.resolved()
    g = objectives.gflops_per_image(c)
    return {
        "num_patches": c.num_patches,
        "kept_tokens": c.kept_tokens if c.mask_ratio > 0 else c.num_patches,
        "fwd_gflops_per_image": g["fwd_gflops_per_image"],
        "train_gflops_per_image": g["train_gflops_per_image"],
        "params": objectives.model_params(c),
    }


def _derived_or_reason(config: Mapping[str, Any], batch_free: bool = False) -> dict[str, Any] | None:
    try:
        cfg = dict(config)
        if batch_free:
            cfg["batch"] = 1
        return derived_figures(run_config(cfg))
    except Exception:  # noqa: BLE001 - a config today's code cannot rebuild has no derived figures
        return None


# -- the two kinds of record ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One measured point. `config` is normalised; `metrics` holds registered metrics (null with a reason)."""

    run_id: str
    status: str  # ok | oom | error | timeout
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    null_reasons: dict[str, str] = field(default_factory=dict)  # metric -> why it is null
    env: dict[str, Any] = field(default_factory=dict)  # torch, deepspeed, GPU/CPU, git SHA, host
    error: dict[str, Any] | None = None  # type, message, stderr_tail, ... when status is not ok
    ds_config: dict[str, Any] = field(default_factory=dict)  # the DeepSpeed config as used
    per_rank: list[dict[str, Any]] = field(default_factory=list)
    derived: dict[str, Any] | None = None  # kept tokens, GFLOPs per image, parameters per tower
    started_at: str | None = None
    finished_at: str | None = None
    wall_time_s: float | None = None
    log_path: str | None = None
    exit_code: int | None = None
    sweep: str | None = None  # the sweep that ran it
    max_batch_search: str | None = None  # run_id of the max-batch search it was a trial of
    schema_version: int = SCHEMA_VERSION
    kind = "run"

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    def metric(self, name: str) -> Any:
        M.get(name)  # a typo is an error, not a silent None
        return self.metrics.get(name)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d


@dataclass(frozen=True)
class MaxBatchRecord:
    """The summary of one max-batch search; each trial is a RunRecord of its own (named in `trials`)."""

    run_id: str
    status: str  # ok (found) | oom (even `start` does not fit) | error (a trial failed otherwise)
    config: dict[str, Any]  # normalised; batch is "max"
    max_batch: int | None = None
    first_oom_batch: int | None = None
    limit_reached: bool = False
    start: int | None = None
    granularity: int | None = None
    limit: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    trial_count: int | None = None
    growth_trials: int | None = None
    trial_bound: int | None = None
    growth_trial_bound: int | None = None
    env: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_time_s: float | None = None
    sweep: str | None = None
    derived: dict[str, Any] | None = None  # at batch 1
    schema_version: int = SCHEMA_VERSION
    kind = "max_batch"

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    def search_options(self) -> dict[str, Any]:
        return {"start": self.start, "granularity": self.granularity, "limit": self.limit}

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d


Record = RunRecord | MaxBatchRecord

# -- parsing ------------------------------------------------------------------------------------------

_NUM = (int, float)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _check(ok: bool, name: str, reason: str) -> None:
    if not ok:
        raise RecordError(name, reason)


def _opt(obj: Mapping, name: str, pred: Callable[[Any], bool], what: str) -> Any:
    v = obj.get(name)
    _check(v is None or pred(v), name, f"expected {what}, got {_show(v)}")
    return v


def _show(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(config: Any, *, max_batch: bool) -> dict[str, Any]:
    _check(isinstance(config, dict), "config", f"expected an object, got {_show(config)}")
    types = config_field_types()
    for k, v in config.items():
        if k not in types:
            continue  # a field today's RunConfig no longer has: dropped by the normaliser
        if max_batch and k == "batch" and v == MAX:
            continue
        typ = types[k]
        ok = {
            "int": _is_int, "int | None": lambda x: x is None or _is_int(x),
            "float": _is_num, "float | None": lambda x: x is None or _is_num(x),
            "bool": lambda x: isinstance(x, bool), "str": lambda x: isinstance(x, str),
        }.get(typ, lambda x: True)(v)
        _check(ok, f"config.{k}", f"expected {typ.replace(' | None', ' or null')}, got {_show(v)}")
    return normalize_config(config)


def _check_metrics(metrics: Any) -> dict[str, Any]:
    _check(isinstance(metrics, dict), "metrics", f"expected an object, got {_show(metrics)}")
    for name, v in metrics.items():
        m = M.REGISTRY.get(name)
        if m is None or v is None:
            continue  # a metric a newer producer added is kept as it is
        where = f"metrics.{name}"
        if m.shape == "scalar":
            _check(_is_num(v), where, f"expected a number or null, got {_show(v)}")
        elif m.shape == "list":
            _check(isinstance(v, list) and all(_is_num(x) for x in v), where,
                   f"expected a list of numbers, got {_show(v)}")
        else:
            _check(isinstance(v, dict) and all(x is None or _is_num(x) for x in v.values()), where,
                   f"expected an object of numbers, got {_show(v)}")
    return metrics


def _common(obj: Mapping) -> None:
    _check(isinstance(obj.get("run_id"), str) and obj["run_id"] != "", "run_id",
           f"expected a non-empty string, got {_show(obj.get('run_id'))}")
    _check(obj.get("status") in STATUSES, "status", f"expected one of {', '.join(STATUSES)}, got "
                                                     f"{_show(obj.get('status'))}")
    for name in ("started_at", "finished_at", "sweep", "log_path"):
        _opt(obj, name, lambda x: isinstance(x, str), "a string")
    _opt(obj, "wall_time_s", _is_num, "a number")
    _opt(obj, "error", lambda x: isinstance(x, dict), "an object")
    _opt(obj, "env", lambda x: isinstance(x, dict), "an object")


def parse(obj: Any) -> Record:
    """A typed record from one decoded store line; RecordError names the first bad field."""
    _check(isinstance(obj, dict), "(line)", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version", 1)
    _check(_is_int(version), "schema_version", f"expected an integer, got {_show(version)}")
    _check(version in READABLE_SCHEMAS, "schema_version",
           f"{version} is not one this ovprof reads ({', '.join(map(str, READABLE_SCHEMAS))}): a newer ovprof "
           "wrote it")
    kind = obj.get("kind", "run")  # records written before `kind` existed are run records
    _check(kind in ("run", "max_batch"), "kind", f"expected run or max_batch, got {_show(kind)}")
    _common(obj)
    if kind == "run":
        config = _check_config(obj.get("config"), max_batch=False)
        metrics = _check_metrics(obj.get("metrics") if "metrics" in obj else {})
        reasons = _opt(obj, "null_reasons", lambda x: isinstance(x, dict), "an object") or {}
        _opt(obj, "ds_config", lambda x: isinstance(x, dict), "an object")
        _opt(obj, "per_rank", lambda x: isinstance(x, list), "a list")
        _opt(obj, "exit_code", _is_int, "an integer")
        _opt(obj, "max_batch_search", lambda x: isinstance(x, str), "a string")
        derived = _opt(obj, "derived", lambda x: isinstance(x, dict), "an object")
        return RunRecord(
            run_id=obj["run_id"], status=obj["status"], config=config, metrics=metrics, null_reasons=reasons,
            env=obj.get("env") or {}, error=obj.get("error"), ds_config=obj.get("ds_config") or {},
            per_rank=obj.get("per_rank") or [], derived=derived if derived is not None else
            _derived_or_reason(config), started_at=obj.get("started_at"), finished_at=obj.get("finished_at"),
            wall_time_s=obj.get("wall_time_s"), log_path=obj.get("log_path"), exit_code=obj.get("exit_code"),
            sweep=obj.get("sweep"), max_batch_search=obj.get("max_batch_search"), schema_version=version)
    config = _check_config(obj.get("config"), max_batch=True)
    for name in ("max_batch", "first_oom_batch", "start", "granularity", "limit", "trial_count", "growth_trials",
                 "trial_bound", "growth_trial_bound"):
        _opt(obj, name, _is_int, "an integer")
    _opt(obj, "limit_reached", lambda x: isinstance(x, bool), "true or false")
    trials = _opt(obj, "trials", lambda x: isinstance(x, list) and all(isinstance(t, dict) for t in x),
                  "a list of objects") or []
    derived = _opt(obj, "derived", lambda x: isinstance(x, dict), "an object")
    return MaxBatchRecord(
        run_id=obj["run_id"], status=obj["status"], config=config, max_batch=obj.get("max_batch"),
        first_oom_batch=obj.get("first_oom_batch"), limit_reached=bool(obj.get("limit_reached")),
        start=obj.get("start"), granularity=obj.get("granularity"), limit=obj.get("limit"), trials=trials,
        trial_count=obj.get("trial_count"), growth_trials=obj.get("growth_trials"),
        trial_bound=obj.get("trial_bound"), growth_trial_bound=obj.get("growth_trial_bound"), env=obj.get("env"),
        error=obj.get("error"), started_at=obj.get("started_at"), finished_at=obj.get("finished_at"),
        wall_time_s=obj.get("wall_time_s"), sweep=obj.get("sweep"),
        derived=derived if derived is not None else _derived_or_reason(config, batch_free=True),
        schema_version=version)


def coerce(obj: Record | Mapping[str, Any]) -> Record:
    """A typed record from a typed record or a decoded dict (tests and callers holding raw dicts)."""
    return obj if isinstance(obj, (RunRecord, MaxBatchRecord)) else parse(obj)


# -- reading a store ------------------------------------------------------------------------------------


@dataclass
class StoreContents:
    """What one or more stores hold, in file order, and what was skipped (each with its warning)."""

    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one per skipped line: store, line, field, reason
    lines: int = 0  # non-blank lines read

    @property
    def runs(self) -> list[RunRecord]:
        return [r for r in self.records if isinstance(r, RunRecord)]

    @property
    def max_batches(self) -> list[MaxBatchRecord]:
        return [r for r in self.records if isinstance(r, MaxBatchRecord)]

    @property
    def skipped(self) -> int:
        return len(self.warnings)

    def extend(self, other: "StoreContents") -> "StoreContents":
        self.records += other.records
        self.warnings += other.warnings
        self.lines += other.lines
        return self


_WARNED: set[tuple[str, int, str]] = set()  # one warning per bad line per process, however often it is read


def _warn_default(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def read_store(path: str | Path, *, warn: Callable[[str], None] | None = _warn_default,
               cursor: store.Cursor | None = None) -> StoreContents:
    """Every readable record of `path` in file order; a missing store is empty. Never raises on content.

    With a cursor: only the whole lines after it (a sweep's re-read between points), advancing it."""
    out = StoreContents()
    for lineno, raw in store.lines(path, cursor):
        out.lines += 1
        try:
            obj = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError (a cut multi-byte character)
            msg = f"{printable(path)}: line {lineno}: skipped: not a whole JSON line (torn or corrupt)"
        else:
            try:
                out.records.append(parse(obj))
                continue
            except RecordError as e:
                msg = f"{printable(path)}: line {lineno}: skipped: {printable(e, 300)}"
        out.warnings.append(msg)
        key = (str(path), lineno, msg)
        if warn is not None and key not in _WARNED:
            _WARNED.add(key)
            warn(msg)
    return out


def read_stores(paths: Iterable[str | Path], **kw) -> StoreContents:
    out = StoreContents()
    for p in paths:
        out.extend(read_store(p, **kw))
    return out


R = TypeVar("R", RunRecord, MaxBatchRecord)


def latest(records: Iterable[R], *, key: Callable[[R], Any] = lambda r: r.run_id,
           prefer_done: bool = False) -> dict[Any, R]:
    """The last record per key in the order given (later lines, later stores win); the one place that decides.

    prefer_done: a key's last ok/oom record wins over a later error/timeout one (a point that ran once and
    failed on a rerun is still done); else its last record of any status."""
    last: dict[Any, R] = {}
    done: dict[Any, R] = {}
    for r in records:
        k = key(r)
        last[k] = r
        if r.done:
            done[k] = r
    if not prefer_done:
        return last
    return {k: done.get(k, r) for k, r in last.items()}


# -- building a run record from the worker's rank files ---------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def merge_ranks(ranks: list[dict]) -> tuple[dict, dict]:
    """One `metrics` block and its null reasons from the ranks' results, each metric by its registered rule."""
    reasons: dict[str, str] = {}
    for r in ranks:
        reasons.update(r.get("null_reasons") or {})
    base = next((r for r in ranks if r.get("rank") == 0), ranks[0])
    with_metrics = [r for r in ranks if r.get("metrics")]

    def rank_with_max(name: str) -> dict:
        return max((r for r in with_metrics if _is_num(r["metrics"].get(name))), key=lambda r: r["metrics"][name],
                   default=base)

    chosen = {"slowest": rank_with_max("step_time_ms_median"), "at_peak": rank_with_max("peak_tracked_bytes"),
              "rank0": base}
    merged: dict[str, Any] = {}
    for name in (base.get("metrics") or {}):
        rule = M.get(name).merge  # a producer emits registered names only: anything else is a bug, loudly
        if rule in chosen:
            merged[name] = (chosen[rule].get("metrics") or {}).get(name)
        else:
            nums = [r["metrics"][name] for r in with_metrics if _is_num(r["metrics"].get(name))]
            merged[name] = (max(nums) if rule == "max" else sum(nums)) if nums else None
    for k in list(reasons):
        if merged.get(k) is not None:
            reasons.pop(k)
    return merged, reasons


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def classify(ranks: list[dict], *, world_size: int, exit_code: int | None, timed_out: bool,
             timeout_s: float | None) -> tuple[str, dict | None]:
    """(status, error) of a finished job, from exit status and the ranks' own results (never from log text)."""
    statuses = [r.get("status") for r in ranks]
    if timed_out:
        return "timeout", {"type": "Timeout", "message": f"worker exceeded {timeout_s:g} s and was killed"}
    for status in ("oom", "error"):
        if status in statuses:
            bad = next(r for r in ranks if r.get("status") == status)
            return status, dict(bad.get("error") or {}, rank=bad.get("rank"))
    if len(ranks) == world_size and all(s == "ok" for s in statuses) and exit_code == 0:
        return "ok", None
    sig = -exit_code if exit_code is not None and exit_code < 0 else None
    name = signal.Signals(sig).name if sig else None
    msg = (f"worker killed by signal {name}" if sig
           else f"worker exited with code {exit_code} leaving {len(ranks)}/{world_size} rank results")
    return "error", {"type": "WorkerDied", "message": msg, "signal": name}


def build_run_record(cfg: RunConfig, ds_config: dict, ranks: list[dict], *, exit_code: int | None,
                     timed_out: bool, timeout_s: float | None, log_path: str | Path, started_at: str,
                     finished_at: str | None = None, wall_time_s: float, sweep: str | None = None,
                     max_batch_search: str | None = None) -> RunRecord:
    """The record of one finished job: status from exit status and rank results, metrics merged by rule."""
    cfg = cfg.resolved()
    status, error = classify(ranks, world_size=cfg.world_size, exit_code=exit_code, timed_out=timed_out,
                             timeout_s=timeout_s)
    if error is not None:
        error["stderr_tail"] = _tail(Path(log_path))
    if ranks:
        metrics, reasons = merge_ranks(ranks)
        per_rank = [{"rank": r.get("rank"), "status": r.get("status"),
                     **{k: v for k, v in (r.get("metrics") or {}).items() if M.get(k).shape != "list"}}
                    for r in ranks]
        env = next((r["env"] for r in ranks if r.get("rank") == 0), ranks[0].get("env")) or {}
    else:
        from ovprof.measure.env import collect_env

        metrics, reasons, per_rank, env = {}, {}, [], collect_env()
    if status == "ok":
        metrics["overhead_s"] = wall_time_s - sum(metrics.get("step_times_ms") or []) / 1e3
    return RunRecord(
        run_id=cfg.run_id, status=status, config=normalize_config(cfg.to_dict()), metrics=metrics,
        null_reasons=reasons, env=env, error=error, ds_config=ds_config, per_rank=per_rank,
        derived=derived_figures(cfg), started_at=started_at, finished_at=finished_at or _now(),
        wall_time_s=wall_time_s, log_path=str(log_path), exit_code=exit_code, sweep=sweep,
        max_batch_search=max_batch_search)


def build_max_batch_record(**fields: Any) -> MaxBatchRecord:
    """A search summary; `config` is the plan's record config (batch "max")."""
    cfg = fields.pop("config")
    return MaxBatchRecord(config=normalize_config(cfg), derived=_derived_or_reason(cfg, batch_free=True), **fields)


class RecordNotStored(Exception):
    """The store refused the append (disk full...): the record is safe in `kept_at`, appended on the next run."""

    def __init__(self, path: Path, cause: OSError, kept_at: Path | None, rec: Record):
        self.path, self.cause, self.kept_at, self.record = path, cause, kept_at, rec
        where = (f"the record of {rec.run_id} is kept in {kept_at} and will be appended to the store by the next "
                 "ovprof run or sweep on it" if kept_at else
                 f"the record of {rec.run_id} could not be kept anywhere either (printed below)")
        super().__init__(f"cannot append to {path}: {getattr(cause, 'strerror', None) or cause}; {where}")


def pending_paths(path: str | Path) -> list[Path]:
    """Where a record that the store refused waits, first choice first: beside the store, then a user cache
    (another filesystem, usually), then the temporary directory."""
    import hashlib
    import os
    import tempfile

    path = Path(path)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ovprof" / "pending"
    return [path.with_name(path.name + ".pending"), cache / f"{path.name}-{key}.pending",
            Path(tempfile.gettempdir()) / "ovprof-pending" / f"{path.name}-{key}.pending"]


def append(path: str | Path, rec: Record) -> None:
    """The one way a record reaches a store (whole line, locked, fsynced: ovprof/results/store.py).

    A failed append leaves no torn line (the store is cut back) and loses nothing: the record goes to the first
    pending file that takes it, and RecordNotStored says where; `recover_pending` appends it later."""
    try:
        store.append(path, rec.to_json())
        return
    except store.StoreWriteError as e:
        cause: OSError = e.cause
    for pending in pending_paths(path):
        try:
            store.append(pending, rec.to_json())
        except OSError:
            continue
        raise RecordNotStored(Path(path), cause, pending, rec)
    raise RecordNotStored(Path(path), cause, None, rec)


def recover_pending(path: str | Path) -> list[str]:
    """Append the records that waited for this store (see `append`) and remove their pending files.

    Returns one message per pending file handled. A store that still refuses keeps them waiting."""
    said = []
    for pending in pending_paths(path):
        if not pending.is_file():
            continue
        contents = read_store(pending, warn=None)
        if not contents.records and not contents.warnings:  # left empty by an attempt that failed
            pending.unlink()
            continue
        for rec in contents.records:
            store.append(path, rec.to_json())  # StoreWriteError propagates: they stay pending
        pending.unlink()
        said.append(f"recovered {len(contents.records)} record(s) that {path} could not take earlier, from "
                    f"{pending}")
    return said
