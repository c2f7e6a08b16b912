"""The pixel family (mae, pixio): block masking, the masked-patch loss, their settings, FLOPs and real runs.

    pytest tests/test_pixel.py -q -m "not slow"

What every registered objective must do (forward/backward at debug size, every parameter gets a gradient,
analytic parameters == numel, analytic FLOPs == FlopCounterMode) is in tests/test_objectives.py, which
sweeps the registry and so covers mae and pixio too. This file holds what is particular to them.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ovprof import objectives, presets
from ovprof.config import ConfigError, ExecOptions, RunConfig
from ovprof.models.losses import patchify, pixel_loss
from ovprof.models.pixel import block_mask
from ovprof.objectives import build_model, make_batch, model_params, step_flops, tower_params
from ovprof.results.record import derived_figures

from conftest import ovprof

PIXEL = [n for n in objectives.names() if objectives.get(n).family == "pixel"]


def test_the_pixel_family_is_mae_and_pixio():
    assert PIXEL == ["mae", "pixio"]
    assert all(objectives.get(n).savings_side is None for n in PIXEL)  # never in the savings tables


# ---- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,block,keep", [(8, 1, 16), (8, 2, 4), (8, 4, 1), (16, 4, 4), (14, 7, 1)])
def test_block_mask_keeps_exactly_whole_aligned_blocks_per_sample(grid, block, keep):
    torch.manual_seed(0)
    B = 16
    index, masked = block_mask(B, grid, block, keep, "cpu")
    assert index.shape == (B, keep * block * block) and masked.shape == (B, grid * grid)
    for b in range(B):
        kept = index[b].tolist()
        assert kept == sorted(set(kept))  # distinct, ascending
        assert (~masked[b]).nonzero().flatten().tolist() == kept  # the mask is the complement of the index
        rows, cols = torch.tensor(kept) // grid, torch.tensor(kept) % grid
        blocks = set(zip((rows // block).tolist(), (cols // block).tolist()))
        assert len(blocks) == keep  # whole blocks: each kept block contributes all block^2 of its patches
        for br, bc in blocks:
            want = {(br * block + i) * grid + bc * block + j for i in range(block) for j in range(block)}
            assert want <= set(kept)
    assert len({tuple(index[b].tolist()) for b in range(B)}) > 1  # drawn per sample


def test_the_encoder_sees_class_tokens_and_kept_patches_the_decoder_every_position():
    cfg = RunConfig(objective="pixio", res=64, mask_grid=4, batch=2)  # 8 x 8 grid, 4 blocks, 1 kept
    model = build_model(cfg)
    seen = {}
    model.vision.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o.shape[1]))
    model.decoder.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("dec", o.shape[1]))
    model(**make_batch(cfg, "cpu"))
    r = cfg.resolved()
    assert r.cls_tokens == 8 and r.kept_tokens == 16
    assert seen == {"enc": 8 + 16, "dec": 8 + 64}
    assert derived_figures(cfg)["kept_tokens"] == 16  # the record's kept tokens: the patches the encoder sees


# ---- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix", [True, False])
def test_the_loss_counts_the_masked_patches_only(norm_pix):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    target = patchify(images, 8)  # (3, 16, 192)
    _, masked = block_mask(3, 4, 1, 4, "cpu")
    goal = target
    if norm_pix:
        goal = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    pred = goal.clone()
    pred[~masked] += 100.0  # wrong everywhere the encoder saw the patch: no cost
    assert pixel_loss(pred, target, masked, norm_pix).item() == pytest.approx(0.0, abs=1e-6)
    pred = goal.clone().requires_grad_(True)
    loss = pixel_loss(pred + 1.0, target, masked, norm_pix)  # off by 1 everywhere: mean over masked = 1
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert (pred.grad[~masked] == 0).all() and (pred.grad[masked] != 0).all()


def test_patchify_follows_the_patch_embedding_order():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    p = patchify(images, 8)  # (2, 4, 192): patch (row 0, col 1) is the second
    assert p.shape == (2, 4, 192)
    assert torch.equal(p[1, 1].view(8, 8, 3).permute(2, 0, 1), images[1, :, 0:8, 8:16])


# ---- settings -----------------------------------------------------------------------------------
def test_defaults_resolve_to_each_recipe():
    mae = RunConfig(objective="mae", encoder="vit-h16").resolved()
    pixio = RunConfig(objective="pixio", encoder="vit-h16").resolved()
    assert (mae.pixel_decoder, mae.mask_grid, mae.cls_tokens, mae.mask_ratio, mae.mask_position) == \
        ("dec-mae", 1, 1, 0.75, "encoder")
    assert (pixio.pixel_decoder, pixio.mask_grid, pixio.cls_tokens, pixio.res) == ("dec-pixio", 4, 8, 256)
    assert pixio.kept_tokens == 4 * 16  # 16 blocks of 4 x 4, int(16 x 0.25) = 4 kept
    assert RunConfig(objective="pixio", encoder="vit-h16").run_id == \
        RunConfig(objective="pixio", encoder="vit-h16", mask_ratio=0.75, mask_grid=4, cls_tokens=8,
                  pixel_decoder="dec-pixio").run_id
    assert RunConfig(objective="mae").resolved().pixel_decoder == "dec-pixel-debug"
    assert RunConfig(objective="pixio").resolved().mask_grid == 2  # vit-debug's 4 x 4 grid: 2 x 2 blocks


def test_pixel_presets_are_the_papers():
    assert presets.PIXEL_DECODERS["dec-mae"] == presets.TowerSpec("dec-mae", 512, 8, 2048, 16)
    assert presets.PIXEL_DECODERS["dec-pixio"] == presets.TowerSpec("dec-pixio", 512, 32, 2048, 16)
    for name, (w, d, h) in {"vit-h16": (1280, 32, 16), "vit-1b16": (1536, 48, 24), "vit-5b16": (3072, 48, 32)}.items():
        e = presets.ENCODERS[name]
        assert (e.tower.width, e.tower.depth, e.tower.heads, e.tower.mlp, e.patch, e.native_res) == \
            (w, d, h, 4 * w, 16, 256)
    assert presets.ENCODERS["vit-1b16"].published_params is None and presets.ENCODERS["vit-5b16"].published_params is None


@pytest.mark.parametrize("kw,key", [
    (dict(objective="mae", mask_grid=3, res=64), "mask_grid"),  # 8 x 8 grid
    (dict(objective="pixio", mask_grid=4), "mask_grid"),  # vit-debug's 4 x 4 grid would be one block
    (dict(objective="mae", mask_ratio=0.95), "mask_ratio"),  # keeps no patch of 16
    (dict(objective="mae", pixel_decoder="dec-l"), "pixel_decoder"),
    (dict(objective="mae", loss_impl="chunked"), "loss_impl"),
    (dict(objective="caption", mask_grid=4), "mask_grid"),
    (dict(objective="openvision", cls_tokens=8), "cls_tokens"),
    (dict(objective="clip", norm_pix_loss=False), "norm_pix_loss"),
    (dict(objective="caption", pixel_decoder="dec-mae"), "pixel_decoder"),
])
def test_bad_pixel_settings_are_one_line_config_errors(kw, key):
    with pytest.raises(ConfigError) as e:
        RunConfig(**kw)
    assert e.value.key == key and "\n" not in str(e.value)
    assert f"key '{key}'" in str(e.value)


def test_mask_grid_that_does_not_divide_names_the_grid_and_the_divisors():
    with pytest.raises(ConfigError) as e:
        RunConfig(objective="mae", encoder="vit-s16", res=224, mask_grid=4)  # 14 x 14
    assert "14 x 14 patch grid" in str(e.value) and "one of 1, 2, 7" in str(e.value)


# ---- analytic numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [1, 4])
@pytest.mark.parametrize("objective", PIXEL)
def test_flops_equal_the_flop_counter_at_mask_grid_1_and_4(objective, grid):
    cfg = RunConfig(objective=objective, res=64, mask_grid=grid, batch=2)  # 8 x 8 patch grid
    model = build_model(cfg)
    batch = make_batch(cfg, "cpu")
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**batch).backward()
    assert step_flops(cfg).total == counter.get_total_flops()
    assert tower_params(model) == model_params(cfg)


def test_pixio_costs_more_than_mae_in_the_decoder_and_class_tokens_add_to_the_encoder():
    mae = RunConfig(objective="mae", encoder="vit-h16")
    pixio = RunConfig(objective="pixio", encoder="vit-h16")
    pm, pp = model_params(mae), model_params(pixio)
    assert pp["encoder"] - pm["encoder"] == 2 * 7 * 1280  # 7 more class tokens, each with its position row
    assert pp["decoder"] > 3.5 * pm["decoder"]  # 32 blocks instead of 8
    fm, fp = step_flops(mae).forward_by_tower, step_flops(pixio).forward_by_tower
    assert fp["decoder"] > 3.5 * fm["decoder"]
    assert fp["encoder"] > fm["encoder"]  # same kept patches (64), 7 more tokens


def test_models_json_vit_h16_is_within_2pct_of_631m():
    r = ovprof("models", "--objective", "pixio", "--json")
    assert r.returncode == 0, r.stderr
    row = next(x for x in json.loads(r.stdout)["encoders"] if x["encoder"] == "vit-h16")
    assert abs(row["published_diff_pct"]) < 2 and row["res"] == 256
    assert row["decoder"] == "dec-pixio" and row["text_encoder"] is None


# ---- real DeepSpeed runs at debug size ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("objective,kw", [
    ("mae", dict(zero=0)),
    ("pixio", dict(zero=1, bucket_elems=500_000)),
    ("mae", dict(zero=2, bucket_elems=500_000, checkpointing=True, checkpointing_text=True)),
    ("pixio", dict(zero=3, bucket_elems=500_000)),
    ("pixio", dict(zero=3, world_size=2, bucket_elems=500_000)),
])
def test_zero_stages_and_two_ranks_run_ok(tmp_path, tiny, objective, kw):
    from ovprof.runner.launch import run_point

    cfg = tiny(objective=objective, **kw)
    rec = run_point(cfg, ExecOptions(store=str(tmp_path / "r.jsonl")))
    assert rec.status == "ok", rec.error
    assert rec.derived["kept_tokens"] == cfg.kept_tokens and rec.config["mask_position"] == "encoder"
    assert rec.derived["params"] == model_params(cfg)


# ---- the report ---------------------------------------------------------------------------------
def test_the_families_report_groups_by_family_and_leaves_the_savings_table_alone():
    from conftest import ROOT
    from ovprof.report.load import load
    from ovprof.report.tables import build

    data = load([ROOT / "reports/families/records/families.jsonl"])
    tables = build(data)
    fam = tables["families"].frame
    assert set(fam["family"]) == {"contrastive", "captioning", "pixel"}
    assert set(fam["encoder_res"]) == {"vit-debug@64", "vit-s16@128"}
    pixio = fam[fam["variant"].str.startswith("pixio mask 0.75") & (fam["encoder_res"] == "vit-s16@128")].iloc[0]
    assert "mask_grid 4" in pixio["variant"] and "cls_tokens 8" in pixio["variant"]
    assert pixio["visual_tokens_kept"] == "16/64" and pixio["peak_tracked_gib"] > 0
    assert pixio["total_params_m"] == pytest.approx(model_params(RunConfig(
        objective="pixio", encoder="vit-s16", res=128))["total"] / 1e6)
    sav = tables["savings"].frame  # OpenVision vs caption-only: no pixel run, no pixel field in its labels
    assert len(sav) == 2 and not sav["other_settings"].str.contains("mask_grid|cls_tokens|pixel_decoder").any()
