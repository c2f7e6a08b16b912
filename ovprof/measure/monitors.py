"""One object per measurement source: each owns its reset, its read-out and the metric names it emits.

    sink = MetricSink()
    monitors = [AllocatorMonitor(device), RssMonitor()]
    for m in monitors: m.prepare()        # after warm-up, before one untimed step (CUDA: empty the cache)
    ... one untimed step ...
    for m in monitors: m.reset()          # right before the timed steps
    ... timed steps: nothing else runs ...
    for m in monitors: m.read(sink)       # right after them
    NvmlMonitor(device, local_rank).sample(step, sync, NVML_STEPS, sink)  # its own untimed steps

The worker (ovprof/runner/worker.py, `measure_steps`) drives them in that
order. NVML is polled by a background thread, so it never runs during the timed
steps: it samples separate untimed steps of the same kind after them, with the
caching allocator's pool as the timed steps left it, and times those steps so
that its overhead is on the record. A monitor whose source this machine lacks
(no CUDA: no caching allocator, no NVML) emits each of its registered metrics
as null with the reason, so a record never lacks a name and never holds a
guess. Every name goes through `MetricSink`, which refuses one that
ovprof/metrics.py does not declare.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ovprof import metrics as M

NO_CUDA = "no CUDA device: the CPU has no caching allocator or NVML"


class MetricSink:
    """The worker's metrics and their null reasons; only registered names get in."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}

    def set(self, name: str, value: Any) -> None:
        M.get(name)
        self.values[name] = value
        if value is not None:
            self.reasons.pop(name, None)

    def null(self, name: str, reason: str) -> None:
        M.get(name)
        self.values[name] = None
        self.reasons[name] = reason

    def null_source(self, source: str, reason: str) -> None:
        for name in M.names(source=source):
            self.null(name, reason)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class StepTimer:
    """The timed steps' wall times; median, spread, throughput and MFU from them."""

    source = "timer"

    def __init__(self, *, samples_per_step: int, flops_per_step: int, peak_tflops: float | None,
                 mfu_null_reason: str | None):
        self.samples_per_step, self.flops_per_step = samples_per_step, flops_per_step
        self.peak_tflops, self.mfu_null_reason = peak_tflops, mfu_null_reason
        self.times_ms: list[float] = []

    def add(self, ms: float) -> None:
        self.times_ms.append(ms)

    def read(self, sink: MetricSink) -> None:
        t = self.times_ms
        med = statistics.median(t)
        sink.set("step_times_ms", t)
        sink.set("step_time_ms_median", med)
        sink.set("step_time_ms_p10", percentile(t, 0.10))
        sink.set("step_time_ms_p90", percentile(t, 0.90))
        sink.set("step_time_ms_min", min(t))
        sink.set("step_time_ms_max", max(t))
        sink.set("samples_per_s", self.samples_per_step / (med / 1e3))
        # a timed step is one optimizer step: grad_accum micro-steps of `batch` on every rank
        sink.set("samples_per_optimizer_step", self.samples_per_step)
        sink.set("time_per_sample_ms", med / self.samples_per_step)
        sink.set("flops_per_step", self.flops_per_step)  # per rank, analytic model FLOPs
        tflops = self.flops_per_step / (med / 1e3) / 1e12
        sink.set("tflops_per_s", tflops)
        if self.peak_tflops is None:
            sink.null("mfu", self.mfu_null_reason or "no peak FLOP/s for this device")
        else:
            sink.set("mfu", tflops / self.peak_tflops)
            sink.set("peak_tflops", self.peak_tflops)


