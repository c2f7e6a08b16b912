"""The checks of bench/gpu-check.sh that need Python: NVML against torch, the near-limit batch, the verdict.

    python bench/gpu_check.py nvml --out reports/gpu/2027-01-05/nvml.json
    python bench/gpu_check.py near-limit-batch bench/gpu-check-oom.toml            # device memory from torch
    python bench/gpu_check.py verify reports/gpu/2027-01-05/runs.jsonl --out reports/gpu/2027-01-05/verdict.json

`verify` reads the records the script's sweeps wrote and checks, per issue 18 item 9: the healthy points are ok
with `mfu` set and a reason on every null; the allocator's peaks start at the reset (reserved at the reset <=
peak reserved, no retries or OOMs in the timed steps); the NVML sampler's own steps (their median step time
beside the timed one's: the sampler's overhead); the tracked optimizer-phase bytes equal the estimate's
optimizer term; and the forced and the near-limit OOM points are `oom`. It prints one line per check and
exits 1 if any failed. Its logic runs on the CPU against synthetic records in tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# The tracker's optimizer phase may hold a scalar or two beside what the estimate models (bytes).
OPTIMIZER_TERM_SLACK_BYTES = 64
# Step time with the NVML sampler over step time without it: above this, its overhead is worth a note.
SAMPLER_OVERHEAD_NOTE = 1.05
NEAR_LIMIT_FACTOR = 1.25


# -- nvml: the torch device and NVML's agree, and NVML lists this process after an allocation -------------------

def nvml_check() -> dict:
    import torch

    from ovprof.measure.nvml import torch_device_uuids

    out: dict = {"ok": False}
    if not torch.cuda.is_available():
        out["problem"] = "no CUDA device"
        return out
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB: NVML must see this process
    torch.cuda.synchronize()
    out["torch_uuid"] = str(torch.cuda.get_device_properties(0).uuid)
    out["candidates"] = list(torch_device_uuids(0))
    import pynvml

    pynvml.nvmlInit()
    try:
        handle, found = None, None
        for uuid in out["candidates"]:
            try:
                handle, found = pynvml.nvmlDeviceGetHandleByUUID(uuid), uuid
                break
            except pynvml.NVMLError:
                continue
        if handle is None:
            out["problem"] = f"NVML knows none of {out['candidates']}"
            return out
        nvml_uuid = pynvml.nvmlDeviceGetUUID(handle)
        out["nvml_uuid"] = nvml_uuid.decode() if isinstance(nvml_uuid, bytes) else str(nvml_uuid)
        out["mig"] = found.startswith("MIG-")
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        mine = [p for p in procs if p.pid == os.getpid()]
        out["pid"] = os.getpid()
        out["listed_pids"] = [p.pid for p in procs]
        out["process_listed"] = bool(mine)
        out["process_used_bytes"] = mine[0].usedGpuMemory if mine else None
        if not mine:
            out["note"] = "this process is not listed (in a container NVML lists host PIDs): nvml_process_peak_bytes " \
                          "will be null with that reason"
        out["ok"] = out["nvml_uuid"] == found
        if not out["ok"]:
            out["problem"] = f"NVML's UUID {out['nvml_uuid']} differs from the one looked up ({found})"
    finally:
        del x
        pynvml.nvmlShutdown()
    return out


# -- near-limit-batch: a batch ~25% over what the estimate says fits the whole device ------------------------------

def near_limit_batch(sweep_file: str, device_gib: float | None, factor: float = NEAR_LIMIT_FACTOR) -> int:
    from ovprof.estimate import max_batch
    from ovprof.sweep.spec import expand, load

    (plan,) = expand(load(sweep_file)).plans
    if device_gib is None:
        import torch

        device_bytes = torch.cuda.get_device_properties(0).total_memory
    else:
        device_bytes = int(device_gib * 2**30)
    fits, _ = max_batch(plan.config, device_bytes, "analytic", "flash")
    return max(2, math.ceil(fits * factor))


# -- verify: the records against what item 9 expects -----------------------------------------------------------

def _kind(rec) -> str:
    c = rec.config
    if c.get("memory_budget_gib"):
        return "forced-oom"
    if (rec.sweep or "") == "gpu-check-oom":
        return "near-limit-oom"
    return "healthy"


def verify(runs) -> list[dict]:
    """One dict per check: {point, check, ok, detail}. `runs`: RunRecords (the latest per run_id is used)."""
    from ovprof.config import optimizer_impl
    from ovprof.estimate import estimate
    from ovprof.results import record as R

    checks: list[dict] = []

    def check(point: str, name: str, ok: bool, detail: str = "") -> None:
        checks.append({"point": point, "check": name, "ok": bool(ok), "detail": detail})

    latest = list(R.latest(runs).values())
    kinds = {k: [r for r in latest if _kind(r) == k] for k in ("healthy", "forced-oom", "near-limit-oom")}
    for k, recs in kinds.items():
        check(k, "present", bool(recs), f"{len(recs)} record(s)")
    for rec in kinds["healthy"]:
        c, m = rec.config, rec.metrics
        point = f"zero {c['zero']} {c['loss_impl']}"
        err = (rec.error or {}).get("message", "")
        check(point, "status ok", rec.status == "ok", rec.status + (f": {err[:200]}" if err else ""))
        if rec.status != "ok":
            continue
        check(point, "mfu set", m.get("mfu") is not None, str(m.get("mfu") or rec.null_reasons.get("mfu")))
        missing = sorted(k for k, v in m.items() if v is None and not rec.null_reasons.get(k))
        check(point, "a reason on every null", not missing, ", ".join(missing) or "all nulls explained")
        at_reset, peak = m.get("reserved_at_reset_bytes"), m.get("peak_reserved_bytes")
        check(point, "reserved at reset <= peak reserved", at_reset is not None and peak is not None
              and at_reset <= peak, f"reset {at_reset}, peak {peak}, after warm-up {m.get('reserved_warmup_bytes')}")
        check(point, "no retries or OOMs in the timed steps", m.get("alloc_retries") == 0 and m.get("oom_count") == 0,
              f"retries {m.get('alloc_retries')}, ooms {m.get('oom_count')}")
        check(point, "no skipped steps", m.get("skipped_steps") == 0, str(m.get("skipped_steps")))
        t, tn = m.get("step_time_ms_median"), m.get("nvml_step_time_ms_median")
        ratio = (tn / t) if t and tn else None
        check(point, "NVML sampled its own steps", m.get("nvml_steps") and m.get("nvml_device_peak_bytes"),
              f"{m.get('nvml_steps')} steps, device peak {m.get('nvml_device_peak_bytes')}, process peak "
              f"{m.get('nvml_process_peak_bytes') or rec.null_reasons.get('nvml_process_peak_bytes')}; step time "
              f"{t} ms without the sampler, {tn} ms with it"
              + (f" (x{ratio:.3f}{', worth a note' if ratio > SAMPLER_OVERHEAD_NOTE else ''})" if ratio else ""))
        phase, start = m.get("tracked_phase_peak_bytes") or {}, m.get("tracked_start_breakdown_bytes") or {}
        if "optimizer" in phase and start:
            measured = phase["optimizer"] - sum(start.values())
            cfg = R.run_config(c)
            est = estimate(cfg, "fake", "flash").optimizer_bytes
            check(point, f"optimizer phase = estimate ({optimizer_impl(cfg)})",
                  abs(measured - est) <= OPTIMIZER_TERM_SLACK_BYTES, f"tracked {measured}, estimated {est}")
        else:
            check(point, "optimizer phase = estimate", False, "no tracked optimizer phase in the record")
    for k in ("forced-oom", "near-limit-oom"):
        for rec in kinds[k]:
            err = rec.error or {}
            check(f"{k} batch {rec.config['batch']}", "status oom", rec.status == "oom",
                  f"{rec.status}: {err.get('type', '')} {str(err.get('message', ''))[:200]}")
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("nvml", help="torch UUID vs NVML UUID; this process listed after an allocation")
    p.add_argument("--out", help="write the JSON here too")
    p = sub.add_parser("near-limit-batch", help="print a batch ~25%% above the estimated max batch of the device")
    p.add_argument("sweep_file")
    p.add_argument("--device-gib", type=float, help="device memory (default: torch's figure for GPU 0)")
    p = sub.add_parser("verify", help="check the records of bench/gpu-check.sh's sweeps")
    p.add_argument("store")
    p.add_argument("--out", help="write the checks as JSON here too")
    args = ap.parse_args(argv)

    if args.cmd == "near-limit-batch":
        print(near_limit_batch(args.sweep_file, args.device_gib))
        return 0
    if args.cmd == "nvml":
        out = nvml_check()
        text = json.dumps(out, indent=2, default=str)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0 if out["ok"] else 1
    from ovprof.results import record as R

    checks = verify(R.read_store(args.store).runs)
    for ch in checks:
        print(f"{'ok  ' if ch['ok'] else 'FAIL'}  {ch['point']:<24} {ch['check']:<40} {ch['detail']}")
    if args.out:
        Path(args.out).write_text(json.dumps(checks, indent=2) + "\n")
    failed = sum(not ch["ok"] for ch in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
