"""`ovprof estimate`: the two methods agree, and both predict what a real run measures."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ovprof.config import ExecOptions, RunConfig
from ovprof.estimate import estimate, max_batch
from ovprof.runner.launch import run_point

from conftest import ovprof

# The analytic activation formulas against fake execution of the real model: the stated bound.
ANALYTIC_VS_FAKE_BOUND = 0.15


@pytest.mark.parametrize("kw", [
    dict(objective="caption", encoder="vit-b16", batch=4, precision="bf16", zero=0),
    dict(objective="caption", encoder="vit-b16", batch=4, mask_ratio=0.65, zero=2, bucket_elems=10**7),
    dict(objective="openvision", encoder="vit-s16", batch=4, zero=3, bucket_elems=10**7),
    dict(objective="clip", encoder="vit-b16", batch=8, zero=1, bucket_elems=10**7),
    dict(objective="caption", encoder="vit-b16", batch=4, checkpointing=True, precision="bf16"),
    dict(objective="openvision", encoder="vit-debug", batch=4, vocab_size=512, caption_len=16, text_len=8),
    dict(objective="mae", encoder="vit-b16", batch=128, precision="bf16"),  # activations dominate
    dict(objective="pixio", encoder="vit-b16", batch=64, precision="bf16"),
    dict(objective="pixio", encoder="vit-s16", res=128, batch=8, zero=3, bucket_elems=10**7),
    dict(objective="mae", encoder="vit-debug", batch=64, checkpointing=True, checkpointing_text=True),
])
def test_analytic_and_fake_peaks_agree_within_the_stated_bound(kw):
    cfg = RunConfig(**kw)
    fake = estimate(cfg, "fake", "flash").peak_bytes
    analytic = estimate(cfg, "analytic", "flash").peak_bytes
    assert abs(analytic / fake - 1) < ANALYTIC_VS_FAKE_BOUND, (analytic, fake)


def test_flash_attention_never_keeps_scores_but_math_does():
    cfg = RunConfig(objective="openvision", encoder="vit-b16", batch=2)
    flash = estimate(cfg, "fake", "flash").activations_bytes
    math = estimate(cfg, "fake", "math").activations_bytes
    assert math > flash * 1.05


def test_masking_and_zero_move_the_estimate_the_right_way():
    base = RunConfig(encoder="vit-b16", batch=8, precision="bf16")
    masked = dataclasses.replace(base, mask_ratio=0.65)
    assert estimate(masked, "analytic").activations_bytes < estimate(base, "analytic").activations_bytes
    z0 = estimate(dataclasses.replace(base, world_size=8), "analytic")
    z3 = estimate(dataclasses.replace(base, world_size=8, zero=3, bucket_elems=10**6), "analytic")
    assert z3.optimizer_state_bytes * 7 < z0.optimizer_state_bytes


@pytest.mark.slow
@pytest.mark.parametrize("kw", [
    dict(objective="caption", zero=0),
    dict(objective="openvision", zero=2, bucket_elems=2_000_000),
    dict(objective="caption", zero=3, bucket_elems=2_000_000, mask_ratio=0.5),
    dict(objective="clip", zero=1, bucket_elems=2_000_000, mask_position="encoder", mask_ratio=0.25),
    dict(objective="caption", zero=0, loss_impl="chunked", vocab_size=8192, caption_len=48),
    dict(objective="caption", zero=3, world_size=2, bucket_elems=500_000),  # gathered parameters stay live
    dict(objective="mae", zero=0, batch=32),  # the pixel loss's gradients at the start of backward
    dict(objective="pixio", zero=3, bucket_elems=2_000_000),
    dict(objective="mae", zero=2, bucket_elems=2_000_000, batch=32, checkpointing=True),
])
def test_estimate_within_5pct_of_measured_peak_tracked_bytes(tmp_path, tiny, kw):
    cfg = tiny(**kw)
    rec = run_point(cfg, ExecOptions(store=str(tmp_path / "r.jsonl")))
    measured = rec.metrics["peak_tracked_bytes"]
    for method in ("fake", "analytic"):
        est = estimate(cfg, method, "native").peak_bytes
        assert abs(est / measured - 1) < 0.05, (method, est, measured)


@pytest.mark.slow
def test_predicted_max_batch_matches_real_runs_under_a_budget_within_one_step(tmp_path, tiny):
    # Long captions and a mid-size vocabulary make each sample cost ~2 MB, so a batch step is visible.
    cfg = tiny(vocab_size=4096, caption_len=64, zero=0)
    budget_gib = 0.04
    predicted, _ = max_batch(cfg, int(budget_gib * 2**30), "fake", "native")
    assert predicted >= 4
    store = str(tmp_path / "r.jsonl")
    below = run_point(dataclasses.replace(cfg, batch=predicted - 1, memory_budget_gib=budget_gib),
                      ExecOptions(store=store))
    above = run_point(dataclasses.replace(cfg, batch=predicted + 1, memory_budget_gib=budget_gib),
                      ExecOptions(store=store))
    assert below.status == "ok", below.error
    assert above.status == "oom", above.metrics.get("peak_tracked_bytes")


def test_paper_table_puts_predicted_ratios_beside_the_papers():
    r = ovprof("estimate", "--paper", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    l14 = next(x for x in rows if x["kind"] == "memory" and x["encoder"] == "vit-l14" and x["global_batch"] == 2048)
    assert l14["paper_memory_ratio_x"] == pytest.approx(24.5 / 13.8)
    assert l14["est_memory_ratio_x"] > 1.2  # caption-only is leaner
    mb = [x for x in rows if x["kind"] == "max_batch"]
    assert {x["device_gib"] for x in mb} == {32, 80}
    assert all(x["est_max_batch_caption"] > x["est_max_batch_openvision"] for x in mb)


def test_estimate_cli_bad_device_is_one_line():
    r = ovprof("estimate", "--device", "h10")
    assert r.returncode == 2 and "did you mean 'h100'" in r.stderr and "Traceback" not in r.stderr


# -- the optimizer term: one explicit AdamW implementation, the same on CPU and CUDA -----------------------------

def test_deepspeed_config_names_the_adamw_implementation_and_the_estimate_models_it():
    from ovprof.config import DEFAULT_OPTIMIZER_IMPL, optimizer_impl
    from ovprof.runner.deepspeed_config import build

    cfg = RunConfig(encoder="vit-debug", batch=2)
    # DeepSpeed would pass foreach=None, and torch would then pick foreach on CUDA only
    assert build(cfg)["optimizer"]["params"]["foreach"] is (optimizer_impl(cfg) == "foreach")
    assert optimizer_impl(cfg) == DEFAULT_OPTIMIZER_IMPL == "forloop"  # what CPU runs always ran
    assert estimate(cfg, "analytic").optimizer_impl == "forloop"


@pytest.mark.parametrize("impl,state_dtype", [("forloop", "fp32"), ("foreach", "fp32"), ("fused", "fp32"),
                                              ("forloop", "bf16")])
def test_adamw_temporaries_and_state_equal_the_tracked_bytes_of_the_step(impl, state_dtype):
    """Every implementation, measured on CPU (torch's foreach ops run their per-tensor fallback here, which
    allocates the same outputs as the CUDA kernels; fused runs torch's CPU kernel; bf16 moments run
    ovprof/kernels/adamw.py): the temporaries, and the state bytes (bf16: the first moment's half less)."""
    import torch

    from ovprof import objectives
    from ovprof.estimate.zero import adamw_temporaries_bytes
    from ovprof.kernels.adamw import AdamWBf16Moment
    from ovprof.measure.memory import TensorTracker, optimizer_tensors

    cfg = RunConfig(encoder="vit-debug", vocab_size=512, caption_len=16, batch=2).resolved()
    torch.manual_seed(0)
    model = objectives.build_model(cfg)
    params = list(model.parameters())
    hyper = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2)
    if state_dtype == "bf16":
        opt = AdamWBf16Moment(params, **hyper)
    else:
        opt = torch.optim.AdamW(params, **hyper, foreach=impl == "foreach", fused=impl == "fused" or None)
    batch = objectives.make_batch(cfg, torch.device("cpu"), rank=0)
    model(**batch).backward()
    opt.step()  # the state exists from here on
    state, _ = optimizer_tensors(opt)
    with TensorTracker() as tr:
        tr.adopt_existing(parameters=params, gradients=[p.grad for p in params], optimizer_state=state)
        tr.reset_peak()
        with tr.phase("optimizer"):
            opt.step()
    numels = tuple(p.numel() for p in params)
    predicted = adamw_temporaries_bytes(impl, stepped_numel=sum(numels), largest_numel=max(numels), numels=numels,
                                        state_dtype=state_dtype)
    assert tr.phase_peak_bytes["optimizer"] - tr.start_bytes == predicted
    moments = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert moments == (6 if state_dtype == "bf16" else 8) * sum(numels)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(zero=0, precision="bf16"), dict(zero=2, bucket_elems=500_000)])
def test_estimated_optimizer_term_equals_the_tracked_optimizer_phase(tmp_path, tiny, kw):
    cfg = tiny(**kw)
    rec = run_point(cfg, ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    assert rec.ds_config["optimizer"]["params"]["foreach"] is False
    m = rec.metrics
    # the optimizer phase's peak over the state resident at the step's start
    measured = m["tracked_phase_peak_bytes"]["optimizer"] - sum(m["tracked_start_breakdown_bytes"].values())
    est = estimate(cfg, "fake", "native").optimizer_bytes
    assert abs(measured - est) <= 64, (measured, est)  # ZeRO 2: one 8-byte scalar beside the flat partition
