"""One measured run, in its own process (one per rank). Started by ovprof.runner.launch, not by hand.

    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \\
        python -m ovprof.runner.worker --spec spec.json --result-dir out/

Reads spec.json ({"config": ..., "ds_config": ...}), builds the model, calls
deepspeed.initialize, runs warm-up steps, then (on CUDA) empties the cache and
runs one untimed step, resets the allocator's peaks and counters, runs the
timed steps (nothing else running: no tracker, no Python hooks, no NVML
thread), then `NVML_STEPS` untimed steps with the NVML sampler (CUDA only) and
`TRACKED_STEPS` more under the tensor tracker for `peak_tracked_bytes`
(`measure_steps` has the order). Writes rank<r>.json into the
result dir with status ok, oom or error; the launcher turns the rank files
into one record. Exit codes: 0 ok, 3 oom, 1 error.
"""

from __future__ import annotations

import argparse
import signal
import json
import os
import sys
import time
import traceback
from pathlib import Path

TRACKED_STEPS = 2
PHASE_MARK = "[ovprof phase] "  # a log line that names the phase the worker enters (the launcher shows it)
PHASES = {
    "startup": "reading the spec",
    "imports": "importing torch and DeepSpeed",
    "init": "initialising the process group",
    "build": "building the model",
    "engine": "deepspeed.initialize (optimizer, ZeRO buffers)",
    "warmup": "warm-up steps",
    "settle": "one untimed step after emptying the CUDA cache",
    "timed": "timed steps",
    "nvml": "untimed steps sampled by NVML",
    "tracked": "tracked steps (tensor tracker)",
    "profile": "profiled steps (torch.profiler, module scopes; never timed)",
    "done": "writing the result",
}
NVML_STEPS = 3  # untimed steps the NVML sampler polls, after the timed ones (CUDA only)
EXIT_OK, EXIT_ERROR, EXIT_OOM = 0, 1, 3


# cudaErrorMemoryAllocation: the code torch.AcceleratorError carries for "CUDA error: out of memory".
CUDA_ERROR_MEMORY_ALLOCATION = 2
# What an allocation failure outside the caching allocator says, when no exception type tells it (lower case):
OOM_MESSAGES = (
    "defaultcpuallocator: can't allocate memory",  # the CPU allocator
    "cuda out of memory",  # the caching allocator, where torch.OutOfMemoryError is not raised (wrapped, re-raised)
    "cuda error: out of memory",  # the CUDA runtime (a kernel's workspace, a context, cudaMalloc outside torch)
    "cublas_status_alloc_failed",  # cuBLAS could not allocate its workspace or handle
)


