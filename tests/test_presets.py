"""Every preset is the model it claims to be: parameter counts against the published figures."""

from __future__ import annotations

import pytest
import torch

from ovprof import presets
from ovprof.config import RunConfig
from ovprof.measure.flops import encoder_params
from ovprof.models.vit import VisionTower


@pytest.mark.parametrize("name", [n for n, e in presets.ENCODERS.items() if e.published_params])
def test_encoder_matches_published_count_within_2pct(name):
    e = presets.ENCODERS[name]
    with torch.device("meta"):  # no memory: g/14 has a billion parameters
        tower = VisionTower(e, e.native_res, pool="map" if e.published_includes_head else None)
    built = sum(p.numel() for p in tower.parameters())
    assert built == encoder_params(name, e.native_res, head=e.published_includes_head)
    assert abs(built / e.published_params - 1) < 0.02, (name, built, e.published_params)


@pytest.mark.parametrize("name", ["vit-l14", "vit-g14", "vit-b16", "vit-h16"])
def test_acceptance_sizes(name):
    want = {"vit-l14": 304e6, "vit-g14": 1.01e9, "vit-b16": 86e6, "vit-h16": 631e6}[name]
    res = presets.ENCODERS[name].native_res  # 224, and 256 for Pixio's H/16
    assert abs(encoder_params(name, res) / want - 1) < 0.02
    # Pixio's 8 class tokens (and their position rows) do not move the comparison
    assert abs(encoder_params(name, res, cls_tokens=8) / want - 1) < 0.02


def test_auto_pairing_follows_the_reference():
    assert RunConfig(encoder="vit-l14").resolved().decoder == "dec-l"
    assert RunConfig(encoder="vit-l14", objective="clip").resolved().text_encoder == "text-l"
    assert RunConfig(encoder="vit-so400m14").resolved().text_encoder == "text-so400m"
    assert RunConfig(encoder="vit-h14").resolved().text_encoder == "text-h"
    assert presets.TEXT_ENCODERS["text-l"].width == 768 and presets.TEXT_ENCODERS["text-l"].depth == 12
    assert presets.TEXT_ENCODERS["text-so400m"].depth == 27
