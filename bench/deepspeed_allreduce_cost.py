"""What DeepSpeed's gradient all-reduce costs at ZeRO 0 and world size 1, timed alone (docs/profile.md).

    PYTHONPATH=. taskset -c 0,1 python bench/deepspeed_allreduce_cost.py

The issue-17 setting (caption, vit-s16 at 112 px, mask 0.667, dec-l, vocabulary 32000, caption 32 tokens, batch 8,
fp32, ZeRO 0, 2 threads): one forward and backward with the engine's reduction off, then
`engine.allreduce_gradients()` five times on the gradients (flatten into one buffer, scale by 1/1, all-reduce
over one rank, copy back), beside a clone of the same gradients for scale. Prints one JSON line.
"""
import os, sys, time, json, statistics
sys.argv = ["x"]
os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29588"})
import importlib, torch, deepspeed
from ovprof import objectives
from ovprof.config import from_mapping
from ovprof.runner.deepspeed_config import build
torch.set_num_threads(2)
c = from_mapping({"objective": "caption", "encoder": "vit-s16", "res": 112, "mask_ratio": 0.667, "batch": 8, "caption_len": 32}).resolved()
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="gloo"); torch.set_num_threads(2)
model = objectives.build_model(c)
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=build(c))
engine.enable_backward_allreduce = False
batch = objectives.make_batch(c, torch.device("cpu"), rank=0)
engine.backward(engine(**batch))
grads = [p.grad for p in model.parameters() if p.grad is not None]
nbytes = sum(g.numel() * g.element_size() for g in grads)
ar, cp = [], []
for _ in range(5):
    t0 = time.perf_counter(); engine.allreduce_gradients(); ar.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter(); [g.clone() for g in grads]; cp.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"grad_bytes": nbytes, "allreduce_ms": ar, "allreduce_ms_median": statistics.median(ar),
                  "clone_grads_ms": cp, "clone_grads_ms_median": statistics.median(cp)}))
