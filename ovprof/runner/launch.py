"""Run one point in its own process group and turn whatever happened into one record.

    from ovprof.config import RunConfig, ExecOptions
    from ovprof.runner.launch import run_point
    record = run_point(RunConfig(zero=2), ExecOptions(store="results/runs.jsonl"))

World size 1 runs the worker directly with the rendezvous variables set; world
size > 1 goes through torchrun (default) or DeepSpeed's launcher. The worker
writes one result file per rank; a worker that dies before writing one (killed,
segfault, timeout) still yields a record: status error or timeout, exit code or
signal, and the tail of its log. The record is appended to the store here, in
the parent, so a sweep's records all pass through one place.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ovprof.config import SCHEMA_VERSION, ExecOptions, RunConfig

STDERR_TAIL_CHARS = 4000
KILL_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def worker_command(cfg: RunConfig, opts: ExecOptions, spec: Path, result_dir: Path, port: int) -> list[str]:
    worker = ["-m", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    n = cfg.world_size
    if n == 1 and not opts.hostfile:
        return [sys.executable, *worker]
    if opts.launcher == "deepspeed" or opts.hostfile:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(port)]
        # With a hostfile the ranks are its slots; world_size must equal their sum (checked by DeepSpeed).
        cmd += ["--hostfile", opts.hostfile] if opts.hostfile else ["--num_gpus", str(n)]
        return cmd + ["--module", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *worker]


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no orphaned workers after a kill -9)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


TIMING_KEYS = ("step_times_ms", "step_time_ms_median", "step_time_ms_p10", "step_time_ms_p90", "step_time_ms_min",
               "step_time_ms_max", "samples_per_s", "tflops_per_s", "mfu")


def merge_ranks(ranks: list[dict]) -> tuple[dict, dict]:
    """One record from the rank results.

    Memory per device is the maximum over ranks (the device that runs out first); timing is the slowest
    rank's, taken whole so that its median, percentiles and step list stay consistent with each other.
    """
    merged: dict = {}
    reasons: dict = {}
    for r in ranks:
        reasons.update(r.get("null_reasons") or {})
    base = next((r for r in ranks if r.get("rank") == 0), ranks[0])
    with_metrics = [r for r in ranks if r.get("metrics")]

    def by(key):
        return max((r for r in with_metrics if isinstance(r["metrics"].get(key), (int, float))),
                   key=lambda r: r["metrics"][key], default=base)

    slowest, top_memory = by("step_time_ms_median"), by("peak_tracked_bytes")
    for key, value in (base.get("metrics") or {}).items():
        if key in TIMING_KEYS:
            merged[key] = (slowest.get("metrics") or {}).get(key)
        elif isinstance(value, dict):  # breakdowns: whole, from the rank with the highest tracked peak
            merged[key] = (top_memory.get("metrics") or {}).get(key)
        elif key.startswith("peak_") or key.endswith(("_peak_bytes", "_retries", "oom_count")):
            nums = [r["metrics"].get(key) for r in with_metrics if isinstance(r["metrics"].get(key), (int, float))]
            merged[key] = max(nums) if nums else None
        else:
            merged[key] = value
    for k in list(reasons):
        if merged.get(k) is not None:
            reasons.pop(k)
    return merged, reasons


def run_point(cfg: RunConfig, opts: ExecOptions | None = None, *, extra: dict | None = None,
              on_start=None) -> dict:
    """Run one point, append its record to opts.store, return the record."""
    from ovprof.results import store
    from ovprof.runner.deepspeed_config import build

    opts = opts or ExecOptions()
    cfg = cfg.resolved()
    ds_config = build(cfg)
    store_path = Path(opts.store)
    log_dir = Path(opts.log_dir) if opts.log_dir else store_path.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    log_path = log_dir / f"{cfg.run_id}-{stamp}.log"
    started = _now()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"ovprof-{cfg.run_id}-") as tmp:
        tmp = Path(tmp)
        spec = tmp / "spec.json"
        spec.write_text(json.dumps({"config": cfg.to_dict(), "ds_config": ds_config}))
        result_dir = tmp / "result"
        port = free_port()
        cmd = worker_command(cfg, opts, spec, result_dir, port)
        env = dict(os.environ)
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"})
        if cfg.world_size == 1:
            env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
        else:
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                env.pop(k, None)
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.world_size)))
        timed_out = False
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=die_with_parent)
            if on_start:
                on_start(proc)
            try:
                proc.wait(timeout=opts.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:  # Ctrl-C in the parent: take the worker group down with us
                _kill_group(proc)
                raise
            # A failed rank exits at once; torchrun reaps the rest. Anything left in the group goes now.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ranks = []
        for f in sorted(result_dir.glob("rank*.json")) if result_dir.exists() else []:
            try:
                ranks.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                pass
    wall = time.perf_counter() - t0
    rc = proc.returncode
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "run",
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "ds_config": ds_config,
        "started_at": started,
        "finished_at": _now(),
        "wall_time_s": wall,
        "log_path": str(log_path),
        "exit_code": rc,
    }
    statuses = [r.get("status") for r in ranks]
    error = None
    if timed_out:
        status = "timeout"
        error = {"type": "Timeout", "message": f"worker exceeded {opts.timeout_s:g} s and was killed"}
    elif "oom" in statuses:
        status = "oom"
    elif "error" in statuses:
        status = "error"
    elif len(ranks) == cfg.world_size and all(s == "ok" for s in statuses) and rc == 0:
        status = "ok"
    else:
        status = "error"
        sig = -rc if rc is not None and rc < 0 else None
        msg = (f"worker killed by signal {signal.Signals(sig).name}" if sig
               else f"worker exited with code {rc} leaving {len(ranks)}/{cfg.world_size} rank results")
        error = {"type": "WorkerDied", "message": msg, "signal": signal.Signals(sig).name if sig else None}
    if error is None and status in ("oom", "error"):
        bad = next(r for r in ranks if r.get("status") == status)
        error = dict(bad.get("error") or {}, rank=bad.get("rank"))
    if error is not None:
        error["stderr_tail"] = _tail(log_path)
    record["status"] = status
    record["error"] = error
    if ranks:
        metrics, reasons = merge_ranks(ranks)
        record["metrics"], record["null_reasons"] = metrics, reasons
        record["per_rank"] = [{"rank": r.get("rank"), "status": r.get("status"),
                               **{k: v for k, v in (r.get("metrics") or {}).items() if k != "step_times_ms"}}
                              for r in ranks]
        record["env"] = next((r["env"] for r in ranks if r.get("rank") == 0), ranks[0].get("env"))
    else:
        record["metrics"], record["null_reasons"], record["per_rank"] = {}, {}, []
        from ovprof.measure.env import collect_env

        record["env"] = collect_env()
    if status == "ok":
        record["metrics"]["overhead_s"] = wall - sum(record["metrics"].get("step_times_ms") or []) / 1e3
    if extra:
        record.update(extra)
    store.append(store_path, record)
    return record
