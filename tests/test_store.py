"""Tests for the JSONL run store: round trip, torn lines, concurrent appenders, nan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ovprof.results import store

REPO_ROOT = Path(__file__).resolve().parents[1]

# Each child waits for the go-file so both start appending at the same moment.
APPENDER = """
import os, sys, time
from ovprof.results import store
path, writer, go = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
pad = writer * 20_000
for i in range(300):
    store.append(path, {"run_id": f"{writer}-{i}", "writer": writer, "i": i, "pad": pad})
"""


def test_round_trip_preserves_order_and_values(tmp_path):
    path = tmp_path / "deep" / "dir" / "runs.jsonl"
    records = [
        {"run_id": "a", "status": "ok", "step_time_s": 0.25, "nested": {"x": [1, 2, 3]}},
        {"run_id": "b", "status": "oom", "text": "ünïcode ✓"},
        {"run_id": "a", "status": "failed"},
    ]
    for record in records:
        store.append(path, record)
    assert store.read(path) == records
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    # Canonical form: sorted keys, no spaces.
    assert lines[0] == json.dumps(records[0], sort_keys=True, separators=(",", ":")).encode()


def test_missing_file_reads_empty(tmp_path):
    assert store.read(tmp_path / "nope.jsonl") == []
    assert store.read_with_stats(tmp_path / "nope.jsonl") == ([], 0)


def test_torn_last_line_skipped_and_next_append_starts_fresh(tmp_path):
    path = tmp_path / "runs.jsonl"
    store.append(path, {"run_id": "a", "status": "ok"})
    store.append(path, {"run_id": "b", "status": "ok"})
    # A writer killed mid-record: half a line, no newline.
    full = store.encode({"run_id": "c", "status": "ok", "pad": "x" * 100})
    with open(path, "ab") as f:
        f.write(full[: len(full) // 2])
    records, skipped = store.read_with_stats(path)
    assert [r["run_id"] for r in records] == ["a", "b"] and skipped == 1

    store.append(path, {"run_id": "d", "status": "ok"})
    records, skipped = store.read_with_stats(path)
    assert [r["run_id"] for r in records] == ["a", "b", "d"]
    assert skipped == 1
    assert path.read_bytes().endswith(b"\n")


def test_non_object_and_bad_utf8_lines_are_skipped(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'[1,2]\n"str"\n\xff\xfe{\n\n{"run_id":"a"}\n')
    records, skipped = store.read_with_stats(path)
    assert records == [{"run_id": "a"}] and skipped == 3


def test_nan_and_inf_become_null(tmp_path):
    path = tmp_path / "runs.jsonl"
    store.append(path, {"run_id": "a", "loss": float("nan"),
                        "m": {"x": float("inf"), "y": [1.0, float("-inf")]}, "t": (2.5, float("nan"))})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert store.read(path) == [{"run_id": "a", "loss": None, "m": {"x": None, "y": [1.0, None]},
                                 "t": [2.5, None]}]


def test_concurrent_appender_processes_do_not_tear_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), writer, str(go)], env=env)
        for writer in ("A", "B")
    ]
    time.sleep(0.3)  # let both interpreters start and reach the wait loop
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=60) == 0

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 600
    assert len(lines[0]) > 20_000  # bigger than PIPE_BUF, so atomicity is not free
    records, skipped = store.read_with_stats(path)
    assert skipped == 0 and len(records) == 600
    for writer in ("A", "B"):
        mine = [r for r in records if r["writer"] == writer]
        assert [r["i"] for r in mine] == list(range(300))
        assert all(r["pad"] == writer * 20_000 for r in mine)
