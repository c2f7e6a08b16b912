"""The survey's levers as sweep axes (issue 14): optimizer_impl, optimizer_state_dtype, grad_accum, attention."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ovprof.config import ID_STABLE_FIELDS, ConfigError, RunConfig
from conftest import ROOT, TINY, ovprof

LEVERS = ("optimizer_impl", "optimizer_state_dtype", "grad_accum", "attention")


def test_the_levers_at_their_defaults_leave_every_committed_run_id_unchanged():
    baseline = json.loads((ROOT / "reports/baselines/cpu-ci-memory.json").read_text())
    assert baseline["points"]
    for point in baseline["points"]:
        assert RunConfig(**point["config"]).run_id == point["run_id"]
    assert set(LEVERS) <= set(ID_STABLE_FIELDS)


@pytest.mark.parametrize("field,value", [("optimizer_impl", "fused"), ("optimizer_state_dtype", "bf16"),
                                         ("grad_accum", 4), ("attention", "math")])
def test_each_lever_away_from_its_default_is_a_different_point(field, value):
    a = RunConfig(**TINY)
    assert dataclasses.replace(a, **{field: value}).run_id != a.run_id


@pytest.mark.parametrize("kw,key", [(dict(optimizer_impl="for-each"), "optimizer_impl"),
                                    (dict(optimizer_state_dtype="fp16"), "optimizer_state_dtype"),
                                    (dict(optimizer_impl="foreach", optimizer_state_dtype="bf16"),
                                     "optimizer_state_dtype"),
                                    (dict(grad_accum=0), "grad_accum"),
                                    (dict(attention="flash2"), "attention"),
                                    (dict(optimizer_impl="fused", ds_config_base='{"optimizer": {"type": "Adam"}}'),
                                     "optimizer_impl")])
def test_a_bad_lever_value_is_refused_naming_the_field(kw, key):
    with pytest.raises(ConfigError) as e:
        RunConfig(**{**TINY, **kw})
    assert e.value.key == key


def test_the_deepspeed_config_carries_the_optimizer_and_the_accumulation():
    from ovprof.runner.deepspeed_config import build

    base = RunConfig(**TINY)
    params = build(base)["optimizer"]["params"]
    assert params["foreach"] is False and "fused" not in params  # the default's config is what it always was
    assert build(dataclasses.replace(base, optimizer_impl="foreach"))["optimizer"]["params"]["foreach"] is True
    assert build(dataclasses.replace(base, optimizer_impl="fused"))["optimizer"]["params"]["fused"] is True
    # bf16 moments: no optimizer block, the worker hands DeepSpeed ovprof's AdamW
    assert "optimizer" not in build(dataclasses.replace(base, optimizer_state_dtype="bf16"))
    # ... which DeepSpeed refuses under ZeRO unless told it may (an optimizer it has not listed)
    assert "zero_allow_untested_optimizer" not in build(dataclasses.replace(base, optimizer_state_dtype="bf16"))
    assert build(dataclasses.replace(base, optimizer_state_dtype="bf16", zero=1))["zero_allow_untested_optimizer"]
    assert "zero_allow_untested_optimizer" not in build(dataclasses.replace(base, zero=1))
    ds = build(dataclasses.replace(base, grad_accum=4, world_size=2))
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == TINY["batch"] * 4 * 2


def test_a_base_with_gradient_accumulation_speaks_for_grad_accum(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    r = ovprof("run", "--ds-config", str(base), "--dry-run")
    assert r.returncode == 0, r.stderr
    r = ovprof("run", "--ds-config", str(base), "--set", "grad_accum=2", "--dry-run")
    assert r.returncode == 2 and "grad_accum" in r.stderr and "gradient_accumulation_steps" in r.stderr


def test_bf16_moments_follow_torchs_adamw_and_store_the_first_moment_in_bf16():
    import torch

    from ovprof.kernels.adamw import AdamWBf16Moment

    torch.manual_seed(0)
    w = torch.randn(64, 32)
    a, b = w.clone().requires_grad_(), w.clone().requires_grad_()
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.2)
    ref, ours = torch.optim.AdamW([a], **hyper, foreach=False), AdamWBf16Moment([b], **hyper)
    for _ in range(3):
        g = torch.randn_like(w)
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert ours.state[b]["exp_avg"].dtype == torch.bfloat16 and ours.state[b]["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(ours.state[b]["exp_avg"].float(), ref.state[a]["exp_avg"], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(b.detach(), a.detach(), atol=1e-4, rtol=1e-4)  # only the stored m is rounded


@pytest.mark.parametrize("kw", [dict(optimizer_state_dtype="bf16"), dict(optimizer_impl="fused"),
                                dict(grad_accum=2)])
def test_the_estimate_models_each_lever(kw):
    from ovprof.estimate import estimate

    base = RunConfig(**TINY)
    e0, e1 = estimate(base, "fake", "native"), estimate(dataclasses.replace(base, **kw), "fake", "native")
    P = e0.parameters_bytes // 4
    if "optimizer_state_dtype" in kw:
        assert e0.optimizer_state_bytes - e1.optimizer_state_bytes == 2 * P  # the first moment's half
    if "optimizer_impl" in kw:
        assert e1.optimizer_bytes == e0.parameters_bytes  # the gradients alone: fused allocates nothing
    if "grad_accum" in kw:
        assert e1.flops_per_step == 2 * e0.flops_per_step
        assert e1.forward_bytes == e0.forward_bytes + 4 * P  # the accumulated gradients, live from micro-step 2


@pytest.mark.slow
def test_bf16_moments_run_under_zero(tmp_path):
    """DeepSpeed's ZeRO wraps ovprof's AdamW (the levers study stacks both)."""
    from ovprof.config import ExecOptions
    from ovprof.runner.launch import run_point

    rec = run_point(RunConfig(**{**TINY, "optimizer_state_dtype": "bf16", "zero": 1}),
                    ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(optimizer_state_dtype="bf16"), dict(optimizer_impl="fused"),
                                dict(grad_accum=2)])
def test_a_lever_runs_and_the_estimate_matches_the_tracked_peak(tmp_path, kw):
    from ovprof.config import ExecOptions
    from ovprof.estimate import estimate
    from ovprof.runner.launch import run_point

    cfg = RunConfig(**{**TINY, **kw})
    rec = run_point(cfg, ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    m = rec.metrics
    assert m["samples_per_optimizer_step"] == TINY["batch"] * cfg.grad_accum
    assert m["time_per_sample_ms"] == pytest.approx(m["step_time_ms_median"] / m["samples_per_optimizer_step"])
    e = estimate(cfg, "fake", "native")
    assert abs(m["peak_tracked_bytes"] - e.peak_bytes) <= 1024, (m["peak_tracked_bytes"], e.peak_bytes)
    if "optimizer_state_dtype" in kw:
        P = m["param_count"]
        assert m["tracked_start_breakdown_bytes"]["optimizer_state"] - e.optimizer_state_bytes < 1024
        assert e.optimizer_state_bytes == 6 * P


# -- attention ------------------------------------------------------------------------------------------------

def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_an_attention_backend_this_machine_lacks_is_refused_in_one_line(tmp_path):
    if _cuda():
        pytest.skip("on CUDA every backend may exist")
    r = ovprof("run", "--set", 'attention="efficient"', "--out", str(tmp_path / "r.jsonl"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "attention" in r.stderr and "efficient" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.jsonl").exists()


def test_the_cpu_runs_auto_math_and_flash():
    from ovprof.runner.devices import attention_refusal

    for backend in ("auto", "math", "flash"):
        assert attention_refusal(backend, "fp32") is None, backend
    if not _cuda():
        assert attention_refusal("cudnn", "fp32") is not None


def test_the_estimate_costs_the_attention_field():
    from ovprof.estimate import attention_model, estimate

    cfg = RunConfig(**{**TINY, "objective": "openvision"})
    assert attention_model(cfg) == "flash" and attention_model(cfg, "native") == "native"
    for backend, model in (("flash", "flash"), ("efficient", "flash"), ("cudnn", "flash"), ("math", "math")):
        assert estimate(dataclasses.replace(cfg, attention=backend), "analytic").attention == model
    math = estimate(dataclasses.replace(cfg, attention="math"), "analytic")
    assert math.activations_bytes > estimate(cfg, "analytic").activations_bytes  # the scores are kept
    r = ovprof("estimate", "--encoder", "vit-debug", "--attention", "cudnn", "--method", "analytic", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["config"]["attention"] == "cudnn"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["math", "flash"])
def test_an_attention_backend_runs_at_debug_size(tmp_path, backend):
    from ovprof.config import ExecOptions
    from ovprof.runner.launch import run_point

    rec = run_point(RunConfig(**{**TINY, "attention": backend}), ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    assert rec.config["attention"] == backend


# -- compile --------------------------------------------------------------------------------------------------

def test_compile_modes_and_warmup():
    assert RunConfig(**{**TINY, "compile": "default"}).compile == "default"
    with pytest.raises(ConfigError) as e:
        RunConfig(**{**TINY, "compile": "reduce-overhead"})
    assert e.value.key == "compile"
    with pytest.raises(ConfigError) as e:
        RunConfig(**{**TINY, "compile": "default", "warmup": 0})  # the compiling step would be a timed one
    assert e.value.key == "warmup"


@pytest.mark.slow
def test_compile_default_runs_at_debug_size_with_its_compile_time_apart(tmp_path):
    from ovprof.config import ExecOptions
    from ovprof.runner.launch import run_point

    rec = run_point(RunConfig(**{**TINY, "compile": "default", "steps": 3}),
                    ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    m = rec.metrics
    assert m["compile_s"] > 0 and m["recompiles_timed"] == 0
    assert m["peak_tracked_bytes"] is None and "inductor" in rec.null_reasons["peak_tracked_bytes"]
    assert m["peak_rss_steps_bytes"] > 0


@pytest.mark.slow
def test_loss_impl_compiled_equals_eager_and_runs(tmp_path):
    import torch

    from ovprof.config import ExecOptions
    from ovprof.models.losses import caption_loss
    from ovprof.runner.launch import run_point

    torch.manual_seed(0)
    h, w = torch.randn(2, 5, 16, requires_grad=True), torch.randn(64, 16, requires_grad=True)
    t = torch.randint(0, 64, (2, 5))
    eager, compiled = caption_loss(h, w, t, "eager"), caption_loss(h, w, t, "compiled")
    torch.testing.assert_close(compiled, eager)
    rec = run_point(RunConfig(**{**TINY, "loss_impl": "compiled"}), ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    assert rec.metrics["compile_s"] > 0 and rec.metrics["recompiles_timed"] == 0
    assert rec.metrics["peak_tracked_bytes"] is None


def test_loss_impl_compiled_is_estimated_as_eager():
    from ovprof.estimate import estimate

    cfg = RunConfig(**TINY)
    for method in ("fake", "analytic"):
        assert estimate(dataclasses.replace(cfg, loss_impl="compiled"), method).peak_bytes == \
            estimate(cfg, method).peak_bytes
