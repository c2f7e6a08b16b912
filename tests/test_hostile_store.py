"""Every command that reads a store goes on past bad lines, with exactly one warning per bad line.

The store holds real-shaped ok records of a tiny sweep's points (so `sweep run` has nothing left to run) and,
between them, a torn line, `"metrics": "oops"`, `"schema_version": 99`, a string where a number belongs and the
rest of the classes in test_record.py.
"""

from __future__ import annotations

import json
import re

import pytest

from ovprof.results import record as R
from ovprof.sweep import spec as S

from conftest import ovprof, tiny_toml
from test_record import _bad_lines

SWEEP = tiny_toml('name = "hostile"') + "[axes]\nobjective = [\"caption\", \"openvision\"]\n"


def _ok(cfg) -> dict:
    c = cfg.resolved()
    return {"schema_version": R.SCHEMA_VERSION, "kind": "run", "run_id": c.run_id, "status": "ok",
            "config": c.to_dict(), "sweep": "hostile", "started_at": "2026-01-01T00:00:00.000+00:00",
            "finished_at": "2026-01-01T00:00:01.000+00:00", "wall_time_s": 1.0,
            "metrics": {"peak_tracked_bytes": 5_000_000, "step_times_ms": [10.0, 12.0], "step_time_ms_median": 11.0,
                        "step_time_ms_p10": 10.2, "step_time_ms_p90": 11.8, "peak_rss_bytes": 300_000_000,
                        "tracked_breakdown_bytes": {"parameters": 1_000_000, "activations": 4_000_000}},
            "null_reasons": {}, "env": {"torch": "2.13.0+cpu", "deepspeed": "0.19.8", "cpu_model": "test CPU"}}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    sweep = d / "hostile.toml"
    sweep.write_text(SWEEP)
    plans = S.expand(S.load(sweep)).plans
    store = d / "hostile.jsonl"
    bad = list(_bad_lines().values())
    with open(store, "wb") as f:
        f.write(json.dumps(_ok(plans[0].config)).encode() + b"\n")
        for line in bad:
            f.write(line + b"\n")
        f.write(json.dumps(_ok(plans[1].config)).encode() + b"\n")
    return d, sweep, store, len(bad)


def _warnings(stderr: str, store) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"warning: {store}: line ")]


def _one_per_bad_line(r, store, n_bad) -> None:
    found = _warnings(r.stderr, store)
    lines = [int(re.search(r": line (\d+):", w).group(1)) for w in found]
    assert len(found) == n_bad and len(set(lines)) == n_bad, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_sweep_plan_and_sweep_run_go_on(hostile):
    d, sweep, store, n_bad = hostile
    r = ovprof("sweep", "plan", str(sweep), "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)
    r = ovprof("sweep", "run", str(sweep), "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)
    assert "2 of 2 points already have" in r.stderr + r.stdout  # both good records were read: nothing ran


def test_report_goes_on(hostile):
    d, sweep, store, n_bad = hostile
    r = ovprof("report", str(store), "--out", str(d / "rep"), "--format", "md,csv")
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)
    assert f"{n_bad} unreadable line(s) skipped" in (d / "rep" / "report.md").read_text()


def test_check_and_its_baseline_update_go_on(hostile):
    d, sweep, store, n_bad = hostile
    base = d / "base.json"
    r = ovprof("check", "--update-baseline", "--baseline", str(base), "--results", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)
    assert len(json.loads(base.read_text())["points"]) == 2
    r = ovprof("check", "--baseline", str(base), "--results", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)


def test_estimate_validate_goes_on(hostile):
    d, sweep, store, n_bad = hostile
    r = ovprof("estimate", "--validate", str(store), "--method", "analytic", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    _one_per_bad_line(r, store, n_bad)
    assert len(json.loads(r.stdout)["rows"]) == 2
