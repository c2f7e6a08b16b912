"""Real `ovprof run` points: DeepSpeed in a worker process on CPU (gloo), each appending a record."""

from __future__ import annotations

import json

import pytest

from ovprof.config import ExecOptions
from ovprof.results import store
from ovprof.runner.launch import run_point

from conftest import TINY, ovprof

pytestmark = pytest.mark.slow

REQUIRED_METRICS = ("step_time_ms_median", "step_time_ms_p10", "step_time_ms_p90", "samples_per_s",
                    "flops_per_step", "tflops_per_s", "peak_rss_bytes", "peak_tracked_bytes",
                    "tracked_breakdown_bytes")


def check_record(rec: dict, cfg) -> None:
    from ovprof import metrics as M
    from ovprof.results.record import SCHEMA_VERSION

    assert rec["schema_version"] == SCHEMA_VERSION and rec["kind"] == "run"
    assert set(rec["metrics"]) <= set(M.REGISTRY)  # producers emit registered names only
    assert set(rec["null_reasons"]) <= {k for k, v in rec["metrics"].items() if v is None}
    assert rec["derived"]["params"]["total"] == rec["metrics"]["param_count"]
    assert rec["run_id"] == cfg.run_id
    assert rec["config"] == cfg.resolved().to_dict()
    assert rec["ds_config"]["zero_optimization"]["stage"] == cfg.zero
    assert rec["status"] == "ok", rec.get("error")
    m = rec["metrics"]
    for k in REQUIRED_METRICS:
        assert m[k] is not None, k
    assert len(m["step_times_ms"]) == cfg.steps
    assert m["step_time_ms_p10"] <= m["step_time_ms_median"] <= m["step_time_ms_p90"]
    assert sum(m["tracked_breakdown_bytes"].values()) == m["peak_tracked_bytes"]
    # CPU: the CUDA-only fields are null, each with a reason
    for k in ("peak_allocated_bytes", "nvml_device_peak_bytes", "mfu"):
        assert m[k] is None and rec["null_reasons"][k]
    for k in ("torch", "deepspeed", "cpu_model", "cpu_count", "hostname", "ovprof_version"):
        assert rec["env"][k] is not None, k


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_each_zero_stage_at_world_size_1_appends_a_valid_record(tmp_path, tiny, zero):
    cfg = tiny(objective="openvision" if zero % 2 else "caption", zero=zero, bucket_elems=1_000_000)
    path = tmp_path / "runs.jsonl"
    run_point(cfg, ExecOptions(store=str(path), timeout_s=300))
    (rec,) = store.read(path)
    check_record(rec, cfg)


def test_world_size_2_runs_through_torchrun_and_records_every_rank(tmp_path, tiny):
    cfg = tiny(objective="clip", mask_position="encoder", mask_ratio=0.5, zero=2, world_size=2,
               bucket_elems=1_000_000)
    path = tmp_path / "runs.jsonl"
    run_point(cfg, ExecOptions(store=str(path), timeout_s=300))
    (rec,) = store.read(path)
    check_record(rec, cfg)
    assert sorted(r["rank"] for r in rec["per_rank"]) == [0, 1]


def test_same_config_twice_gives_identical_peak_tracked_bytes(tmp_path, tiny):
    cfg = tiny(objective="openvision", zero=2, bucket_elems=1_000_000)
    path = tmp_path / "runs.jsonl"
    a = run_point(cfg, ExecOptions(store=str(path)))
    b = run_point(cfg, ExecOptions(store=str(path)))
    assert a.metrics["peak_tracked_bytes"] == b.metrics["peak_tracked_bytes"]
    assert a.metrics["tracked_breakdown_bytes"] == b.metrics["tracked_breakdown_bytes"]


def test_cli_run_acceptance_openvision_zero3_world_size_2(tmp_path):
    out = tmp_path / "X.jsonl"
    r = ovprof("run", "--objective", "openvision", "--encoder", "vit-debug", "--zero", "3", "--world-size", "2",
               "--steps", "5", "--warmup", "2", "--set", "vocab_size=512", "--set", "caption_len=16",
               "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    (rec,) = store.read(out)
    assert rec["status"] == "ok"
    for k in ("step_time_ms_median", "peak_rss_bytes", "peak_tracked_bytes"):
        assert rec["metrics"][k] is not None


def test_too_small_memory_budget_is_an_oom_record_with_one_line_and_exit_3(tmp_path):
    out = tmp_path / "X.jsonl"
    args = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    r = ovprof("run", *args, "--memory-budget", "0.001", "--out", str(out))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    (rec,) = store.read(out)
    assert rec["status"] == "oom"
    assert rec["error"]["type"] == "BudgetExceeded"
    assert rec["error"]["stderr_tail"]  # the worker's log tail is kept in the record
    status_lines = [line for line in r.stdout.splitlines() if line.startswith("oom ")]
    assert len(status_lines) == 1


def test_a_worker_killed_by_a_signal_is_an_error_record(tmp_path, tiny):
    import os
    import signal
    import threading

    def kill_soon(proc):
        threading.Timer(1.0, lambda: os.kill(proc.pid, signal.SIGKILL)).start()

    path = tmp_path / "runs.jsonl"
    rec = run_point(tiny(steps=50), ExecOptions(store=str(path)), on_start=kill_soon)
    assert rec.status == "error"
    assert rec.error["signal"] == "SIGKILL"
    assert store.read(path)[0]["status"] == "error"


def test_timeout_is_a_timeout_record(tmp_path, tiny):
    path = tmp_path / "runs.jsonl"
    rec = run_point(tiny(steps=500), ExecOptions(store=str(path), timeout_s=3))
    assert rec.status == "timeout"
    assert store.read(path)[0]["status"] == "timeout"


def test_merge_takes_timing_whole_from_the_slowest_rank_and_memory_as_the_max():
    from ovprof.results.record import merge_ranks

    fast = {"rank": 0, "metrics": {"step_times_ms": [1.0, 2.0], "step_time_ms_median": 1.5, "step_time_ms_p10": 1.1,
                                   "step_time_ms_p90": 1.9, "peak_tracked_bytes": 10, "tracked_breakdown_bytes": {"a": 10},
                                   "mfu": None}, "null_reasons": {"mfu": "cpu"}}
    slow = {"rank": 1, "metrics": {"step_times_ms": [3.0, 5.0], "step_time_ms_median": 4.0, "step_time_ms_p10": 3.2,
                                   "step_time_ms_p90": 4.8, "peak_tracked_bytes": 7, "tracked_breakdown_bytes": {"a": 7},
                                   "mfu": None}, "null_reasons": {"mfu": "cpu"}}
    m, reasons = merge_ranks([fast, slow])
    assert (m["step_time_ms_p10"], m["step_time_ms_median"], m["step_time_ms_p90"]) == (3.2, 4.0, 4.8)
    assert m["step_times_ms"] == [3.0, 5.0]
    assert m["peak_tracked_bytes"] == 10 and m["tracked_breakdown_bytes"] == {"a": 10}
    assert reasons == {"mfu": "cpu"}
