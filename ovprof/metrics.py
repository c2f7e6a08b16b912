"""The metric registry: every figure a record's `metrics` block can hold, declared once.

    python -c "from ovprof import metrics; print([m.name for m in metrics.gateable('memory')])"

A metric's name carries its unit (`_ms`, `_bytes`, `_s`; GiB = 2^30 bytes
wherever a report converts). Each declaration says where the figure comes from
(`source`: the worker's monitor that emits it), how the ranks of a multi-rank
run are merged into the record (`merge`), whether `ovprof check` may gate on
it, whether only a CUDA device can measure it, and how reports label and format
it. Producers (ovprof/measure/monitors.py, the worker, the launcher) emit only
registered names; the rank merge (ovprof/results/record.py), the gate's metric
list (ovprof/check), report columns and the run summary read this table.

Adding a metric: one `Metric(...)` line below, and its producer. Nothing else.
Pure data, no torch: `ovprof --help` and the gate stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where a figure is measured: one monitor object per source in the worker.
SOURCES = ("timer", "tracker", "allocator", "nvml", "os", "analytic", "hardware", "runtime", "launcher", "profiler")

# How a multi-rank run's per-rank values become the record's value:
#   max      the largest over ranks (memory per device: the device that runs out first)
#   sum      the total over ranks
#   rank0    rank 0's value (the same on every rank, or a property of the launch)
#   slowest  taken whole from the rank with the highest median step time, so that its median,
#            percentiles and step list stay consistent with each other
#   at_peak  taken whole from the rank with the highest peak_tracked_bytes (breakdowns of that peak)
MERGES = ("max", "sum", "rank0", "slowest", "at_peak")

# What a value is: a number (int or float, or null), a list of numbers, or a name -> number breakdown.
SHAPES = ("scalar", "list", "breakdown")


@dataclass(frozen=True)
class Metric:
    name: str  # with its unit, as stored in the record
    unit: str  # ms | s | bytes | count | ratio | 1/s | TFLOP/s | FLOP | threads
    source: str  # one of SOURCES
    merge: str  # one of MERGES
    label: str  # for tables and summaries
    gate: str | None = None  # "memory" or "time": `ovprof check` may gate on it; None: never
    cuda_only: bool = False  # null on a machine without CUDA (with the source's reason)
    shape: str = "scalar"  # one of SHAPES
    integer: bool = False  # a count of bytes, steps, threads...: stored as an int
    report_key: str | None = None  # a memory source the report shows, by this short name in its column names

    def format(self, value) -> str:
        """The value for a human, in the metric's unit ('-' for null)."""
        if value is None:
            return "-"
        if self.shape != "scalar":
            return str(value)
        if self.unit == "bytes":
            return f"{value / 2**30:.3f} GiB"
        if self.unit == "ms":
            return f"{value:.1f} ms"
        if self.unit == "s":
            return f"{value:.2f} s"
        if self.integer:
            return f"{int(value):,}"
        return f"{value:.3g}"