def _is_oom_one(exc: BaseException) -> bool:
    import torch

    from ovprof.measure.memory import BUDGET_MESSAGE

    # torch.OutOfMemoryError since torch 2.5; torch.cuda.OutOfMemoryError is the same class, and older.
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(exc, (MemoryError, *oom_types)):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8: CUDA runtime errors, with a code
    if accelerator_error is not None and isinstance(exc, accelerator_error) \
            and getattr(exc, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION:
        return True
    if not isinstance(exc, RuntimeError):
        return False
    msg = str(exc).lower()
    if BUDGET_MESSAGE in str(exc) or any(m in msg for m in OOM_MESSAGES):
        return True
    # cuBLAS creates its handle lazily, at the first matmul on a device; on a full device that fails with
    # NOT_INITIALIZED (cuBLAS cannot allocate its context). Elsewhere NOT_INITIALIZED is not an OOM.
    if "cublas_status_not_initialized" in msg and "cublascreate" in msg:
        return True
    # NCCL: "unhandled cuda error" is any CUDA failure inside NCCL; its "Last error" names the cause.
    if "unhandled cuda error" in msg or "ncclunhandledcudaerror" in msg:
        # e.g. "Last error:\nCuda failure 2 'out of memory'" or "Failed to CUDA calloc 10485760 bytes"
        return any(m in msg for m in ("out of memory", "failed to cuda calloc", "failed to cuda malloc"))
    return False


def is_oom(exc: BaseException) -> bool:
    """Whether a failure means "this point does not fit in memory", by exception type where torch gives one,
    by message where it does not (cuBLAS, the CUDA runtime without a code, NCCL). Follows the chain of causes,
    so an OOM re-raised inside another exception still counts."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _is_oom_one(e):
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


def measure_steps(step, sync, *, steps: int, timer, monitors, nvml, sink, settle: bool,
                  skipped_steps=lambda: None, on_phase=lambda phase: None) -> None:
    """The measured part of a run, after warm-up, in this order (ovprof/measure/monitors.py):

    settle  (CUDA) synchronize; each monitor's prepare() (the allocator empties its cache); one untimed step,
            which fills the cache back to what a step needs; synchronize
    reset   each monitor's reset() (the allocator's peaks and accumulated counters, the RSS high-water mark)
    timed   `steps` steps, each ended by a synchronize; nothing else runs (no tracker, no NVML thread)
    read    the timer, the monitors, and how many timed steps fp16 loss scaling skipped
    nvml    NVML_STEPS untimed steps of the same kind with the NVML sampler polling, timed on their own
    """
    if settle:
        on_phase("settle")
        sync()
        for m in monitors:
            m.prepare()
        step()
        sync()
    for m in monitors:
        m.reset()
    on_phase("timed")
    skipped_before = skipped_steps()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        timer.add((time.perf_counter() - t0) * 1e3)
    skipped = None if skipped_before is None else skipped_steps() - skipped_before
    timer.read(sink)
    for m in monitors:
        m.read(sink)
    if skipped is None:
        sink.null("skipped_steps", "the engine does not count skipped steps (no skipped_steps attribute)")
    else:
        sink.set("skipped_steps", skipped)
        if skipped:
            # A skipped step ran forward and backward but no optimizer update: faster than a real one.
            sink.null("mfu", f"{skipped} of {steps} timed steps were skipped by fp16 loss scaling (overflow), so "
                             "the step times understate a training step; see skipped_steps")
    on_phase("nvml")
    nvml.sample(step, sync, NVML_STEPS, sink)


def _compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _attention_context(backend: str):
    """A context factory that pins scaled_dot_product_attention to `backend` (auto: torch chooses)."""
    import contextlib

    if backend == "auto":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    return lambda: sdpa_kernel(kernel)


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no orphaned workers after a kill -9).

    Called by the worker itself and, as preexec_fn, by the launcher for the process it starts."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass



# Modules DeepSpeed imports when installed but a worker never uses: `deepspeed.autotuning` tries `import mlflow`
# (with ovprof[mlflow] installed: ~2 s, and mlflow imports pandas and pyarrow, whose jemalloc starts a background
# thread, so the warm-start zygote could no longer fork). A None in sys.modules makes that import fail at once,
# which DeepSpeed handles (has_mlflow = False).
UNUSED_IMPORTS = ("mlflow",)


def skip_unused_imports() -> None:
    """Make DeepSpeed's optional imports of UNUSED_IMPORTS fail fast in this process (a worker, the zygote)."""
    for name in UNUSED_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]

