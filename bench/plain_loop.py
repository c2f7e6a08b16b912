"""The same model trained by a plain PyTorch loop (AdamW, no DeepSpeed), timed like ovprof's worker.

    PYTHONPATH=. python bench/plain_loop.py --encoder vit-s16 --res 112 --mask-ratio 0.667 --set decoder=dec-l \\
        --set caption_len=32 --batch 8 --threads 2 --steps 5 --warmup 2 [--profile trace.json]
    ovprof run   --encoder vit-s16 --res 112 --mask-ratio 0.667 --set decoder=dec-l --set caption_len=32 \\
        --batch 8 --steps 5 --warmup 2          # side by side (taskset -c 0,1 for both), then compare medians

A benchmark, not a test (docs/profile.md has the comparison). The model and the
batch come from ovprof.objectives (`build_model`, `make_batch`) for the same
RunConfig, the optimizer is torch's AdamW with the hyper-parameters and the
implementation (`foreach`) of ovprof's DeepSpeed config; the step is
forward, backward, optimizer.step, zero_grad(set_to_none=True). Timing: warm-up
steps, then each timed step's wall time (perf_counter), median and p10/p90,
as the worker's StepTimer. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", default="caption")
    ap.add_argument("--encoder", default="vit-debug")
    ap.add_argument("--res", type=int, default=0)
    ap.add_argument("--mask-ratio", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: the cores this process may use, "
                                                           "as the worker)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="any RunConfig field, k=v")
    ap.add_argument("--interleave", action="store_true", help="also build the DeepSpeed engine exactly as ovprof's "
                    "worker does (same model, batch and ds_config) and alternate its steps with the plain loop's, "
                    "so both see the same machine load; prints both medians and their ratio")
    ap.add_argument("--no-allreduce", action="store_true", help="with --interleave: a third loop, the engine with "
                    "enable_backward_allreduce=False (ovprof's single_rank_allreduce=false: no reduction over one rank)")
    ap.add_argument("--profile", default=None, metavar="TRACE", help="after timing, 2 steps under torch.profiler "
                    "with ovprof's module scopes; print the per-group table and write the Chrome trace")
    a = ap.parse_args(argv)

    import torch

    from ovprof import objectives
    from ovprof.config import from_mapping, optimizer_impl, parse_set

    values = {"objective": a.objective, "encoder": a.encoder, "res": a.res, "mask_ratio": a.mask_ratio,
              "batch": a.batch, "steps": a.steps, "warmup": a.warmup, **parse_set(a.set_)}
    c = from_mapping(values, source="command line").resolved()
    if c.precision != "fp32" or c.world_size != 1:
        sys.exit("plain_loop: fp32 at world size 1 only (the comparison ovprof's ZeRO 0 makes)")
    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(c.seed)
    model = objectives.build_model(c)
    batch = objectives.make_batch(c, torch.device("cpu"), rank=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.2,
                            foreach=optimizer_impl(c) == "foreach")

    def step():
        loss = model(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    loops = {"plain": step}
    if a.interleave:
        loops["deepspeed"] = _deepspeed_step(c, no_allreduce=False)
        if a.no_allreduce:
            loops["deepspeed_no_allreduce"] = _deepspeed_step(c, no_allreduce=True)
    for _ in range(c.warmup):
        for f in loops.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(c.steps):
        order = list(loops)
        for k in order[i % len(order):] + order[:i % len(order)]:  # rotate who goes first
            t0 = time.perf_counter()
            loops[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {"loop": "plain", **_stats(times["plain"]), "torch_num_threads": torch.get_num_threads(),
           "config": {k: v for k, v in c.to_dict().items()}}
    if a.interleave:
        for k in loops:
            if k != "plain":
                out[k] = _stats(times[k])
                out[f"{k}_over_plain"] = out[k]["step_time_ms_median"] / out["step_time_ms_median"]
    if a.profile:
        from ovprof.runner.profiling import profile_steps

        class Engine:  # the three calls profile_steps makes, on the plain loop
            optimizer = opt

            def __call__(self, **b):
                return model(**b)

            def backward(self, loss):
                loss.backward()

            def step(self):
                opt.step()
                opt.zero_grad(set_to_none=True)

        res = profile_steps(Engine(), model, batch, steps=2, trace_path=a.profile)
        out["profile"] = res
    print(json.dumps(out))
    return 0


def _stats(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"step_time_ms_median": statistics.median(times), "step_time_ms_p10": q[0], "step_time_ms_p90": q[-1],
            "step_times_ms": [round(t, 1) for t in times]}


def _deepspeed_step(c, *, no_allreduce: bool):
    """The worker's step (ovprof/runner/worker.py): the same ds_config, engine(**batch), backward, step."""
    import importlib

    import torch

    import deepspeed
    from ovprof import objectives
    from ovprof.runner.deepspeed_config import build

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29577"}.items():
        os.environ.setdefault(k, v)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    threads = torch.get_num_threads()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(threads)
    torch.manual_seed(c.seed)
    model = objectives.build_model(c)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=build(c))
    if no_allreduce:
        engine.enable_backward_allreduce = False
    batch = objectives.make_batch(c, torch.device("cpu"), rank=0)

    def step():
        loss = engine(**batch)
        engine.backward(loss)
        engine.step()
    return step


if __name__ == "__main__":
    sys.exit(main())
