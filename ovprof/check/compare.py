"""Match baseline points with the latest records and judge each gated metric.

    gate = Gate(tolerance_pct=parse_tolerance("5%"))
    result = compare(load_baseline(path), store.read("results/ci-memory.jsonl"), gate)
    result.exit_code  # 1 on any regression, status change or (unless allowed) missing point

A point is its resolved config. Two configs are the same point when they are
equal field by field after (1) filling a field the record predates with today's
default and dropping a field today's RunConfig no longer has, and (2) dropping
the fields named by `--ignore-field`. With identical software that is exactly
run_id equality (run_id hashes the resolved config); it keeps matching when an
upgrade adds a config field or changes how run_ids are computed. For each point
the results supply their latest ok/oom record (file order, later stores win),
else their latest record of any status, so a point that now fails to run shows
up as a status change rather than as missing.

Verdicts compare exactly: tolerances are fractions, metric values are turned
into fractions without rounding, so 1_050_000 bytes against 1_000_000 at 5% is
ok and 1_050_001 is a regression.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping

from ovprof import metrics as M
from ovprof.config import FIELD_NAMES
from ovprof.errors import UsageError
from ovprof.results import record as R

# Metrics `--metric` may gate: every per-device byte figure a record carries (ovprof/metrics.py, gate="memory").
MEMORY_METRICS = M.memory_metrics()
# Gated only with --time-tolerance; always kept in a baseline for reference.
(TIME_METRIC,) = (m.name for m in M.gateable("time"))
CPU_METRIC, CUDA_METRIC = "peak_tracked_bytes", "peak_allocated_bytes"

OK, IMPROVED, NEW, MISSING, REGRESSION, STATUS_CHANGED = "ok", "improved", "new", "missing", "regression", \
    "status-changed"
# Worst first: a point's verdict is its worst row's.
SEVERITY = (STATUS_CHANGED, REGRESSION, MISSING, IMPROVED, NEW, OK)
FAILING = frozenset({STATUS_CHANGED, REGRESSION, MISSING})

# Always named in a point's label; other fields only where the points differ in them.
LABEL_ALWAYS = ("objective", "encoder")
_TOLERANCE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%?\s*")


def parse_tolerance(text: str, option: str = "--tolerance") -> Fraction:
    """'5%' or '5' -> 5 (percent). A bare number is a percentage too: '0.05' means 0.05 %, not 5 %."""
    m = _TOLERANCE_RE.fullmatch(text)
    if not m:
        raise UsageError(f"{option} {text!r}: expected a non-negative percentage such as 5% or 2.5 "
                         "(a bare number is read as percent)")
    return Fraction(m.group(1))


def pct_str(p: Fraction) -> str:
    """A tolerance for humans: 5 -> '5%', 5/2 -> '2.5%' (as typed, no float noise)."""
    if p.denominator == 1:
        return f"{p.numerator}%"
    return f"{float(p):g}%"


def check_metric_names(names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        if name not in MEMORY_METRICS:
            near = difflib.get_close_matches(name, MEMORY_METRICS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(MEMORY_METRICS)}"
            if name == TIME_METRIC:
                hint = "step time is gated with --time-tolerance"
            raise UsageError(f"--metric {name!r}: not a gated memory metric ({hint})")
        if name not in out:
            out.append(name)
    return out


def check_field_names(names: Iterable[str]) -> frozenset[str]:
    for name in names:
        if name not in FIELD_NAMES:
            near = difflib.get_close_matches(name, FIELD_NAMES, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"config fields: {', '.join(FIELD_NAMES)}"
            raise UsageError(f"--ignore-field {name!r}: not a config field ({hint})")
    return frozenset(names)


def is_cuda(env: Mapping[str, Any] | None) -> bool:
    env = env or {}
    return bool(env.get("cuda_available")) or bool(env.get("gpu_name"))


def default_metric(env: Mapping[str, Any] | None) -> str:
    """The allocator's peak on CUDA; on CPU the exact live-tensor peak (deterministic for identical software)."""
    return CUDA_METRIC if is_cuda(env) else CPU_METRIC


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def normalized(config: Mapping[str, Any], ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The config as today's RunConfig sees it (ovprof.results.record's normaliser), less the ignored fields."""
    return {k: v for k, v in R.normalize_config(config).items() if k not in ignore}


def match_key(config: Mapping[str, Any], ignore: frozenset[str] = frozenset()) -> tuple:
    # A tuple, not canonical JSON: 0 and 0.0 are the same value here, as they are to RunConfig.
    return tuple(normalized(config, ignore).items())


def latest_per_point(records: Iterable[R.Record | Mapping[str, Any]],
                     ignore: frozenset[str] = frozenset()) -> dict[tuple, R.RunRecord]:
    """For each point: its latest ok/oom record, else its latest record (file order; later stores win)."""
    runs = [r for r in map(R.coerce, records) if isinstance(r, R.RunRecord)]
    return R.latest(runs, key=lambda r: match_key(r.config, ignore), prefer_done=True)


@dataclass(frozen=True)
class Gate:
    """What the check enforces."""

    tolerance_pct: Fraction = Fraction(5)  # memory metrics may grow by this many percent
    time_tolerance_pct: Fraction | None = None  # None: step time is reported, not gated
    metrics: tuple[str, ...] = ()  # () = per record: peak_allocated_bytes on CUDA, else peak_tracked_bytes
    ignore_fields: frozenset[str] = frozenset()  # config fields left out of the match
    allow_missing: bool = False  # baseline points absent from the results pass


@dataclass(frozen=True)
class Row:
    """One metric (or the status) of one point."""

    metric: str
    baseline: Any
    current: Any
    verdict: str
    tolerance_pct: Fraction | None = None
    note: str = ""
    excused: bool = False  # a missing point under --allow-missing

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING and not self.excused

    @property
    def delta_pct(self) -> float | None:
        """(current - baseline) / baseline in percent; None when either is not a number or baseline is 0."""
        if not (is_number(self.baseline) and is_number(self.current)) or self.baseline == 0:
            return None
        return float((Fraction(self.current) - Fraction(self.baseline)) * 100 / Fraction(self.baseline))


@dataclass
class PointResult:
    config: dict[str, Any]  # normalized, for the label
    baseline_run_id: str | None
    current_run_id: str | None
    rows: list[Row]
    label: str = ""

    @property
    def verdict(self) -> str:
        return min((r.verdict for r in self.rows), key=SEVERITY.index, default=OK)

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.rows)

    @property
    def excused(self) -> bool:
        return any(r.excused for r in self.rows)

    @property
    def run_id_text(self) -> str:
        a, b = self.baseline_run_id, self.current_run_id
        return f"{a} -> {b}" if a and b and a != b else (a or b or "?")


@dataclass
class CheckResult:
    points: list[PointResult]
    gate: Gate
    env_notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(p.failed for p in self.points)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in reversed(SEVERITY)}
        for p in self.points:
            out[p.verdict] += 1
        return out


def _judge(base: Any, cur: Any, tol: Fraction) -> str:
    b, c = Fraction(base), Fraction(cur)  # exact for ints and floats alike
    if c > b * (1 + tol / 100):
        return REGRESSION
    if c < b * (1 - tol / 100):
        return IMPROVED
    return OK


def _error_note(record: R.RunRecord) -> str:
    """'RuntimeError: first line of the message', from the record's error block."""
    err = record.error or {}
    first = (str(err.get("message") or "").strip().splitlines() or [""])[0][:200]
    return ": ".join(x for x in (err.get("type"), first) if x)


