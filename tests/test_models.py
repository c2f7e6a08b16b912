"""Building blocks: masking keeps exactly what it says. (Whole objectives: tests/test_objectives.py.)"""

from __future__ import annotations

import pytest
import torch

from ovprof.config import RunConfig
from ovprof.models.vit import keep_random_tokens


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.67, 0.9])
def test_masking_keeps_round_n_times_keep_distinct_tokens_per_sample(ratio):
    cfg = RunConfig(encoder="vit-b16", res=224, mask_ratio=ratio)
    N = cfg.num_patches
    assert cfg.kept_tokens == round(N * (1 - ratio))
    # Tokens carry their own index, so the kept indices can be read back.
    x = torch.arange(N, dtype=torch.float32).view(1, N, 1).expand(8, N, 4).contiguous()
    torch.manual_seed(1)
    kept = keep_random_tokens(x, cfg.kept_tokens)[..., 0].long()  # (8, K)
    assert kept.shape == (8, cfg.kept_tokens)
    for row in kept:
        assert len(set(row.tolist())) == cfg.kept_tokens  # distinct
        assert (row.diff() > 0).all()  # original order kept
    assert len({tuple(r.tolist()) for r in kept}) == 8  # independent per sample
