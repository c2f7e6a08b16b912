"""The analytic FLOPs against the paper's FLOPs per image, and how masking and ranks move them.

Against torch's FlopCounterMode for every registered objective: tests/test_objectives.py.
"""

from __future__ import annotations

import pytest

from ovprof import objectives
from ovprof.config import RunConfig
from ovprof.objectives import gflops_per_image, step_flops


# The paper's FLOPs per image (forward, final resolution) and how close the analytic model gets.
@pytest.mark.parametrize("encoder,res,objective,paper", [
    ("vit-l14", 224, "caption", 208.90), ("vit-l14", 224, "openvision", 271.75),
    ("vit-so400m14", 384, "caption", 1017.74), ("vit-so400m14", 384, "openvision", 1636.75),
])
def test_forward_gflops_per_image_within_5pct_of_the_paper(encoder, res, objective, paper):
    # OpenVision 2 keeps 35% of the visual tokens (its paper_mask_ratio, 0.65).
    cfg = RunConfig(objective=objective, encoder=encoder, res=res, mask_ratio=objectives.get(objective).paper_mask_ratio)
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
