"""Profiled steps in the worker: `torch.profiler` time and tracked memory by module group, after everything timed.

    ovprof profile --objective caption --encoder vit-debug --trace trace.json

Called by ovprof/runner/worker.py for `ovprof profile` (spec "profile") and for
runs with `breakdown=true`, always after the warm-up and (for a run) after the
timed, NVML and tracked steps, so the hooks and the profiler never touch a
timed step. One step runs under the tensor tracker with module scopes (memory
by group at the tracked peak), then `steps` under the profiler (time by group,
Chrome trace); the profiler does not run in the tracked step, so neither
disturbs the other's figures.
"""

from __future__ import annotations

from ovprof.measure import profile as P


def profile_steps(engine, model, batch, *, steps: int, trace_path: str | None = None, cuda: bool = False,
                  memory_snapshot_path: str | None = None) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ovprof.measure.memory import TensorTracker, adopt_training_state

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        with P.phase("forward"):
            loss = engine(**batch)
        with P.phase("backward"):
            engine.backward(loss)
        del loss
        with P.phase("optimizer"):
            engine.step()
        sync()

    # Memory: one step under the tracker, the module scopes naming each allocation's group.
    tr = TensorTracker()
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    by_group = P.param_groups(model, inner)
    group_of_param = {id(p): P.group_of_name(n) for n, p in model.named_parameters()}
    if cuda and memory_snapshot_path:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    with tr:
        params, _ = adopt_training_state(tr, model, engine.optimizer, batch)
        for g, ts in by_group.items():
            tr.reclassify(ts, None, g)
        tr.reclassify(list(batch.values()), None, "(inputs)")
        tr.reset_peak()
        tr.watch_gradients(params, group_of_param)
        with P.ModuleScopes(model, tracker=tr, record=False):
            with tr.phase("forward"):
                loss = engine(**batch)
            with tr.phase("backward"):
                engine.backward(loss)
            del loss
            with tr.phase("optimizer"):
                engine.step()
    sync()
    if cuda and memory_snapshot_path:
        torch.cuda.memory._dump_snapshot(memory_snapshot_path)
        torch.cuda.memory._record_memory_history(enabled=None)
    memory = P.memory_breakdown(tr)
    memory["by_kind"] = {k: v for k, v in tr.peak_breakdown_bytes.items() if v}

    # Time: `steps` steps under the profiler, the module scopes as record_function ranges.
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with P.ModuleScopes(model):
        with profile(activities=acts) as prof:
            for _ in range(steps):
                step()
    if trace_path:
        import os

        prof.export_chrome_trace(trace_path)
        if not os.path.exists(trace_path):  # kineto logs a failed write and carries on
            raise OSError(f"the profiler could not write the Chrome trace {trace_path}")
    time = P.time_breakdown(prof.events(), steps)
    return {"time_ms": time, "memory_bytes": memory}


def breakdown_metrics(result: dict, sink) -> None:
    """A run's `breakdown=true` figures: "group/column" -> ms per step, "group/kind" -> bytes at the tracked peak."""
    t = result["time_ms"]["groups"]
    sink.set("breakdown_time_ms", {f"{g}/{k}": round(v, 3) for g, row in t.items() for k, v in row.items()
                                   if v and k != "total"})
    m = result["memory_bytes"]["groups"]
    sink.set("breakdown_memory_bytes", {f"{g}/{k}": v for g, row in m.items() for k, v in row.items()
                                        if v and k != "total"})