def _metric_rows(point: Mapping[str, Any], record: R.RunRecord, gate: Gate, baseline_name: str) -> list[Row]:
    metrics = list(gate.metrics) or [default_metric(record.env)]
    checks = [(m, gate.tolerance_pct) for m in metrics]
    if gate.time_tolerance_pct is not None:
        checks.append((TIME_METRIC, gate.time_tolerance_pct))
    cur_metrics = record.metrics
    rows = []
    for metric, tol in checks:
        base = point["metrics"].get(metric)
        if not is_number(base):
            stored = ", ".join(k for k, v in point["metrics"].items() if is_number(v)) or "nothing"
            if metric in gate.metrics or metric == TIME_METRIC:
                fix = f"rebuild it with --update-baseline --metric {metric}" if metric != TIME_METRIC else \
                    "rebuild it with --update-baseline"
            else:
                device = "a CUDA device" if is_cuda(record.env) else "CPU"
                fix = (f"the results come from {device}, whose default is {metric}: compare like with like, "
                       "or choose a stored metric with --metric")
            raise UsageError(f"{baseline_name}: point {point['run_id']} has no {metric} (it stores {stored}); {fix}")
        cur = cur_metrics.get(metric)
        if not is_number(cur):
            reason = record.null_reasons.get(metric)
            rows.append(Row(metric, base, None, MISSING, tol,
                            note=f"the current record has no {metric}" + (f" ({reason})" if reason else "")))
        else:
            rows.append(Row(metric, base, cur, _judge(base, cur, tol), tol))
    return rows


