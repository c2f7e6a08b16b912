"""Every objective trains at debug size; masking keeps exactly what it says."""

from __future__ import annotations

import pytest
import torch

from ovprof.config import RunConfig
from ovprof.objectives import build_model, make_batch
from ovprof.models.vit import keep_random_tokens

CASES = [
    ("caption", "decoder", 0.0), ("caption", "decoder", 0.67), ("caption", "encoder", 0.5),
    ("clip", "decoder", 0.0), ("clip", "encoder", 0.5),
    ("openvision", "decoder", 0.0), ("openvision", "decoder", 0.5), ("openvision", "encoder", 0.5),
]


@pytest.mark.parametrize("objective,position,ratio", CASES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_backward_every_parameter_gets_a_finite_gradient(objective, position, ratio, checkpointing):
    # checkpointing=True: every tower (vision and text), to exercise all recompute paths
    cfg = RunConfig(objective=objective, mask_position=position, mask_ratio=ratio, batch=3, vocab_size=256,
                    caption_len=12, text_len=8, checkpointing=checkpointing, checkpointing_text=checkpointing)
    torch.manual_seed(0)
    model = build_model(cfg)
    loss = model(**make_batch(cfg, "cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad


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
