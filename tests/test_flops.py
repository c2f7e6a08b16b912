"""The analytic FLOPs formula against torch's FlopCounterMode, and against the paper's FLOPs per image."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ovprof.config import RunConfig
from ovprof.objectives import build_model, gflops_per_image, make_batch, step_flops


@pytest.mark.parametrize("objective,position,ratio", [
    ("caption", "decoder", 0.0), ("caption", "decoder", 0.5), ("caption", "encoder", 0.5),
    ("clip", "decoder", 0.0), ("clip", "encoder", 0.25),
    ("openvision", "decoder", 0.0), ("openvision", "decoder", 0.5), ("openvision", "encoder", 0.5),
])
def test_analytic_equals_flop_counter_on_debug_models(objective, position, ratio):
    cfg = RunConfig(objective=objective, mask_position=position, mask_ratio=ratio, batch=3, vocab_size=300,
                    caption_len=10, text_len=6)
    model = build_model(cfg)
    batch = make_batch(cfg, "cpu")
    # The MATH backend exposes attention as matmuls the counter sees (CPU flash attention is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**batch).backward()
    analytic = step_flops(cfg)
    assert analytic.total == counter.get_total_flops()
    assert analytic.backward > analytic.forward  # backward ~2x forward


# The paper's FLOPs per image (forward, final resolution) and how close the analytic model gets.
@pytest.mark.parametrize("encoder,res,objective,paper", [
    ("vit-l14", 224, "caption", 208.90), ("vit-l14", 224, "openvision", 271.75),
    ("vit-so400m14", 384, "caption", 1017.74), ("vit-so400m14", 384, "openvision", 1636.75),
])
def test_forward_gflops_per_image_within_5pct_of_the_paper(encoder, res, objective, paper):
    # OpenVision 2 keeps 35% of the visual tokens (mask_ratio 0.65).
    cfg = RunConfig(objective=objective, encoder=encoder, res=res, mask_ratio=0.65 if objective == "caption" else 0)
    got = gflops_per_image(cfg)["fwd_gflops_per_image"]
    assert abs(got / paper - 1) < 0.05, (got, paper)


def test_masking_cuts_decoder_flops_but_not_encoder_flops():
    full = step_flops(RunConfig(encoder="vit-b16", batch=4))
    masked = step_flops(RunConfig(encoder="vit-b16", batch=4, mask_ratio=0.65))
    assert masked.forward_by_tower["encoder"] == full.forward_by_tower["encoder"]
    assert masked.forward_by_tower["decoder"] < full.forward_by_tower["decoder"]
    flip = step_flops(RunConfig(encoder="vit-b16", batch=4, mask_ratio=0.65, mask_position="encoder"))
    assert flip.forward_by_tower["encoder"] < full.forward_by_tower["encoder"]


def test_contrastive_term_grows_with_world_size():
    one = step_flops(RunConfig(objective="clip", batch=4, world_size=1))
    two = step_flops(RunConfig(objective="clip", batch=4, world_size=2))
    assert two.forward_by_tower["contrastive"] > one.forward_by_tower["contrastive"]
    assert two.forward_by_tower["encoder"] == one.forward_by_tower["encoder"]