def _point_rows(point: Mapping[str, Any], record: R.RunRecord | None, gate: Gate,
                gated_metrics: list[str], baseline_name: str, excuse_missing: bool) -> list[Row]:
    b_status = point["status"]
    if record is None:
        note = "no record of this point in the results"
        if gate.allow_missing and not excuse_missing:
            note += " (nor of any other baseline point: --allow-missing excuses some points, not all)"
        if b_status != "ok":
            return [Row("status", b_status, None, MISSING, note=note, excused=excuse_missing)]
        metrics = list(gate.metrics) or gated_metrics
        return [Row(m, point["metrics"].get(m), None, MISSING, gate.tolerance_pct, note=note,
                    excused=excuse_missing) for m in metrics]
    c_status = record.status
    if b_status == "ok" and c_status == "ok":
        return _metric_rows(point, record, gate, baseline_name)
    if b_status == c_status:
        # Both out of memory: the peak at the moment of failure depends on where it failed; nothing to gate.
        return [Row("status", b_status, c_status, OK)]
    if b_status == "oom" and c_status == "ok":
        return [Row("status", b_status, c_status, IMPROVED, note="fits in memory now")]
    return [Row("status", b_status, c_status, STATUS_CHANGED, note=_error_note(record))]


def _label(config: Mapping[str, Any], varying: list[str]) -> str:
    parts = [str(config.get(k)) for k in LABEL_ALWAYS]
    for k in varying:
        v = config.get(k)
        text = str(v)
        parts.append(f"{k}={text[:40] + '...' if len(text) > 40 else text}")
    return " ".join(parts)


def _varying_fields(configs: list[dict[str, Any]], ignore: frozenset[str]) -> list[str]:
    out = []
    for k in FIELD_NAMES:
        if k in LABEL_ALWAYS or k in ignore:
            continue
        values = []
        for c in configs:
            if c.get(k) not in values:
                values.append(c.get(k))
        if len(values) > 1:
            out.append(k)
    return out


def _env_notes(baseline_env: Mapping[str, Any], records: list[R.RunRecord]) -> list[str]:
    notes = []
    for key, what in (("torch", "torch"), ("deepspeed", "deepspeed"), ("ovprof_version", "ovprof"),
                      ("gpu_name", "GPU")):
        seen = []
        for r in records:
            v = r.env.get(key)
            if v not in seen:
                seen.append(v)
        if seen and seen != [baseline_env.get(key)]:
            now = ", ".join(str(v) for v in seen)
            notes.append(f"{what} differs: baseline {baseline_env.get(key)}, results {now}")
    return notes


