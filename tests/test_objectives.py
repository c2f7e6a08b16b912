"""Every registered objective, at debug size on CPU: it trains, and its analytic numbers are its model's.

    pytest tests/test_objectives.py -q

Parametrized over `objectives.names()`, so a new objective is tested by registering it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ovprof import objectives
from ovprof.config import ConfigError, RunConfig
from ovprof.objectives import build_model, make_batch, model_params, step_flops, tower_params

from conftest import ROOT

NAMES = objectives.names()
MASKS = [("decoder", 0.0), ("decoder", 0.5), ("encoder", 0.5)]  # (mask_position, mask_ratio)
DEBUG = dict(batch=3, vocab_size=256, caption_len=12, text_len=8)


def config(objective: str, position: str, ratio: float, **kw) -> RunConfig:
    """The debug config, or a skip where the objective refuses the masking (its own test checks the refusal)."""
    try:
        return RunConfig(objective=objective, mask_position=position, mask_ratio=ratio, **{**DEBUG, **kw})
    except ConfigError as e:
        pytest.skip(f"{objective} refuses {position} masking: {e}")


@pytest.mark.parametrize("position,ratio", MASKS)
@pytest.mark.parametrize("objective", NAMES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_backward_every_parameter_gets_a_finite_gradient(objective, position, ratio, checkpointing):
    # checkpointing=True: every tower (vision and text), to exercise all recompute paths
    cfg = config(objective, position, ratio, checkpointing=checkpointing, checkpointing_text=checkpointing)
    torch.manual_seed(0)
    model = build_model(cfg)
    loss = model(**make_batch(cfg, "cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad


@pytest.mark.parametrize("objective", NAMES)
@pytest.mark.parametrize("encoder", ["vit-debug", "vit-b16", "vit-so400m14"])
def test_analytic_tower_counts_equal_the_built_model(objective, encoder):
    cfg = RunConfig(objective=objective, encoder=encoder)
    with torch.device("meta"):  # no memory at full size
        model = build_model(cfg)
    assert tower_params(model) == model_params(cfg)
    o = objectives.get(objective)
    built = {k for k, v in tower_params(model).items() if v and k in ("encoder", "text_encoder", "decoder")}
    assert built == set(o.towers)  # the flags say what is built


@pytest.mark.parametrize("position,ratio", MASKS + [("encoder", 0.25)])
@pytest.mark.parametrize("objective", NAMES)
def test_analytic_flops_equal_the_flop_counter(objective, position, ratio):
    cfg = config(objective, position, ratio, vocab_size=300, caption_len=10, text_len=6)
    model = build_model(cfg)
    batch = make_batch(cfg, "cpu")
    # The MATH backend exposes attention as matmuls the counter sees (CPU flash attention is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**batch).backward()
    analytic = step_flops(cfg)
    assert analytic.total == counter.get_total_flops()
    assert analytic.backward > analytic.forward  # backward ~2x forward
    assert set(analytic.forward_by_tower) >= set(objectives.get(objective).towers)


@pytest.mark.parametrize("objective", NAMES)
def test_same_seed_same_batch_and_the_rank_changes_it(objective):
    cfg = RunConfig(objective=objective, **DEBUG)
    a, b, other = make_batch(cfg, "cpu"), make_batch(cfg, "cpu"), make_batch(cfg, "cpu", rank=1)
    assert list(a) == list(b) and list(a)[0] == "images"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], other["images"])


@pytest.mark.parametrize("objective", NAMES)
def test_the_objective_describes_itself(objective):
    o = objectives.get(objective)
    assert o.name == objective and o.label and o.summary and "\n" not in o.summary
    assert o.savings_side in (None, "caption", "clip", "openvision")
    assert 0.0 <= o.paper_mask_ratio < 1.0
    m = o.model_config(RunConfig(objective=objective))
    assert not any(type(v).__name__ == "RunConfig" for v in vars(m).values())  # the model sees its own config


@pytest.mark.parametrize("value", ["captoin", "nope", "", ["caption"]])
def test_unknown_objective_is_one_config_error_naming_the_known_ones(value):
    with pytest.raises(ConfigError) as e:
        objectives.get(value)
    assert e.value.key == "objective" and all(n in str(e.value) for n in NAMES)
    with pytest.raises(ConfigError) as e2:
        RunConfig(objective=value)
    assert str(e2.value) == str(e.value)  # config validates through the registry: one error, one message
    if value == "captoin":
        assert "did you mean 'caption'" in str(e.value)


def test_clip_refuses_decoder_side_masking():
    with pytest.raises(ConfigError) as e:
        RunConfig(objective="clip", mask_ratio=0.5, mask_position="decoder")
    assert e.value.key == "mask_position" and "FLIP" in str(e.value)
    RunConfig(objective="clip", mask_ratio=0.5, mask_position="encoder")


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, ovprof.objectives, ovprof.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# ---- objective-specific behaviour ----------------------------------------------------------------
def test_decoder_side_masking_shortens_the_decoder_not_the_encoder():
    cfg = RunConfig(mask_ratio=0.75, batch=2)
    model = build_model(cfg)
    seen = {}
    model.vision.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o.shape[1]))
    model.decoder.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("dec", o.shape[1]))
    model(**make_batch(cfg, "cpu"))
    assert seen["enc"] == cfg.num_patches
    assert seen["dec"] == cfg.kept_tokens + cfg.caption_len - 1

    enc_cfg = RunConfig(mask_ratio=0.75, batch=2, mask_position="encoder")
    model = build_model(enc_cfg)
    model.vision.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o.shape[1]))
    model(**make_batch(enc_cfg, "cpu"))
    assert seen["enc"] == enc_cfg.kept_tokens


def test_openvision_text_encoder_sees_two_captions_per_image():
    cfg = RunConfig(objective="openvision", batch=3)
    model = build_model(cfg)
    seen = {}
    model.text.register_forward_hook(lambda m, i, o: seen.__setitem__("n", i[0].shape[0]))
    model(**make_batch(cfg, "cpu"))
    assert seen["n"] == 2 * cfg.batch
