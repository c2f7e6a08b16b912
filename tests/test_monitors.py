"""The measured part of a run on CUDA, proved on the CPU with a fake torch.cuda and a fake NVML (issue 18, items 1,
2 and 6): the cache is emptied and one untimed step runs before the peaks and counters are reset; the NVML thread
never polls during the timed steps; skipped fp16 steps are counted and flag the timing."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

from ovprof import metrics as M
from ovprof.measure.monitors import AllocatorMonitor, MetricSink, NvmlMonitor, RssMonitor, StepTimer
from ovprof.runner.worker import NVML_STEPS, measure_steps

from test_nvml import FakeNvml, me

DEVICE = "cuda:0"  # only ever handed to the fakes


class Log:
    def __init__(self):
        self.events: list[str] = []

    def __call__(self, name):
        def record(*args, **kwargs):
            self.events.append(name)
        return record


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's memory calls, recorded in order; memory_reserved falls when the cache is emptied."""
    log = Log()
    reserved = {"bytes": 9 << 30}  # start-up and warm-up left 9 GiB cached

    def empty_cache():
        log.events.append("empty_cache")
        reserved["bytes"] = 2 << 30

    def memory_reserved(device=None):
        log.events.append("memory_reserved")
        return reserved["bytes"]

    stats = {"allocated_bytes.all.peak": 1 << 30, "reserved_bytes.all.peak": 3 << 30, "num_alloc_retries": 0,
             "num_ooms": 0}
    for name in ("synchronize", "reset_peak_memory_stats", "reset_accumulated_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, log(name))
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "memory_reserved", memory_reserved)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device=None: dict(stats))
    return log


@pytest.fixture
def fake_nvml(monkeypatch):
    fake = FakeNvml(used_bytes=[5 << 30] * 100_000, processes=[[me(4 << 30)]] * 100_000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def nvml_thread_alive() -> bool:
    return any(t.name == "ovprof-nvml" and t.is_alive() for t in threading.enumerate())


def run(fake_cuda, fake_nvml, *, steps=4, skipped=None, skip_at=None):
    sink = MetricSink()
    seen = {"timed": [], "nvml": []}
    phase = {"now": "warmup"}

    def step():
        fake_cuda.events.append(f"step:{phase['now']}")
        if phase["now"] in seen:
            time.sleep(0.03)  # several sampler intervals (10 ms)
            seen[phase["now"]].append((nvml_thread_alive(), fake_nvml.memory_calls))
        if skip_at is not None and phase["now"] == "timed" and len(seen["timed"]) == skip_at:
            skipped["n"] += 1  # loss-scale overflow: DeepSpeed skips this step's update

    timer = StepTimer(samples_per_step=2, flops_per_step=10**9, peak_tflops=100.0, mfu_null_reason=None)
    measure_steps(step, torch.cuda.synchronize, steps=steps, timer=timer,
                  monitors=[AllocatorMonitor(DEVICE), RssMonitor()], nvml=NvmlMonitor(DEVICE, 0), sink=sink,
                  settle=True, skipped_steps=(lambda: None) if skipped is None else (lambda: skipped["n"]),
                  on_phase=lambda p: phase.__setitem__("now", p))
    return sink, seen


def test_cache_emptied_and_one_untimed_step_before_the_resets(fake_cuda, fake_nvml):
    sink, _ = run(fake_cuda, fake_nvml)
    ev = [e for e in fake_cuda.events if e != "memory_reserved"]
    first_timed = ev.index("step:timed")
    assert ev[:first_timed] == ["synchronize", "synchronize", "empty_cache", "step:settle", "synchronize",
                                "synchronize", "reset_peak_memory_stats", "reset_accumulated_memory_stats"]
    assert ev[first_timed:].count("step:timed") == 4
    assert not {"empty_cache", "reset_peak_memory_stats"} & set(ev[first_timed:])  # nothing resets later
    v = sink.values
    # what start-up left cached is on the record, beside the pool the timed steps started from
    assert (v["reserved_warmup_bytes"], v["reserved_at_reset_bytes"]) == (9 << 30, 2 << 30)
    assert (v["peak_reserved_bytes"], v["alloc_retries"], v["oom_count"]) == (3 << 30, 0, 0)


def test_the_nvml_sampler_never_polls_during_timed_steps(fake_cuda, fake_nvml):
    sink, seen = run(fake_cuda, fake_nvml)
    assert [alive for alive, _ in seen["timed"]] == [False] * 4
    assert {calls for _, calls in seen["timed"]} == {0}  # not one NVML query while timing
    # it samples its own untimed steps instead, after the timed ones, and says how many and how fast
    assert len(seen["nvml"]) == NVML_STEPS and all(alive for alive, _ in seen["nvml"])
    assert fake_nvml.memory_calls >= NVML_STEPS
    v = sink.values
    assert (v["nvml_device_peak_bytes"], v["nvml_process_peak_bytes"], v["nvml_steps"]) == (5 << 30, 4 << 30, 3)
    assert v["nvml_step_time_ms_median"] >= 30 and len(v["step_times_ms"]) == 4
    assert not nvml_thread_alive() and fake_nvml.shutdown_calls == 1


def test_skipped_fp16_steps_are_counted_and_flag_the_timing(fake_cuda, fake_nvml):
    sink, _ = run(fake_cuda, fake_nvml, skipped={"n": 3}, skip_at=2)  # 3 skipped in warm-up: not counted
    assert sink.values["skipped_steps"] == 1
    assert sink.values["mfu"] is None and "1 of 4 timed steps were skipped" in sink.reasons["mfu"]
    sink, _ = run(fake_cuda, fake_nvml, skipped={"n": 0})
    assert sink.values["skipped_steps"] == 0 and sink.values["mfu"] is not None


def test_without_cuda_every_allocator_and_nvml_metric_is_null_with_a_reason():
    sink = MetricSink()
    calls = []
    timer = StepTimer(samples_per_step=2, flops_per_step=10**9, peak_tflops=None, mfu_null_reason="cpu")
    measure_steps(lambda: calls.append(1), lambda: None, steps=2, timer=timer,
                  monitors=[AllocatorMonitor(None), RssMonitor()], nvml=NvmlMonitor(None), sink=sink, settle=False,
                  skipped_steps=lambda: 0)
    assert len(calls) == 2  # CPU: no settle step, no NVML steps
    for name in M.names(source="allocator") + M.names(source="nvml"):
        assert sink.values[name] is None and sink.reasons[name], name
    assert sink.values["skipped_steps"] == 0


def test_every_name_the_monitors_emit_is_registered():
    names = {"reserved_warmup_bytes", "reserved_at_reset_bytes", "nvml_steps", "nvml_step_time_ms_median",
             "skipped_steps"}
    assert names <= set(M.REGISTRY)
    assert all(M.get(n).cuda_only for n in names - {"skipped_steps"})
