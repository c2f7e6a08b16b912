"""One measured run, in its own process (one per rank). Started by ovprof.runner.launch, not by hand.

    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \\
        python -m ovprof.runner.worker --spec spec.json --result-dir out/

Reads spec.json ({"config": ..., "ds_config": ...}), builds the model, calls
deepspeed.initialize, runs warm-up steps, then timed steps (nothing else
running: no tracker, no Python hooks), then `TRACKED_STEPS` more steps under
the tensor tracker for `peak_tracked_bytes`. Writes rank<r>.json into the
result dir with status ok, oom or error; the launcher turns the rank files
into one record. Exit codes: 0 ok, 3 oom, 1 error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

TRACKED_STEPS = 2
EXIT_OK, EXIT_ERROR, EXIT_OOM = 0, 1, 3


def is_oom(exc: BaseException) -> bool:
    """Classify by exception type; the CPU allocator raises a plain RuntimeError with a fixed prefix."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(exc)
    from ovprof.measure.memory import BUDGET_MESSAGE

    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator: can't allocate memory" in msg
                                              or "CUDA out of memory" in msg or BUDGET_MESSAGE in msg)


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0), so VmHWM covers the timed steps."""
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


class Runner:
    def __init__(self, spec: dict, result_dir: Path):
        from ovprof.config import from_mapping

        self.cfg = from_mapping(spec["config"])
        self.ds_config = spec["ds_config"]
        self.result_dir = result_dir
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.metrics: dict = {}
        self.null_reasons: dict[str, str] = {}
        self.phase = "startup"
        self.t_start = time.perf_counter()

    def null(self, key: str, reason: str) -> None:
        self.metrics[key] = None
        self.null_reasons[key] = reason

    def run(self) -> None:
        import torch

        import deepspeed
        from ovprof.measure.memory import TensorTracker
        from ovprof.objectives import build_model, make_batch, step_flops

        c = self.cfg.resolved()
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

        self.phase = "init"
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        torch.manual_seed(c.seed)
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, enabled=c.zero == 3):
            model = build_model(c)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=self.ds_config)
        batch = make_batch(c, device, rank=self.rank)
        self.metrics["startup_s"] = time.perf_counter() - self.t_start
        # CPU step times depend on intra-op threads and on what else runs on the cores: record them.
        self.metrics["torch_num_threads"] = torch.get_num_threads()

        def step() -> None:
            loss = engine(**batch)
            engine.backward(loss)
            engine.step()

        sync = torch.cuda.synchronize if cuda else (lambda: None)

        sampler = None
        if cuda:
            from ovprof.measure.nvml import NvmlSampler

            from ovprof.measure.nvml import torch_device_uuid

            # NVML indexes ignore CUDA_VISIBLE_DEVICES: follow the torch device by UUID.
            sampler = NvmlSampler(device_index=self.local_rank, uuid=torch_device_uuid(self.local_rank))
            sampler.__enter__()

        # Warm-up. Under a CPU budget the first step is tracked, so an over-budget point fails fast.
        self.phase = "warmup"
        for i in range(c.warmup):
            if i == 0 and cpu_budget:
                self._tracked(engine, model, batch, step, budget=cpu_budget)
            else:
                step()
        sync()

        # Timed steps: nothing but the training step runs.
        self.phase = "timed"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            if sampler:
                sampler.reset()
        rss_reset = _reset_rss_peak()
        times_ms = []
        for _ in range(c.steps):
            t0 = time.perf_counter()
            step()
            sync()
            times_ms.append((time.perf_counter() - t0) * 1e3)
        self._timing(times_ms, step_flops(c).total, cuda)
        if cuda:
            from ovprof.measure.memory import cuda_memory_metrics

            self.metrics.update(cuda_memory_metrics(device))
            sampler.__exit__(None, None, None)
            self.metrics["nvml_process_peak_bytes"] = sampler.process_peak_bytes
            self.metrics["nvml_device_peak_bytes"] = sampler.device_peak_bytes
            for k in ("nvml_process_peak_bytes", "nvml_device_peak_bytes"):
                if self.metrics[k] is None:
                    self.null_reasons[k] = sampler.null_reason or "NVML gave no sample"
        else:
            for k in ("peak_allocated_bytes", "peak_reserved_bytes", "alloc_retries", "oom_count",
                      "nvml_process_peak_bytes", "nvml_device_peak_bytes"):
                self.null(k, "no CUDA device: the CPU has no caching allocator or NVML")
        hwm = _vm_hwm_bytes() if rss_reset else None
        if hwm is None:
            self.null("peak_rss_steps_bytes", "cannot reset the RSS high-water mark (/proc/self/clear_refs)")
        else:
            self.metrics["peak_rss_steps_bytes"] = hwm

        # Tracked steps: the exact live-tensor peak of a steady-state step.
        self.phase = "tracked"
        tr = None
        for _ in range(TRACKED_STEPS):
            tr = self._tracked(engine, model, batch, step, budget=cpu_budget, prev=tr)
        self.metrics["peak_tracked_bytes"] = tr.peak_bytes
        self.metrics["tracked_breakdown_bytes"] = tr.peak_breakdown_bytes
        self.metrics["tracked_phase_peak_bytes"] = tr.phase_peak_bytes  # forward / backward / optimizer
        self.metrics["tracked_start_breakdown_bytes"] = tr.start_breakdown_bytes  # resident at the step's start
        self.metrics["tracked_steps"] = TRACKED_STEPS

        from ovprof.measure.memory import peak_rss_bytes_self

        self.metrics["peak_rss_bytes"] = peak_rss_bytes_self()
        self.metrics["param_count"] = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
        self.phase = "done"

    def _tracked(self, engine, model, batch, step, *, budget, prev=None):
        """One step under the tensor tracker; keeps the higher of this and the previous tracked peak."""
        from ovprof.measure.memory import TensorTracker, optimizer_tensors

        params = list(model.parameters())
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        opt_state, opt_grads = optimizer_tensors(inner)
        ds_parts = [p.ds_tensor for p in params if hasattr(p, "ds_tensor")]
        grads = [p.grad for p in params if p.grad is not None] + opt_grads
        tr = TensorTracker(budget_bytes=budget)
        with tr:
            tr.adopt_existing(parameters=params + ds_parts, gradients=grads, optimizer_state=opt_state,
                              inputs=list(batch.values()))
            tr.reset_peak()
            tr.watch_gradients(params)
            with tr.phase("forward"):
                loss = engine(**batch)
            with tr.phase("backward"):
                engine.backward(loss)
            del loss
            with tr.phase("optimizer"):
                engine.step()
        if prev is not None and prev.peak_bytes > tr.peak_bytes:
            return prev
        return tr

    def _timing(self, times_ms: list[float], flops_per_step: int, cuda: bool) -> None:
        import statistics

        c = self.cfg.resolved()
        med = statistics.median(times_ms)
        m = self.metrics
        m["step_times_ms"] = times_ms
        m["step_time_ms_median"] = med
        m["step_time_ms_p10"] = _percentile(times_ms, 0.10)
        m["step_time_ms_p90"] = _percentile(times_ms, 0.90)
        m["step_time_ms_min"] = min(times_ms)
        m["step_time_ms_max"] = max(times_ms)
        m["samples_per_s"] = c.batch * c.world_size / (med / 1e3)
        m["flops_per_step"] = flops_per_step  # per rank, analytic model FLOPs (ovprof/objectives, ovprof/measure/flops.py)
        m["tflops_per_s"] = flops_per_step / (med / 1e3) / 1e12
        if not cuda:
            self.null("mfu", "no peak FLOP/s table entry for CPUs")
            return
        import torch

        from ovprof.measure.hardware import peak_tflops

        name = torch.cuda.get_device_name(self.device)
        peak, reason = peak_tflops(name, c.precision)
        if peak is None:
            self.null("mfu", reason or f"unknown GPU {name!r}")
        else:
            m["mfu"] = m["tflops_per_s"] / peak
            m["peak_tflops"] = peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result-dir", required=True)
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None)  # set by the deepspeed launcher
    args = ap.parse_args(argv)
    from ovprof.runner.launch import die_with_parent

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
    out["metrics"] = runner.metrics
    out["null_reasons"] = runner.null_reasons
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
