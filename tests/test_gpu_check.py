"""bench/gpu-check.sh cannot rot: its dry run validates every command on this CPU machine, and the verdict's
logic (bench/gpu_check.py verify) is checked against records built here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from ovprof.config import RunConfig
from ovprof.results import record as R

from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu-check.sh"
# The checks of issue 18, item 9 (stage 1) and issue 16, item 5 (stage 2), by the names the script gives them.
CHECKS = ("env", "nvml", "pytest-gpu", "healthy", "forced-oom", "near-limit", "verify",
          "families", "fused-ce", "paper-l14", "report")  # stage 2: issue 16, item 5


def dry_run(tmp_path, python=sys.executable, *extra):
    env = dict(os.environ, PYTHON=str(python), PYTHONPATH=str(ROOT))
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), *extra], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_validates_every_check_and_writes_nothing(tmp_path):
    r = dry_run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in CHECKS:
        assert f"== {name}: " in r.stdout, name
    assert r.stdout.count("   valid (checked by: ") == len(CHECKS)
    assert "sweep run bench/gpu-check.toml" in r.stdout and "--memory-budget 1" in r.stdout
    assert "-m pytest -q -m gpu" in r.stdout and "dry run: 0 invalid" in r.stdout
    for study in ("gpu-families", "gpu-fused-ce", "gpu-paper-l14"):  # stage 2: one store, its report beside
        assert f"sweep run bench/{study}.toml --store {tmp_path / 'out'}/study.jsonl" in r.stdout, study
    assert f"report {tmp_path / 'out'}/study.jsonl --out {tmp_path / 'out'}/report" in r.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_fails_when_a_command_would_not_run(tmp_path):
    # a Python whose pytest finds no GPU tests: the pytest-gpu check is invalid, the rest still validated
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --collect-only ] && exit 5; done\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    r = dry_run(tmp_path, fake, "--only", "env,pytest-gpu")  # the two checks alone (--only): the rest is slow
    assert r.returncode == 1 and "INVALID" in r.stdout and "dry run: 1 invalid" in r.stdout, r.stdout
    assert "== env: " in r.stdout and "== healthy: " not in r.stdout


def test_the_script_names_each_check_once():
    """--only's list is the checks the script runs, in order, and the ones this file expects."""
    import re

    text = SCRIPT.read_text()
    listed = re.search(r"^ALL_CHECKS=\((.*)\)$", text, re.M).group(1).split()
    run = re.findall(r"^check ([a-z0-9-]+) -- ", text, re.M)
    assert listed == run == list(CHECKS)
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown check 'nope'" in r.stderr


def test_default_output_directory_is_reports_gpu_date():
    text = SCRIPT.read_text()
    assert 'OUT="${OUT:-reports/gpu/$(date +%Y-%m-%d)}"' in text


# -- the verdict ---------------------------------------------------------------------------------------------

def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def healthy(zero: int, loss_impl: str, **over) -> R.RunRecord:
    from ovprof.estimate import estimate

    cfg = RunConfig(encoder="vit-debug", precision="bf16", batch=32, steps=10, warmup=3, zero=zero,
                    loss_impl=loss_impl, bucket_elems=5_000_000)
    start = {"parameters": 1000, "optimizer_state": 5000}
    metrics = {"step_time_ms_median": 10.0, "mfu": 0.02, "peak_reserved_bytes": 3 << 30,
               "reserved_at_reset_bytes": 2 << 30, "reserved_warmup_bytes": 9 << 30, "alloc_retries": 0,
               "oom_count": 0, "skipped_steps": 0, "nvml_steps": 3, "nvml_step_time_ms_median": 10.2,
               "nvml_device_peak_bytes": 4 << 30, "nvml_process_peak_bytes": None,
               "tracked_start_breakdown_bytes": start,
               "tracked_phase_peak_bytes": {"optimizer": 6000 + estimate(cfg, "fake", "flash").optimizer_bytes}}
    metrics.update(over)
    reasons = {k: "because" for k, v in metrics.items() if v is None}
    return R.RunRecord(run_id=cfg.run_id, status="ok", config=cfg.resolved().to_dict(), metrics=metrics,
                       null_reasons=reasons, sweep="gpu-check")


def oom(budget: float | None, status: str = "oom") -> R.RunRecord:
    cfg = RunConfig(encoder="vit-debug", precision="bf16", batch=256 if budget else 3000, memory_budget_gib=budget)
    return R.RunRecord(run_id=cfg.run_id, status=status, config=cfg.resolved().to_dict(), sweep="gpu-check-oom",
                       error={"type": "OutOfMemoryError", "message": "CUDA out of memory"})


def failed(checks):
    return [(c["point"], c["check"]) for c in checks if not c["ok"]]


def test_verdict_passes_on_good_records():
    gc = _gpu_check()
    checks = gc.verify([healthy(0, "eager"), healthy(3, "triton"), oom(1.0), oom(None)])
    assert failed(checks) == []
    assert {c["check"] for c in checks} >= {"status ok", "mfu set", "a reason on every null",
                                            "reserved at reset <= peak reserved", "status oom",
                                            "optimizer phase = estimate (forloop)", "NVML sampled its own steps"}


@pytest.mark.parametrize("records, expected", [
    ([healthy(0, "eager"), oom(1.0), oom(None, status="error")], ("near-limit-oom batch 3000", "status oom")),
    ([healthy(0, "eager", mfu=None), oom(1.0), oom(None)], ("zero 0 eager", "mfu set")),
    ([healthy(0, "eager", reserved_at_reset_bytes=4 << 30), oom(1.0), oom(None)],
     ("zero 0 eager", "reserved at reset <= peak reserved")),
    ([healthy(0, "eager", tracked_phase_peak_bytes={"optimizer": 10**9}), oom(1.0), oom(None)],
     ("zero 0 eager", "optimizer phase = estimate (forloop)")),
    ([healthy(0, "eager"), oom(None)], ("forced-oom", "present")),
])
def test_verdict_fails_on_what_item_9_forbids(records, expected):
    assert failed(_gpu_check().verify(records)) == [expected]


def test_a_null_without_a_reason_fails_the_verdict():
    rec = healthy(0, "eager")
    rec.null_reasons.clear()
    assert failed(_gpu_check().verify([rec, oom(1.0), oom(None)])) == [("zero 0 eager", "a reason on every null")]


def test_near_limit_batch_is_above_what_the_estimate_says_fits():
    from ovprof.estimate import max_batch
    from ovprof.sweep.spec import expand, load

    gc = _gpu_check()
    (plan,) = expand(load(ROOT / "bench" / "gpu-check-oom.toml")).plans
    fits, _ = max_batch(plan.config, 80 << 30, "analytic", "flash")
    assert gc.near_limit_batch(str(ROOT / "bench" / "gpu-check-oom.toml"), 80) == -(-fits * 5 // 4) > fits
