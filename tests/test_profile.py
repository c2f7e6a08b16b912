"""`ovprof profile` and the module-group breakdown: time by group and phase, a trace, memory that adds up."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, ovprof


def _tiny_model(objective="caption", **kw):
    from ovprof import objectives
    from ovprof.config import RunConfig

    c = RunConfig(**{**TINY, "objective": objective, **kw}).resolved()
    torch.manual_seed(0)
    return objectives.build_model(c), objectives.make_batch(c, torch.device("cpu"), rank=0)


class _Engine:
    """The three calls the worker makes on a DeepSpeed engine, on a plain model and AdamW."""

    def __init__(self, model):
        self.module = model
        self.optimizer = torch.optim.AdamW(model.parameters())

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("objective,checkpointing", [("caption", False), ("openvision", False), ("caption", True)])
def test_memory_by_group_adds_up_to_the_tracked_peak_and_time_names_the_towers(tmp_path, objective, checkpointing):
    from ovprof.measure.profile import ENGINE, OUTSIDE
    from ovprof.runner.profiling import profile_steps

    model, batch = _tiny_model(objective, checkpointing=checkpointing, checkpointing_text=checkpointing)
    engine = _Engine(model)
    for _ in range(2):  # warm-up: optimizer state exists, as in the worker
        engine.backward(engine(**batch))
        engine.step()
    trace = tmp_path / "t.json"
    res = profile_steps(engine, model, batch, steps=1, trace_path=str(trace))
    mem = res["memory_bytes"]
    assert mem["sum_bytes"] == mem["peak_bytes"] > 0
    assert sum(mem["by_kind"].values()) == mem["peak_bytes"]
    towers = {n for n, _ in model.named_children()}
    assert "vision" in mem["groups"] and mem["groups"]["vision"]["parameters"] > 0
    # each tower's parameters are attributed to it, in full
    for name, mod in model.named_children():
        nbytes = sum(p.numel() * p.element_size() for p in mod.parameters())
        assert mem["groups"][name]["parameters"] == nbytes, name
    t = res["time_ms"]
    assert {"vision", "decoder", OUTSIDE, "optimizer", ENGINE} <= set(t["groups"])
    assert set(t["groups"]) - {OUTSIDE, "optimizer", ENGINE} <= towers
    assert t["groups"]["vision"]["forward"] > 0 and t["groups"]["vision"]["backward"] > 0
    assert t["groups"]["optimizer"]["optimizer"] > 0
    for ph, row in t["phases"].items():  # the engine row is each phase's self time
        assert t["groups"][ENGINE][ph] == pytest.approx(row["self"])
    total = sum(r["total"] for r in t["groups"].values())
    assert total == pytest.approx(t["step_ms"], rel=1e-6)
    # no time counted twice (a checkpointed block's recomputation runs its forward hooks inside backward)
    assert sum(r["total"] for g, r in t["groups"].items() if g != ENGINE) <= t["step_ms"] * 1.001
    assert json.loads(trace.read_text())["traceEvents"]


def test_tracker_groups_sum_to_live_bytes_through_reclassify():
    from ovprof.measure.memory import UNGROUPED, TensorTracker

    tr = TensorTracker()
    with tr:
        a = torch.ones(1000)
        tr.group = "vision"
        b = torch.ones(500)
        tr.reclassify([a], "gradients", "decoder")
        assert tr.by_group[("gradients", "decoder")] == 4000 and tr.by_group[("temporaries", UNGROUPED)] == 0
        tr.group = None
        del a
    assert tr.by_group[("gradients", "decoder")] == 0
    assert sum(tr.by_group.values()) == tr.live_bytes == 2000
    assert sum(tr.peak_group_breakdown_bytes.values()) == tr.peak_bytes == 6000
    assert tr.peak_group_breakdown_bytes[("temporaries", "vision")] == 2000
    del b


@pytest.mark.slow
def test_cli_profile_prints_the_table_writes_a_trace_and_json_parses(tmp_path):
    trace = tmp_path / "sub" / "trace.json"
    args = ["profile", "--objective", "caption", "--encoder", "vit-debug", "--batch", "2", "--warmup", "1",
            "--profile-steps", "1", "--set", "vocab_size=512", "--set", "caption_len=16"]
    p = ovprof(*args, "--trace", str(trace))
    assert p.returncode == 0, p.stderr
    for word in ("module group", "vision", "decoder", "optimizer", "(engine)", "forward", "backward", "self",
                 "tracked peak", "activ"):
        assert word in p.stdout, word
    assert json.loads(trace.read_text())["traceEvents"]
    p = ovprof(*args, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["memory_bytes"]["sum_bytes"] == d["memory_bytes"]["peak_bytes"]
    assert d["time_ms"]["groups"]["decoder"]["forward"] > 0
    assert json.loads(open(d["trace"]).read())["traceEvents"]


@pytest.mark.slow
def test_breakdown_run_stores_the_breakdown_and_the_report_shows_where_it_goes(tmp_path, tiny):
    from ovprof.config import ExecOptions
    from ovprof.report.load import load
    from ovprof.report.tables import build
    from ovprof.results import store
    from ovprof.runner.launch import run_point

    cfg = tiny(breakdown=True)
    path = tmp_path / "runs.jsonl"
    run_point(cfg, ExecOptions(store=str(path), timeout_s=300))
    (rec,) = store.read(path)
    assert rec["status"] == "ok", rec.get("error")
    m = rec["metrics"]
    assert m["breakdown_time_ms"]["vision/forward"] > 0 and m["breakdown_time_ms"]["optimizer/optimizer"] > 0
    assert m["breakdown_memory_bytes"]["vision/parameters"] > 0
    assert cfg.run_id != tiny().run_id and "breakdown" not in tiny().to_dict() or tiny().breakdown is False
    t = build(load([path]))["where_it_goes"]
    assert {"vision", "decoder", "optimizer"} <= set(t.frame["group"])
    assert t.frame["share_pct"].sum() == pytest.approx(100, abs=0.5)


def test_single_rank_allreduce_false_is_refused_above_one_rank_and_keeps_old_run_ids():
    from ovprof.config import ConfigError, RunConfig, from_mapping

    with pytest.raises(ConfigError, match="single_rank_allreduce"):
        from_mapping({"world_size": 2, "single_rank_allreduce": False})
    assert from_mapping({"single_rank_allreduce": False}).run_id != RunConfig().run_id
    assert from_mapping({"breakdown": True}).run_id != RunConfig().run_id
    old = RunConfig().run_id  # at their defaults the new fields leave run_id as it was
    assert from_mapping({"single_rank_allreduce": True, "breakdown": False}).run_id == old