class AllocatorMonitor:
    """CUDA caching allocator: peak allocated/reserved, retries and OOMs over the timed steps.

    `torch.cuda.reset_peak_memory_stats` sets each peak to the current value, so memory cached during
    start-up and warm-up (ZeRO 1/2's flatten copy among it) would stay in `peak_reserved_bytes`; and it leaves
    `num_alloc_retries` / `num_ooms` alone. Hence `prepare()` empties the cache before one untimed step (which
    fills it back to what a step needs), and `reset()` resets the peaks and the accumulated counters."""

    source = "allocator"

    def __init__(self, device=None):
        self.device = device  # a CUDA device, or None on a machine without one
        self.reserved_warmup: int | None = None
        self.reserved_at_reset: int | None = None

    def prepare(self) -> None:
        """After warm-up, before the untimed step: release what start-up and warm-up left cached."""
        if self.device is not None:
            import torch

            torch.cuda.synchronize(self.device)
            self.reserved_warmup = int(torch.cuda.memory_reserved(self.device))
            torch.cuda.empty_cache()

    def reset(self) -> None:
        """Right before the timed steps: every peak and counter covers them only."""
        if self.device is not None:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.cuda.reset_accumulated_memory_stats(self.device)  # num_alloc_retries, num_ooms
            self.reserved_at_reset = int(torch.cuda.memory_reserved(self.device))

    def read(self, sink: MetricSink) -> None:
        if self.device is None:
            sink.null_source(self.source, NO_CUDA)
            return
        from ovprof.measure.memory import cuda_memory_metrics

        for k, v in cuda_memory_metrics(self.device).items():
            sink.set(k, v)
        for name, value in (("reserved_warmup_bytes", self.reserved_warmup),
                            ("reserved_at_reset_bytes", self.reserved_at_reset)):
            if value is None:
                sink.null(name, "no settle step before the timed steps")
            else:
                sink.set(name, value)


class NvmlMonitor:
    """NVML's process and device memory, sampled by a background thread (ovprof/measure/nvml.py) over untimed
    steps of their own, so the thread never polls the driver during the timed steps."""

    source = "nvml"

    def __init__(self, device=None, local_rank: int = 0, interval_s: float = 0.01):
        self.device, self.local_rank, self.interval_s = device, local_rank, interval_s

    def sample(self, step, sync, steps: int, sink: MetricSink) -> None:
        """Run `steps` steps with the sampler polling; emit its peaks and those steps' median time."""
        if self.device is None:
            sink.null_source(self.source, NO_CUDA)
            return
        from ovprof.measure.nvml import NvmlSampler, torch_device_uuids

        # NVML indexes ignore CUDA_VISIBLE_DEVICES: follow the torch device by UUID.
        times: list[float] = []
        with NvmlSampler(device_index=self.local_rank, uuid=torch_device_uuids(self.local_rank),
                         interval_s=self.interval_s) as s:
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
        for name, value in (("nvml_process_peak_bytes", s.process_peak_bytes),
                            ("nvml_device_peak_bytes", s.device_peak_bytes)):
            if value is None:
                sink.null(name, s.null_reason or "NVML gave no sample")
            else:
                sink.set(name, value)
        sink.set("nvml_steps", steps)
        sink.set("nvml_step_time_ms_median", statistics.median(times))


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0), so VmHWM covers what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class RssMonitor:
    """The kernel's accounting of the worker: RSS high-water mark over the timed steps, and over its life."""

    source = "os"

    def __init__(self) -> None:
        self._reset_ok = False

    def prepare(self) -> None:
        pass

    def reset(self) -> None:
        self._reset_ok = _reset_rss_peak()

    def read(self, sink: MetricSink) -> None:
        """The timed steps' peak (call right after them)."""
        hwm = _vm_hwm_bytes() if self._reset_ok else None
        if hwm is None:
            sink.null("peak_rss_steps_bytes", "cannot reset the RSS high-water mark (/proc/self/clear_refs)")
        else:
            sink.set("peak_rss_steps_bytes", hwm)

    def read_life(self, sink: MetricSink) -> None:
        """The whole worker's peak (call at the end)."""
        from ovprof.measure.memory import peak_rss_bytes_self

        sink.set("peak_rss_bytes", peak_rss_bytes_self())


def read_tracker(tr, steps: int, sink: MetricSink) -> None:
    """The tensor tracker's figures of the tracked steps (the highest of them)."""
    sink.set("peak_tracked_bytes", tr.peak_bytes)
    sink.set("tracked_breakdown_bytes", tr.peak_breakdown_bytes)
    sink.set("tracked_phase_peak_bytes", tr.phase_peak_bytes)  # forward / backward / optimizer
    sink.set("tracked_start_breakdown_bytes", tr.start_breakdown_bytes)  # resident at the step's start
    sink.set("tracked_steps", steps)