def compare(baseline: Mapping[str, Any], records: Iterable[R.Record | Mapping[str, Any]], gate: Gate,
            baseline_name: str = "baseline") -> CheckResult:
    """Judge every baseline point against the results, and list the results' points the baseline lacks."""
    ignore = gate.ignore_fields
    current = latest_per_point(records, ignore)
    seen: dict[tuple, str] = {}
    points: list[PointResult] = []
    used: list[R.RunRecord] = []
    # Results that hold none of the baseline's points (a sweep that ran nothing, the wrong store) never pass.
    excuse = gate.allow_missing and any(match_key(p["config"], ignore) in current for p in baseline["points"])
    for point in baseline["points"]:
        key = match_key(point["config"], ignore)
        if key in seen:
            why = f"once {', '.join(sorted(ignore))} is ignored; ignore fewer fields" if ignore else \
                "once missing fields take their defaults; rebuild the baseline"
            raise UsageError(f"{baseline_name}: points {seen[key]} and {point['run_id']} are the same point {why}")
        seen[key] = point["run_id"]
        record = current.get(key)
        if record is not None:
            used.append(record)
        rows = _point_rows(point, record, gate, baseline["gated_metrics"], baseline_name, excuse)
        points.append(PointResult(normalized(point["config"]), point["run_id"],
                                  record.run_id if record else None, rows))
    for key, record in current.items():
        if key in seen:
            continue
        used.append(record)
        if record.status == "ok":
            metrics = list(gate.metrics) or [default_metric(record.env)]
            rows = [Row(m, None, record.metrics.get(m), NEW, note="not in the baseline") for m in metrics]
        else:
            rows = [Row("status", None, record.status, NEW, note="not in the baseline")]
        points.append(PointResult(normalized(record.config), None, record.run_id, rows))
    varying = _varying_fields([p.config for p in points], ignore)
    for p in points:
        p.label = _label(p.config, varying)
    return CheckResult(points, gate, _env_notes(baseline.get("env") or {}, used))


def _plain(v: Any) -> str:
    # Bytes stay exact integers; milliseconds get two decimals.
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def row_line(p: PointResult, r: Row) -> str:
    """One greppable line for a finding, e.g.
    REGRESSION caption vit-debug batch=2 (run_id ab12...): peak_tracked_bytes 5709556 -> 8891636 (+55.73%, tolerance 5%)
    """
    head = f"{r.verdict.upper()} {p.label} (run_id {p.run_id_text}): "
    body = f"{r.metric} {_plain(r.baseline)} -> {_plain(r.current)}"
    if r.baseline is not None and r.current is not None and r.metric != "status":
        d = r.delta_pct
        tol = f", tolerance {pct_str(r.tolerance_pct)}" if r.tolerance_pct is not None else ""
        body += f" ({'n/a' if d is None else f'{d:+.2f}%'}{tol})"
    extra = [r.note] if r.note else []
    if r.excused:
        extra.append("allowed by --allow-missing")
    if r.verdict == IMPROVED:
        extra.append("update the baseline")
    return head + body + (f"; {'; '.join(extra)}" if extra else "")


def plain_lines(result: CheckResult) -> list[str]:
    """A line per finding (every row whose verdict is not ok)."""
    return [row_line(p, r) for p in result.points for r in p.rows if r.verdict != OK]


def to_json(result: CheckResult) -> dict[str, Any]:
    g = result.gate

    def num(v):
        return float(v) if isinstance(v, Fraction) else v

    return {
        "passed": not result.failed,
        "exit_code": result.exit_code,
        "counts": result.counts(),
        "tolerance_pct": num(g.tolerance_pct),
        "time_tolerance_pct": num(g.time_tolerance_pct),
        "metrics": list(g.metrics) or None,
        "ignore_fields": sorted(g.ignore_fields),
        "allow_missing": g.allow_missing,
        "env_notes": result.env_notes,
        "points": [{
            "label": p.label, "baseline_run_id": p.baseline_run_id, "current_run_id": p.current_run_id,
            "verdict": p.verdict, "failed": p.failed,
            "rows": [{"metric": r.metric, "baseline": r.baseline, "current": r.current, "verdict": r.verdict,
                      "delta_pct": None if r.delta_pct is None else round(r.delta_pct, 2),
                      "tolerance_pct": num(r.tolerance_pct), "failed": r.failed, "note": r.note}
                     for r in p.rows],
        } for p in result.points],
    }