class Runner:
    def __init__(self, spec: dict, result_dir: Path):
        from ovprof.config import from_mapping

        self.cfg = from_mapping(spec["config"])
        self.ds_config = spec["ds_config"]
        self.profile = spec.get("profile")  # `ovprof profile`: profile after warm-up instead of timing
        self.profile_result: dict | None = None
        self.result_dir = result_dir
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        from ovprof.measure.monitors import MetricSink

        self.sink = MetricSink()  # registered metrics only (ovprof/metrics.py)
        self.t_start = time.perf_counter()
        self._phase = "startup"

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        """Enter a start-up or run phase and say so in the log, so a slow start never reads as silence."""
        self._phase = name
        if self.rank == 0:
            elapsed = time.perf_counter() - self.t_start
            sys.stderr.write(f"{PHASE_MARK}{name}: {PHASES.get(name, name)} (+{elapsed:.1f} s)\n")
            sys.stderr.flush()

    def run(self) -> None:
        self.phase = "imports"
        import importlib

        skip_unused_imports()
        import torch

        import deepspeed
        from ovprof import objectives
        from ovprof.measure.monitors import AllocatorMonitor, NvmlMonitor, RssMonitor, StepTimer, read_tracker

        c = self.cfg.resolved()
        sink = self.sink
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(self.local_rank)
            device = torch.device("cuda", self.local_rank)
        else:
            device = torch.device("cpu")
        self.device = device
        budget = int(c.memory_budget_gib * 2**30) if c.memory_budget_gib else None
        if cuda and budget:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
        cpu_budget = budget if (budget and not cuda) else None

        if not cuda:
            # Intra-op threads = the cores this process may use (its share of them at world size > 1), set
            # explicitly so that step times do not depend on torch's own guess; recorded as torch_num_threads.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, local_world)))
        self.phase = "init"
        # DeepSpeed's CPU backend JIT-builds its shared-memory all-reduce (deepspeed_shm_comm) on first init,
        # 40-130 s under a lock file that a killed worker leaves behind, hanging every later worker. The op
        # serves inference all-reduce only (AutoTP), never ZeRO training, so ovprof never builds it.
        # (importlib: `import deepspeed.comm.torch as m` binds deepspeed.comm's attribute `torch`, which is torch.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        torch.manual_seed(c.seed)
        self.phase = "build"
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, enabled=c.zero == 3):
            model = objectives.build_model(c)
        self.phase = "engine"
        client_optimizer = None
        if c.optimizer_state_dtype == "bf16":  # Adam's first moment in bf16: ovprof's AdamW (ovprof/kernels/adamw.py)
            from ovprof.kernels.adamw import AdamWBf16Moment
            from ovprof.runner.deepspeed_config import ADAMW_PARAMS

            client_optimizer = AdamWBf16Moment(model.parameters(), **ADAMW_PARAMS)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               optimizer=client_optimizer, config=self.ds_config)
        if c.compile != "none":
            # DeepSpeed's own engine.compile (module.compile in place, inductor), after initialize: the hooks
            # ZeRO put on the module are in place when dynamo traces it, and the engine knows it is compiled.
            # Compilation itself happens lazily, in the first warm-up step.
            engine.compile(compile_kwargs={"mode": c.compile})
        if not c.single_rank_allreduce:  # world size 1 (validated): nothing to reduce
            engine.enable_backward_allreduce = False
        batch = objectives.make_batch(c, device, rank=self.rank)
        sink.set("startup_s", time.perf_counter() - self.t_start)
        # CPU step times depend on intra-op threads and on what else runs on the cores: record them.
        sink.set("torch_num_threads", torch.get_num_threads())

        attention = _attention_context(c.attention)

        def step() -> None:
            # one optimizer step: grad_accum micro-steps; DeepSpeed steps the optimizer at the last one only
            with attention():
                for _ in range(c.grad_accum):
                    loss = engine(**batch)
                    engine.backward(loss)
                    engine.step()

        sync = torch.cuda.synchronize if cuda else (lambda: None)
        cuda_device = device if cuda else None
        rss = RssMonitor()
        peak, mfu_reason = self._peak_tflops(c, cuda)
        timer = StepTimer(samples_per_step=c.batch * c.grad_accum * c.world_size,
                          flops_per_step=objectives.step_flops(c).total * c.grad_accum,
                          peak_tflops=peak, mfu_null_reason=mfu_reason)

        # Warm-up. Under a CPU budget the first step is tracked, so an over-budget point fails fast.
        self.phase = "warmup"
        first_step_s = None
        for i in range(c.warmup):
            if i == 0 and (c.compile != "none" or c.loss_impl == "compiled"):
                t0 = time.perf_counter()
                step()
                sync()
                first_step_s = time.perf_counter() - t0
            elif i == 0 and cpu_budget:
                self._tracked(engine, model, batch, budget=cpu_budget, attention=attention, accum=c.grad_accum)
            else:
                step()
        sync()
        if self.profile is not None:
            self.phase = "profile"
            from ovprof.runner.profiling import profile_steps

            self.profile_result = profile_steps(engine, model, batch, steps=int(self.profile.get("steps", 2)),
                                                trace_path=self.profile.get("trace") if self.rank == 0 else None,
                                                memory_snapshot_path=self.profile.get("memory_snapshot")
                                                if self.rank == 0 else None, cuda=cuda)
            self.phase = "done"
            return

        compiled = c.compile != "none" or c.loss_impl == "compiled"
        graphs_before = _compiled_graphs() if compiled else None
        measure_steps(step, sync, steps=c.steps, timer=timer, monitors=[AllocatorMonitor(cuda_device), rss],
                      nvml=NvmlMonitor(cuda_device, self.local_rank), sink=sink, settle=cuda,
                      skipped_steps=lambda: getattr(engine, "skipped_steps", None), on_phase=self._set_phase)

        if not compiled:
            sink.null("compile_s", "compile = none and loss_impl is not compiled")
            sink.null("recompiles_timed", "compile = none and loss_impl is not compiled")
            # Tracked steps: the exact live-tensor peak of a steady-state step.
            self.phase = "tracked"
            tr = None
            for _ in range(TRACKED_STEPS):
                tr = self._tracked(engine, model, batch, budget=cpu_budget, prev=tr, attention=attention,
                                   accum=c.grad_accum)
            read_tracker(tr, TRACKED_STEPS, sink)
        else:
            sink.set("compile_s", max(0.0, first_step_s - sink.values["step_time_ms_median"] / 1e3))
            sink.set("recompiles_timed", _compiled_graphs() - graphs_before)
            # Inductor's generated code allocates its buffers outside the dispatcher, where the tracker (a
            # TorchDispatchMode) cannot see them; a dispatch mode around compiled code also changes what runs.
            why = ("compile or loss_impl compiled: inductor's code allocates its buffers outside the dispatcher, invisible to the tensor "
                   "tracker; the memory is in peak_rss_steps_bytes (CPU) or peak_allocated_bytes (CUDA)")
            for name in ("peak_tracked_bytes", "tracked_breakdown_bytes", "tracked_phase_peak_bytes",
                         "tracked_start_breakdown_bytes", "tracked_steps"):
                sink.null(name, why)
        rss.read_life(sink)
        if c.breakdown:  # after every measured step: the hooks and the profiler never touch a timed one
            self.phase = "profile"
            from ovprof.runner.profiling import breakdown_metrics, profile_steps

            breakdown_metrics(profile_steps(engine, model, batch, steps=1, cuda=cuda), sink)
        sink.set("param_count", sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters()))
        self.phase = "done"

    def _set_phase(self, phase: str) -> None:
        self.phase = phase

    def _peak_tflops(self, c, cuda: bool) -> tuple[float | None, str | None]:
        if not cuda:
            return None, "no peak FLOP/s table entry for CPUs"
        import torch

        from ovprof.measure.hardware import peak_tflops

        name = torch.cuda.get_device_name(self.device)
        peak, reason = peak_tflops(name, c.precision)
        return peak, (None if peak is not None else reason or f"unknown GPU {name!r}")

    def _tracked(self, engine, model, batch, *, budget, attention, accum: int, prev=None):
        """One optimizer step (`accum` micro-steps) under the tensor tracker; keeps the higher of this and the
        previous tracked peak. Every micro-step's forward and backward count in their phases; the optimizer phase
        is the last micro-step's engine.step(), the one that steps (the earlier ones only advance the count)."""
        from ovprof.measure.memory import TensorTracker, adopt_training_state

        tr = TensorTracker(budget_bytes=budget)
        with tr:
            params, _ = adopt_training_state(tr, model, engine.optimizer, batch)
            tr.reset_peak()
            tr.watch_gradients(params)
            with attention():
                for i in range(accum):
                    with tr.phase("forward"):
                        loss = engine(**batch)
                    with tr.phase("backward"):
                        engine.backward(loss)
                    del loss
                    with tr.phase("optimizer" if i == accum - 1 else "backward"):
                        engine.step()
        if prev is not None and prev.peak_bytes > tr.peak_bytes:
            return prev
        return tr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result-dir", required=True)
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None)  # set by the deepspeed launcher
    args = ap.parse_args(argv)
    die_with_parent()  # under torchrun our parent is torchrun, which itself dies with the sweep
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    spec = json.loads(Path(args.spec).read_text())
    result_dir = Path(args.result_dir)
    runner = Runner(spec, result_dir)
    out = {"rank": runner.rank, "world_size": runner.world, "pid": os.getpid()}
    code = EXIT_OK
    try:
        runner.run()
        out["status"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a result
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        oom = not isinstance(exc, KeyboardInterrupt) and is_oom(exc)
        out["status"] = "oom" if oom else "error"
        out["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000], "phase": runner.phase,
                        "traceback_tail": tb[-3000:]}
        code = EXIT_OOM if oom else EXIT_ERROR
    if runner.profile_result is not None:
        out["profile"] = runner.profile_result
    out["metrics"] = runner.sink.values
    out["null_reasons"] = runner.sink.reasons
    try:
        from ovprof.measure.env import collect_env

        out["env"] = collect_env()
    except Exception as exc:  # noqa: BLE001 - env must never cost the result
        out["env"] = {"error": f"{type(exc).__name__}: {exc}"}
    result_dir.mkdir(parents=True, exist_ok=True)
    tmp = result_dir / f"rank{runner.rank}.json.tmp"
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, result_dir / f"rank{runner.rank}.json")
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_OK:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        return code
    # A failed rank may leave peers blocked in a collective: leave at once, the launcher reaps them.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
