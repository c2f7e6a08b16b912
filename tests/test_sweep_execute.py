"""The sweep driver with a stand-in for run_point: what is skipped, what runs, interrupts, max-batch bookkeeping.

The real worker is exercised in test_sweep_run.py and test_sweep_maxbatch.py; here each "run" is instant, so
every branch of the driver is checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ovprof.config import ExecOptions
from ovprof.results import record as R
from ovprof.results import store
from ovprof.runner import launch
from ovprof.sweep import execute
from ovprof.sweep import spec as S

from conftest import tiny_toml

BASE = tiny_toml(drop=("batch", "precision"))


class FakeRunPoint:
    """Appends a record like run_point does; status from `status(cfg)`; can raise KeyboardInterrupt on call n."""

    def __init__(self, status=lambda cfg: "ok", interrupt_on: int | None = None):
        self.status, self.interrupt_on, self.calls = status, interrupt_on, []

    def __call__(self, cfg, opts, *, sweep=None, max_batch_search=None, on_start=None, on_phase=None, slot=None,
                 cancel=None):
        self.calls.append(cfg)
        if self.interrupt_on == len(self.calls):
            raise KeyboardInterrupt
        status = self.status(cfg)
        rec = R.parse(raw_record(cfg, status, sweep=sweep, max_batch_search=max_batch_search))
        R.append(opts.store, rec)
        return rec


def raw_record(cfg, status, **extra) -> dict:
    return {"schema_version": 1, "kind": "run", "run_id": cfg.run_id, "config": cfg.resolved().to_dict(),
            "status": status, "wall_time_s": 0.01, "log_path": f"logs/{cfg.run_id}.log", "env": {"host": "h"},
            "error": None if status == "ok" else {"type": "X", "message": f"planted {status}"},
            "metrics": {"step_time_ms_median": 10.0 + cfg.batch, "peak_tracked_bytes": 1000 * cfg.batch}
            if status == "ok" else {}, **extra}


def setup(tmp_path: Path, monkeypatch, text: str, fake: FakeRunPoint, overrides=None):
    f = tmp_path / "s.toml"
    f.write_text(BASE + text)
    monkeypatch.setattr(launch, "run_point", fake)
    exp = S.expand(S.load(f), overrides or {})
    return exp, ExecOptions(store=str(tmp_path / "s.jsonl"))


def test_points_with_an_ok_or_oom_record_are_skipped_errors_and_timeouts_run_again(tmp_path, monkeypatch):
    fake = FakeRunPoint()
    exp, opts = setup(tmp_path, monkeypatch, "[axes]\nbatch = [1, 2, 3, 4, 5]\n", fake)
    for plan, status in zip(exp.plans, ["ok", "oom", "error", "timeout"]):
        store.append(opts.store, raw_record(plan.config, status))
    out = execute.run_sweep(exp, opts)
    assert [c.batch for c in fake.calls] == [3, 4, 5]
    assert out.skipped == 2 and out.counts["ok"] == 3 and out.exit_code == 0
    fake.calls.clear()
    assert execute.run_sweep(exp, opts).skipped == 5 and fake.calls == []
    out = execute.run_sweep(exp, opts, rerun=True)
    assert [c.batch for c in fake.calls] == [1, 2, 3, 4, 5] and out.skipped == 0


def test_a_failed_point_does_not_stop_the_sweep_and_sets_exit_1(tmp_path, monkeypatch):
    fake = FakeRunPoint(status=lambda c: {1: "error", 2: "timeout", 3: "oom"}.get(c.batch, "ok"))
    exp, opts = setup(tmp_path, monkeypatch, "[axes]\nbatch = [1, 2, 3, 4]\n", fake)
    out = execute.run_sweep(exp, opts)
    assert len(fake.calls) == 4 and [o.status for o in out.outcomes] == ["error", "timeout", "oom", "ok"]
    assert out.exit_code == 1 and len(out.failed) == 2
    monkeypatch.setattr(launch, "run_point", FakeRunPoint(status=lambda c: "oom"))
    assert execute.run_sweep(exp, opts, rerun=True).exit_code == 0  # an oom is a finding, not a failure


def test_ctrl_c_stops_cleanly_keeping_finished_records(tmp_path, monkeypatch):
    fake = FakeRunPoint(interrupt_on=3)
    exp, opts = setup(tmp_path, monkeypatch, "[axes]\nbatch = [1, 2, 3, 4]\n", fake)
    out = execute.run_sweep(exp, opts)
    assert out.interrupted == "SIGINT" and out.exit_code == 130
    assert [r["config"]["batch"] for r in store.read(opts.store)] == [1, 2] and out.done_total == 2
    fake = FakeRunPoint()
    monkeypatch.setattr(launch, "run_point", fake)
    out = execute.run_sweep(exp, opts)
    assert [c.batch for c in fake.calls] == [3, 4] and out.exit_code == 0 and out.skipped == 2


MAX = '[axes]\nbatch = [8, "max"]\n[max_batch]\nstart = 2\ngranularity = 1\nlimit = 256\n'


def test_max_batch_point_appends_trials_and_a_summary_and_reuses_them(tmp_path, monkeypatch):
    fake = FakeRunPoint(status=lambda c: "ok" if c.batch <= 11 else "oom")
    exp, opts = setup(tmp_path, monkeypatch, MAX, fake)
    grid, point = exp.plans
    out = execute.run_sweep(exp, opts)
    # 8 ran as a grid point first, so the search reuses it: 2 4 [8] 16 12 10 11
    assert [c.batch for c in fake.calls] == [8, 2, 4, 16, 12, 10, 11]
    recs = store.read(opts.store)
    summary = recs[-1]
    assert summary["kind"] == "max_batch" and summary["run_id"] == point.run_id and summary["status"] == "ok"
    assert (summary["max_batch"], summary["first_oom_batch"]) == (11, 12)
    assert [t["batch"] for t in summary["trials"]] == [2, 4, 8, 16, 12, 10, 11]
    assert [t["reused"] for t in summary["trials"]] == [False, False, True, False, False, False, False]
    assert summary["config"]["batch"] == "max" and summary["trial_count"] <= summary["trial_bound"]
    assert all(r["max_batch_search"] == point.run_id for r in recs[1:-1])
    assert out.exit_code == 0 and out.outcomes[1].record is not None
    # done: nothing runs again
    fake.calls.clear()
    assert execute.run_sweep(exp, opts).skipped == 2 and fake.calls == []
    # other search options: a new search, its trials taken from the store
    f2 = tmp_path / "s2.toml"
    f2.write_text(BASE + MAX.replace("granularity = 1", "granularity = 4"))
    exp2 = S.expand(S.load(f2))
    assert exp2.plans[1].run_id == point.run_id  # the same point ...
    out = execute.run_sweep(exp2, opts)
    summary = store.read(opts.store)[-1]
    assert out.skipped == 1 and fake.calls == []  # ... searched again, running nothing
    assert (summary["max_batch"], summary["first_oom_batch"], summary["granularity"]) == (8, 12, 4)


def test_a_failed_trial_ends_the_search_with_error_never_oom(tmp_path, monkeypatch):
    fake = FakeRunPoint(status=lambda c: "timeout" if c.batch == 8 else "ok")
    exp, opts = setup(tmp_path, monkeypatch, MAX.replace('[8, "max"]', '["max"]'), fake)
    out = execute.run_sweep(exp, opts)
    summary = store.read(opts.store)[-1]
    assert summary["status"] == "error" and summary["first_oom_batch"] is None and summary["max_batch"] == 4
    assert "timeout" in summary["error"]["message"] and summary["error"]["trial_run_id"]
    assert out.exit_code == 1
    # the failed trial is not done: a re-run tries it again (and reuses 2 and 4)
    fake2 = FakeRunPoint(status=lambda c: "ok" if c.batch <= 8 else "oom")
    monkeypatch.setattr(launch, "run_point", fake2)
    out = execute.run_sweep(exp, opts)
    assert [c.batch for c in fake2.calls][0] == 8 and out.exit_code == 0
    assert store.read(opts.store)[-1]["max_batch"] == 8


@pytest.mark.parametrize("live", [False, True])
def test_progress_reports_each_point(tmp_path, monkeypatch, live):
    from io import StringIO

    from rich.console import Console

    from ovprof.sweep.progress import Reporter

    fake = FakeRunPoint(status=lambda c: "oom" if c.batch == 2 else "ok")
    exp, opts = setup(tmp_path, monkeypatch, "[axes]\nbatch = [1, 2]\nzero = [0, 2]\n", fake)
    buf = StringIO()
    console = Console(file=buf, width=200, force_terminal=live, color_system=None)
    execute.run_sweep(exp, opts, reporter=Reporter(len(exp.plans), console, live=live))
    text = buf.getvalue()
    assert "[1/4]" in text and "[4/4]" in text and "batch=2 zero=2" in text and "oom" in text
    if not live:
        assert "eta" in text and "\x1b" not in text