_ALL = (
    # timer: the timed steps, nothing else in the loop (no tracker, no NVML sampler)
    Metric("step_times_ms", "ms", "timer", "slowest", "every timed step", shape="list"),
    Metric("step_time_ms_median", "ms", "timer", "slowest", "step time median", gate="time"),
    Metric("step_time_ms_p10", "ms", "timer", "slowest", "step time p10"),
    Metric("step_time_ms_p90", "ms", "timer", "slowest", "step time p90"),
    Metric("step_time_ms_min", "ms", "timer", "slowest", "step time min"),
    Metric("step_time_ms_max", "ms", "timer", "slowest", "step time max"),
    Metric("samples_per_s", "1/s", "timer", "slowest", "samples per second (all ranks)"),
    Metric("samples_per_optimizer_step", "count", "timer", "rank0", "samples per optimizer step (all ranks)",
           integer=True),
    Metric("time_per_sample_ms", "ms", "timer", "slowest", "step time median per sample (all ranks)"),
    Metric("tflops_per_s", "TFLOP/s", "timer", "slowest", "model TFLOP/s per device"),
    Metric("mfu", "ratio", "timer", "slowest", "model FLOPs utilisation"),
    # analytic: from the formulas, not measured
    Metric("flops_per_step", "FLOP", "analytic", "rank0", "model FLOPs per step per rank", integer=True),
    Metric("param_count", "count", "analytic", "rank0", "parameters", integer=True),
    Metric("peak_tflops", "TFLOP/s", "hardware", "rank0", "device peak TFLOP/s (cited table)", cuda_only=True),
    # tensor tracker: the exact live-tensor peak of a steady-state step
    Metric("peak_tracked_bytes", "bytes", "tracker", "max", "tracked tensors", gate="memory", integer=True,
           report_key="tracked"),
    Metric("tracked_breakdown_bytes", "bytes", "tracker", "at_peak", "tracked peak by kind", shape="breakdown"),
    Metric("tracked_phase_peak_bytes", "bytes", "tracker", "at_peak", "tracked peak by phase", shape="breakdown"),
    Metric("tracked_start_breakdown_bytes", "bytes", "tracker", "at_peak", "resident at the step's start",
           shape="breakdown"),
    Metric("tracked_steps", "count", "tracker", "rank0", "tracked steps", integer=True),
    # profiled step(s) after everything measured, only with breakdown=true (ovprof/runner/profiling.py)
    Metric("breakdown_time_ms", "ms", "profiler", "rank0", "time per step by module group/phase",
           shape="breakdown"),
    Metric("breakdown_memory_bytes", "bytes", "profiler", "at_peak", "tracked peak by module group/kind",
           shape="breakdown"),
    # the operating system's accounting of the worker process
    Metric("peak_rss_bytes", "bytes", "os", "max", "process RSS", gate="memory", integer=True, report_key="rss"),
    Metric("peak_rss_steps_bytes", "bytes", "os", "max", "process RSS (timed steps)", gate="memory", integer=True),
    # CUDA caching allocator (torch.cuda.memory_stats)
    Metric("peak_allocated_bytes", "bytes", "allocator", "max", "CUDA allocated", gate="memory",
           cuda_only=True, integer=True, report_key="allocated"),
    Metric("peak_reserved_bytes", "bytes", "allocator", "max", "CUDA reserved", gate="memory",
           cuda_only=True, integer=True, report_key="reserved"),
    Metric("alloc_retries", "count", "allocator", "max", "CUDA allocation retries", cuda_only=True, integer=True),
    Metric("oom_count", "count", "allocator", "max", "CUDA OOMs caught by the allocator", cuda_only=True,
           integer=True),
    Metric("reserved_warmup_bytes", "bytes", "allocator", "max", "CUDA reserved after warm-up (before empty_cache)",
           cuda_only=True, integer=True),
    Metric("reserved_at_reset_bytes", "bytes", "allocator", "max", "CUDA reserved at the reset (after one step)",
           cuda_only=True, integer=True),
    # NVML, sampled by a background thread over untimed steps of its own, after the timed ones
    Metric("nvml_process_peak_bytes", "bytes", "nvml", "max", "NVML process", gate="memory", cuda_only=True,
           integer=True, report_key="nvml_process"),
    Metric("nvml_device_peak_bytes", "bytes", "nvml", "max", "NVML device", gate="memory", cuda_only=True,
           integer=True),
    Metric("nvml_steps", "count", "nvml", "rank0", "untimed steps NVML sampled", cuda_only=True, integer=True),
    Metric("nvml_step_time_ms_median", "ms", "nvml", "max", "step time median with the NVML sampler", cuda_only=True),
    # the worker's own life
    Metric("startup_s", "s", "runtime", "rank0", "start-up (imports, engine)"),
    Metric("torch_num_threads", "threads", "runtime", "rank0", "torch intra-op threads", integer=True),
    Metric("compile_s", "s", "runtime", "max", "compilation (first warm-up step less a timed step's median)"),
    Metric("recompiles_timed", "count", "runtime", "max", "graphs compiled after warm-up (should be 0)",
           integer=True),
    Metric("skipped_steps", "count", "runtime", "max", "timed steps skipped by fp16 loss scaling", integer=True),
    # the launcher, in the parent: wall time not spent in timed steps
    Metric("overhead_s", "s", "launcher", "rank0", "overhead beyond the timed steps"),
)

REGISTRY: dict[str, Metric] = {m.name: m for m in _ALL}
assert len(REGISTRY) == len(_ALL), "a metric is declared twice"
assert all(m.source in SOURCES and m.merge in MERGES and m.shape in SHAPES for m in _ALL)


def get(name: str) -> Metric:
    """The declaration of `name`; KeyError (naming the registry) for an unregistered metric."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a registered metric (ovprof/metrics.py)") from None


def names(*, source: str | None = None, cuda_only: bool | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in _ALL if (source is None or m.source == source)
                 and (cuda_only is None or m.cuda_only == cuda_only))


def gateable(kind: str = "memory") -> tuple[Metric, ...]:
    """Metrics `ovprof check` may gate on: kind "memory" (bytes, --metric) or "time" (--time-tolerance)."""
    return tuple(m for m in _ALL if m.gate == kind)


def memory_metrics() -> tuple[str, ...]:
    """Every per-device byte peak a record can carry, in declaration order."""
    return tuple(m.name for m in gateable("memory"))


def report_sources() -> dict[str, Metric]:
    """The memory sources a report shows side by side: short key -> metric, in declaration order."""
    return {m.report_key: m for m in _ALL if m.report_key}
