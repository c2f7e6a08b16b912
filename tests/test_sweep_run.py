"""Real sweeps: isolation (an oom point is a row, the sweep goes on), resume after Ctrl-C and kill -9, skip-as-done."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovprof.results import store
from ovprof.sweep import spec as S

from conftest import ROOT, tiny_toml

pytestmark = pytest.mark.slow

TINY_BASE = tiny_toml("timeout_s = 300", bucket_elems=500000)


def env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovprof.cli", *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "ovprof.cli", *args], cwd=ROOT, env=env(), stdout=f,
                                stderr=subprocess.STDOUT)


def wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(store.read(path)) >= n:
            return
        assert proc.poll() is None, "the sweep ended before it was interrupted"
        time.sleep(0.1)
    raise AssertionError(f"no {n} records in {path} after {timeout} s")


def assert_no_torn_line(path: Path) -> None:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    for line in raw.split(b"\n")[:-1]:
        json.loads(line)  # raises on a torn line
    assert store.read_with_stats(path)[1] == 0


def workers_of(run_ids: set[str]) -> list[int]:
    """Worker processes still alive for these points (their spec dir is named after the run_id)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ovprof.runner.worker" in cmd and any(f"ovprof-{r}-" in cmd for r in run_ids):
            pids.append(int(d.name))
    return pids


def wait_no_workers(run_ids: set[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while workers_of(run_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers_of(run_ids), "a worker outlived its sweep"


def test_resume_after_ctrl_c_and_kill_9_loses_nothing_and_repeats_nothing(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text(TINY_BASE + '[axes]\nobjective = ["caption", "openvision", "clip"]\n')
    plans = S.expand(S.load(f)).plans
    ids = {p.run_id for p in plans}
    out = tmp_path / "r.jsonl"
    args = ("sweep", "run", str(f), "--store", str(out))

    # Ctrl-C after the first record: clean stop, exit 130, says how to resume
    p = start(*args, log=tmp_path / "a.log")
    wait_for_records(out, 1, p)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    log = (tmp_path / "a.log").read_text()
    assert "interrupted" in log and f"ovprof sweep run {f} --store {out}" in log and "Traceback" not in log
    wait_no_workers(ids)
    assert_no_torn_line(out)
    n = len(store.read(out))
    assert 1 <= n < len(plans)

    # kill -9 of the sweep while a point runs: its worker goes too, finished records stay
    p = start(*args, log=tmp_path / "b.log")
    wait_for_records(out, n + 1, p)
    time.sleep(1.0)  # let the next point's worker start, so the kill lands mid-point
    p.kill()
    p.wait(timeout=30)
    wait_no_workers(ids)
    assert_no_torn_line(out)
    assert len(store.read(out)) < len(plans), "the sweep finished before the kill; nothing was tested"

    # the next run completes the rest and repeats none
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_torn_line(out)
    recs = store.read(out)
    ok = collections.Counter(x["run_id"] for x in recs if x["status"] == "ok")
    assert set(ok) == ids and all(c == 1 for c in ok.values()), ok
    assert len(recs) == len(plans)

    # and a run after that skips every point
    r = cli(*args)
    assert r.returncode == 0 and len(store.read(out)) == len(plans)
    assert f"{len(plans)} of {len(plans)} points already have" in r.stdout + r.stderr


def test_an_oom_point_is_a_row_and_the_sweep_goes_on(tmp_path):
    f = tmp_path / "o.toml"
    # 64 images need ~36 MB of live tensors, 2 need ~6 MB: a 0.02 GiB (21 MB) budget splits them
    f.write_text(TINY_BASE + "[axes]\nbatch = [64, 2]\n")
    out = tmp_path / "o.jsonl"
    r = cli("sweep", "run", str(f), "--store", str(out), "--memory-budget", "0.02")
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = store.read(out)
    assert (a["config"]["batch"], a["status"]) == (64, "oom")
    assert a["error"]["type"] and a["config"]["memory_budget_gib"] == 0.02
    assert (b["config"]["batch"], b["status"]) == (2, "ok")
    assert "oom 1" in r.stdout and "ok 1" in r.stdout
    # an oom is done: a re-run skips it
    r = cli("sweep", "run", str(f), "--store", str(out), "--memory-budget", "0.02")
    assert r.returncode == 0 and len(store.read(out)) == 2


def test_a_failed_point_is_a_row_exit_1_and_the_rest_still_run(tmp_path):
    f = tmp_path / "e.toml"
    # DeepSpeed rejects a string gradient_clipping inside the worker: status error, not a crash of the sweep
    f.write_text(TINY_BASE + "[axes]\nds_config_base = ['{\"gradient_clipping\": \"lots\"}', '{}']\n")
    out = tmp_path / "e.jsonl"
    r = cli("sweep", "run", str(f), "--store", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    a, b = store.read(out)
    assert a["status"] == "error" and a["error"]["type"] and a["error"]["stderr_tail"]
    assert b["status"] == "ok"
    assert "error 1" in r.stdout and a["log_path"] in r.stdout.replace("\n", "")
    # --rerun runs every point again, the ok one included
    r = cli("sweep", "run", str(f), "--store", str(out), "--rerun")
    assert r.returncode == 1
    assert [x["run_id"] for x in store.read(out)] == [a["run_id"], b["run_id"]] * 2
