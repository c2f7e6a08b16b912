"""The savings table (OpenVision vs caption-only, side by side per setting) and the paper's tables beside it.

    ovprof report results/quickstart.jsonl --out reports/quickstart

savings: one row per setting and caption-only variant, with speed-up, memory
saving per source, max batch and analytic FLOPs ratios. paper_comparison: the
savings rows at the paper's own encoder and resolution, with the paper's
figures. paper_reference: the paper's headline figures, for every other setting.
"""

from __future__ import annotations

import pandas as pd

from ovprof.report import paper
from ovprof.report.cells import (BASELINE, CANDIDATE, GIB, SETTING_COLUMNS, SIDE_NAME, SIDES, SOURCE_NAME,
                                 Column, Context, Table, analytic_gflops, max_batch_cell, max_batch_lookup,
                                 memory_sources, metric, num, ratio, run_gflops, setting_cells)
from ovprof.report.load import MEMORY_SOURCES, Data, nobatch_keys

NOT_PAPER = "settings differ from the paper's: see the paper reference table"


def _pick(g: pd.DataFrame) -> pd.Series | None:
    """One run of a side: an unmasked run's mask_position does not matter; prefer the default ("decoder")."""
    if g.empty:
        return None
    return g.sort_values("mask_position").iloc[0]


# -- the savings table ------------------------------------------------------------------------


def savings(data: Data, ctx: Context) -> Table:
    runs = data.runs
    runs = _one_batch_per_search(runs)
    sources = memory_sources(runs)
    rows = []
    for _, g in runs.groupby("setting_key", sort=False):
        by_side = {s: g[g["side"] == s] for s in SIDES}
        if by_side["openvision"].empty and by_side["caption"].empty:
            continue  # nothing of the paper's comparison in this group
        ov, clip = _pick(by_side["openvision"]), _pick(by_side["clip"])
        caps = by_side["caption"]
        # one unmasked caption run per loss (its mask_position does not matter), then the masked ones;
        # eager before the fused-CE variants
        caps = caps.assign(_fused=caps["loss_impl"] != "eager")
        unmasked = caps[caps["mask_ratio"] == 0].sort_values(["_fused", "loss_impl", "mask_position"])
        unmasked = unmasked.drop_duplicates("loss_impl")
        masked = caps[caps["mask_ratio"] > 0].sort_values(["_fused", "loss_impl", "mask_position", "mask_ratio"])
        caps = pd.concat([unmasked, masked])
        cap_list = [r for _, r in caps.iterrows()] or [None]
        for cap in cap_list:
            rows.append(_savings_row(data, ctx, g.iloc[0], ov, cap, clip, sources))
    frame = pd.DataFrame(rows)
    if len(frame):  # settings in a stable order: like with like, batch ascending, unmasked caption first
        order = frame[["encoder_res", "other_settings", "hardware", "world_size", "zero", "batch_per_device"]].copy()
        order["_mask"] = [_variant_order(v) for v in frame["caption_variant"]]
        frame = frame.loc[order.sort_values(list(order.columns), kind="stable").index].reset_index(drop=True)
    cols = _savings_columns(sources, frame)
    notes = _savings_notes(data, runs, sources)
    noisy = sum(any(_wide_spread(r, s) for s in (BASELINE, CANDIDATE)) for _, r in frame.iterrows())
    if noisy:
        notes.append(f"{noisy} of {len(frame)} rows have a step time whose p10-p90 spread is wider than half its "
                     f"median (threshold {WIDE_SPREAD:g}): the machine was busy or there were too few timed steps. "
                     "Read their speed-ups with care, or run them again with more steps.")
    return Table("savings", "Savings: OpenVision (CLIP-style) vs caption-only (OpenVision 2)", frame, cols, notes,
                 empty_reason="no setting has both an OpenVision-style and a caption-only objective measured")


def _one_batch_per_search(runs: pd.DataFrame) -> pd.DataFrame:
    """A max-batch search's trials are its max batch's evidence, not settings of their own: of the trials of a
    setting (all but batch) that no other run has, keep one batch, the largest that both OpenVision and
    caption-only ran ok (else the largest both ran, else the largest), so the search's setting has one row."""
    if "max_batch_search" not in runs or runs["max_batch_search"].isna().all():
        return runs
    trial = runs["max_batch_search"].notna()
    nobatch = runs.apply(lambda r: nobatch_keys(r)[0], axis=1)
    keep = ~trial
    for key in nobatch[trial].unique():
        if (nobatch[~trial] == key).any():
            continue  # the setting has runs of its own: they are its rows
        g = runs[trial & (nobatch == key)]
        both_ok = [b for b, gb in g.groupby("batch") if {"openvision", "caption"} <= set(gb[gb["status"] == "ok"]["side"])]
        both = [b for b, gb in g.groupby("batch") if {"openvision", "caption"} <= set(gb["side"])]
        batch = max(both_ok or both or list(g["batch"]))
        keep |= trial & (nobatch == key) & (runs["batch"] == batch)
    return runs[keep]


def _savings_row(data: Data, ctx: Context, any_run: pd.Series, ov, cap, clip, sources) -> dict:
    where = ctx.where(any_run)
    runs = {"openvision": ov, "caption": cap, "clip": clip}
    row = setting_cells(any_run, ctx)
    row["caption_variant"] = ("no masking" if cap is not None and not cap["mask_ratio"]
                              else f"mask {cap['mask_ratio']:g} ({cap['mask_position']})" if cap is not None
                              else "no caption-only run")
    if cap is not None and cap.get("loss_impl", "eager") != "eager":
        row["caption_variant"] += f" + fused CE ({cap['loss_impl']})"  # the fused head + loss lever
    for s, r in runs.items():
        row[f"{s}_run_id"] = r["run_id"] if r is not None else "-"
        row[f"{s}_status"] = r["status"] if r is not None else "missing"
    # time
    for s, r in runs.items():
        for stat in ("median", "p10", "p90"):
            row[f"{s}_step_ms_{stat}"] = metric(r, f"step_time_ms_{stat}", s, where)
    row["speedup_x"] = ratio(row["openvision_step_ms_median"], row["caption_step_ms_median"],
                             SIDE_NAME["openvision"], SIDE_NAME["caption"])
    # memory, per source
    for src in sources:
        for s, r in runs.items():
            row[f"{s}_peak_{src}_gib"] = metric(r, MEMORY_SOURCES[src], s, where, scale=GIB)
        row[f"{src}_saving_x"] = ratio(row[f"openvision_peak_{src}_gib"], row[f"caption_peak_{src}_gib"],
                                       SIDE_NAME["openvision"], SIDE_NAME["caption"])
    # max batch per device: the search whose config matches apart from batch
    ratio_cfg = ((cap["mask_ratio"], cap["mask_position"], cap.get("loss_impl", "eager")) if cap is not None
                 else (0.0, "decoder", "eager"))
    notes = []
    for s in SIDES:
        if s == CANDIDATE and cap is None:
            row["caption_max_batch"] = f"no {SIDE_NAME[s]} run at {where}"
            continue
        rec = max_batch_lookup(data, any_run, s, *ratio_cfg) if s == CANDIDATE else max_batch_lookup(data, any_run, s)
        row[f"{s}_max_batch"] = max_batch_cell(rec, s)
        if rec is not None and rec["status"] == "ok" and rec["limit_reached"]:
            notes.append(f"{SIDE_NAME[s]} ran ok up to the search limit: its max batch is a lower bound")
    row["max_batch_x"] = ratio(row["caption_max_batch"], row["openvision_max_batch"],
                               SIDE_NAME["caption"], SIDE_NAME["openvision"])
    row["max_batch_note"] = "; ".join(notes) or "-"
    # analytic forward FLOPs per image (configs of the records; a missing side is the same config, its objective)
    cfg = any_run["config"]
    row["openvision_fwd_gflops_per_image"] = run_gflops(ov, cfg, objective="openvision", mask_ratio=0.0,
                                                        mask_position="decoder")
    row["caption_fwd_gflops_per_image"] = (
        run_gflops(cap, cfg, objective="caption", mask_ratio=ratio_cfg[0], mask_position=ratio_cfg[1])
        if cap is not None else f"no {SIDE_NAME['caption']} run at {where}")  # which masking is unknown
    row["clip_fwd_gflops_per_image"] = run_gflops(clip, cfg, objective="clip", mask_ratio=0.0,
                                                  mask_position="decoder")
    row["flops_x"] = ratio(row["openvision_fwd_gflops_per_image"], row["caption_fwd_gflops_per_image"],
                           SIDE_NAME["openvision"], SIDE_NAME["caption"])
    # the paper, only beside its own settings
    p = paper.for_setting(any_run["encoder"], int(any_run["res"]))
    if p is not None:
        row.update({
            "paper_setting": p.label,
            "paper_openvision_time_h": p.time_h_openvision, "paper_caption_time_h": p.time_h_caption,
            "paper_time_x": p.time_ratio,
            "paper_memory_global_batch": p.memory_batch,
            "paper_openvision_memory_gb": p.memory_gb_openvision, "paper_caption_memory_gb": p.memory_gb_caption,
            "paper_memory_x": p.memory_ratio,
            "paper_openvision_max_batch": p.max_batch_openvision, "paper_caption_max_batch": p.max_batch_caption,
            "paper_max_batch_x": p.max_batch_ratio,
            "paper_openvision_gflops_per_image": p.gflops_openvision,
            "paper_caption_gflops_per_image": p.gflops_caption,
            "paper_flops_x": p.flops_ratio,
            "differs_from_paper": paper.differences(
                p, hardware=any_run["hardware"], world_size=int(any_run["world_size"]), batch=int(any_run["batch"]),
                precision=any_run["precision"], torch=any_run["torch"], deepspeed=any_run["deepspeed"],
                mask=row["caption_variant"]),
        })
    else:
        for k in PAPER_KEYS:
            row[k] = NOT_PAPER
    return row


WIDE_SPREAD = 0.5  # (p90 - p10) / median above which a step time is flagged as noisy


def _wide_spread(row: pd.Series, side: str) -> bool:
    med, lo, hi = (num(row[f"{side}_step_ms_{k}"]) for k in ("median", "p10", "p90"))
    return None not in (med, lo, hi) and med > 0 and (hi - lo) / med > WIDE_SPREAD


def _variant_order(v: str) -> tuple:
    """'no masking' first, then decoder-side masks ascending, then encoder-side ones."""
    if not v.startswith("mask "):
        return (0, 0.0)
    ratio_text, side = v[5:].split(" ", 1)
    return (1 if "decoder" in side else 2, float(ratio_text))


PAPER_KEYS = ("paper_setting", "paper_openvision_time_h", "paper_caption_time_h", "paper_time_x",
              "paper_memory_global_batch", "paper_openvision_memory_gb", "paper_caption_memory_gb", "paper_memory_x",
              "paper_openvision_max_batch", "paper_caption_max_batch", "paper_max_batch_x",
              "paper_openvision_gflops_per_image", "paper_caption_gflops_per_image", "paper_flops_x",
              "differs_from_paper")


def _savings_columns(sources, frame: pd.DataFrame) -> list[Column]:
    cols = [*SETTING_COLUMNS, Column("caption_variant", "caption-only masking")]
    for s in SIDES:
        cols.append(Column(f"{s}_step_ms_median", f"{SIDE_NAME[s]} step ms median [p10-p90]", "spread"))
    cols.append(Column("speedup_x", "speed-up x (OpenVision / caption-only)", "x"))
    for src in sources:
        for s in SIDES:
            cols.append(Column(f"{s}_peak_{src}_gib", f"{SIDE_NAME[s]} peak {SOURCE_NAME[src]} GiB", "gib"))
        cols.append(Column(f"{src}_saving_x", f"{SOURCE_NAME[src]} saving x (OpenVision / caption-only)", "x"))
    for s in SIDES:
        cols.append(Column(f"{s}_max_batch", f"{SIDE_NAME[s]} max batch /device", "int"))
    cols.append(Column("max_batch_x", "max batch x (caption-only / OpenVision)", "x"))
    cols += [Column("openvision_fwd_gflops_per_image", "OpenVision fwd GFLOPs/image (analytic)", "gflops"),
             Column("caption_fwd_gflops_per_image", "caption-only fwd GFLOPs/image (analytic)", "gflops"),
             Column("flops_x", "FLOPs x (OpenVision / caption-only, analytic)", "x")]
    return cols


def _savings_notes(data: Data, runs: pd.DataFrame, sources) -> list[str]:
    notes = [
        "A row compares runs that differ in the objective alone (same encoder, resolution, batch per device, "
        "ranks, ZeRO stage, precision, checkpointing, bucket, loss, memory budget, hardware and torch/DeepSpeed "
        "versions). OpenVision is the unmasked CLIP-style run with a caption decoder; caption-only may mask "
        "visual tokens (its masking is the row's variant); CLIP is plain CLIP, shown where measured.",
        "Ratios are OpenVision / caption-only for time, memory and FLOPs (above 1: caption-only saves) and "
        "caption-only / OpenVision for max batch (above 1: caption-only fits more).",
        "Step time: median of the timed steps, with the 10th-90th percentile spread in brackets. GiB = 2^30 bytes.",
        "Memory sources: tracked tensors = peak of live tensor bytes seen by ovprof's tracker (parameters, "
        "gradients, optimizer state, activations, temporaries); process RSS = peak resident set of the worker, "
        "which includes the Python/torch runtime" + ("; CUDA allocated/reserved = the caching allocator's "
                                                      "peaks; NVML process = what the driver saw"
                                                      if "reserved" in sources else
                                                      "; no run has CUDA allocator or NVML figures (CPU runs), "
                                                      "so those columns are left out") + ".",
        "FLOPs per image are analytic (ovprof.measure.flops, forward, 2 FLOPs per multiply-add), from each "
        "record's config: the paper's FLOPs unit.",
    ]
    return notes


# -- the paper reference block ----------------------------------------------------------------


def paper_reference(runs: pd.DataFrame) -> Table:
    rows = []
    for p in paper.SETTINGS:
        rows.append({
            "paper_setting": p.label, "hardware": "TPU v4 (time: v4-512; memory: v4-64), JAX",
            "openvision_time_h": p.time_h_openvision, "caption_time_h": p.time_h_caption,
            "time_x": paper.HEADLINE[p.encoder]["time_x"],
            "memory_global_batch": p.memory_batch, "openvision_memory_gb": p.memory_gb_openvision,
            "caption_memory_gb": p.memory_gb_caption, "memory_x": paper.HEADLINE[p.encoder]["memory_x"],
            "openvision_max_batch": p.max_batch_openvision, "caption_max_batch": p.max_batch_caption,
            "max_batch_x": paper.HEADLINE[p.encoder]["max_batch_x"],
            "openvision_gflops_per_image": p.gflops_openvision, "caption_gflops_per_image": p.gflops_caption,
            "flops_x": paper.HEADLINE[p.encoder]["flops_x"],
        })
        # ovprof's analytic model on the paper's own architecture: same setting, so these do compare
        ov = analytic_gflops(_paper_config(p, "openvision", 0.0))
        cap = analytic_gflops(_paper_config(p, "caption", paper.PAPER_MASK_RATIO))
        rows[-1].update({"analytic_openvision_gflops_per_image": ov, "analytic_caption_gflops_per_image": cap,
                         "analytic_flops_x": ratio(ov, cap, "OpenVision", "caption-only")})
    measured = sorted({f"{e}@{r}" for e, r in zip(runs["encoder"], runs["res"])}) if len(runs) else []
    matching = [m for m in measured if any(m == f"{p.encoder}@{p.res}" for p in paper.SETTINGS)]
    others = [m for m in measured if m not in matching]
    notes = [f"Source: {paper.SOURCE}. Ratios as the paper headlines them; memory in the paper's GB per chip at "
             "a global batch; time is hours of the whole two-stage schedule."]
    if others:
        hw = sorted(set(runs["hardware"]))
        prec = sorted(set(runs["precision"]))
        batches = sorted(set(int(b) for b in runs["batch"]))
        notes.append(
            f"Settings differ: the measured {', '.join(others)} on {', '.join(hw)} ({', '.join(prec)}, batch "
            f"{', '.join(map(str, batches))} per device, PyTorch + DeepSpeed) is not one of the paper's settings "
            "(ViT-L/14@224, SoViT-400M/14@384 on TPU v4 with JAX). These figures are for orientation only: they "
            "are not comparable with the ratios measured here.")
    if matching:
        notes.append(f"Rows of {', '.join(matching)} carry the paper's figures in adjacent columns of the "
                     "comparison table below, with what differs.")
    notes.append(paper.max_batch_note())
    cols = [Column("paper_setting", "paper setting"), Column("hardware", "paper hardware"),
            Column("openvision_time_h", "OpenVision time h", "num"),
            Column("caption_time_h", "OpenVision 2 time h", "num"),
            Column("time_x", "time x", "x"), Column("memory_global_batch", "memory at global batch"),
            Column("openvision_memory_gb", "OpenVision GB/chip", "num"),
            Column("caption_memory_gb", "OpenVision 2 GB/chip", "num"), Column("memory_x", "memory x", "x"),
            Column("openvision_max_batch", "OpenVision max global batch"),
            Column("caption_max_batch", "OpenVision 2 max global batch"), Column("max_batch_x", "max batch x", "x"),
            Column("openvision_gflops_per_image", "OpenVision GFLOPs/image", "gflops"),
            Column("caption_gflops_per_image", "OpenVision 2 GFLOPs/image", "gflops"),
            Column("flops_x", "FLOPs x", "x"),
            Column("analytic_openvision_gflops_per_image", "ovprof analytic OpenVision GFLOPs/image", "gflops"),
            Column("analytic_caption_gflops_per_image", "ovprof analytic OpenVision 2 GFLOPs/image", "gflops"),
            Column("analytic_flops_x", "ovprof analytic FLOPs x", "x")]
    notes.append("The ovprof analytic columns apply ovprof.measure.flops to the paper's own architecture (caption-only "
                 f"with mask {paper.PAPER_MASK_RATIO:g} at the decoder, 128-token captions, 80-token text, 32k "
                 "vocabulary, the presets' decoders): a check of the FLOPs model against the paper's figures, "
                 "not a measurement.")
    return Table("paper_reference", "Paper reference (OpenVision 2 efficiency results)", pd.DataFrame(rows), cols,
                 notes)


def _paper_config(p: paper.PaperSetting, objective: str, mask_ratio: float) -> dict:
    from ovprof.config import RunConfig

    return RunConfig(encoder=p.encoder, res=p.res, objective=objective, mask_ratio=mask_ratio).resolved().to_dict()


def paper_comparison(sav: Table) -> Table:
    """The savings rows whose encoder and resolution are the paper's, measured and paper figures side by side."""
    f = sav.frame
    hit = f[f["paper_setting"] != NOT_PAPER] if len(f) and "paper_setting" in f else f.iloc[0:0]
    cols = [Column("paper_setting", "paper setting"), *SETTING_COLUMNS[1:],
            Column("caption_variant", "caption-only masking"),
            Column("speedup_x", "measured speed-up x", "x"), Column("paper_time_x", "paper time x", "x"),
            Column("paper_openvision_time_h", "paper OpenVision h", "num"),
            Column("paper_caption_time_h", "paper OpenVision 2 h", "num")]
    for src in [c[:-len("_saving_x")] for c in f.columns if c.endswith("_saving_x")]:
        cols.append(Column(f"{src}_saving_x", f"measured {SOURCE_NAME[src]} saving x", "x"))
    cols += [Column("paper_memory_x", "paper memory x", "x"),
             Column("paper_openvision_memory_gb", "paper OpenVision GB/chip", "num"),
             Column("paper_caption_memory_gb", "paper OpenVision 2 GB/chip", "num"),
             Column("paper_memory_global_batch", "paper global batch"),
             Column("max_batch_x", "measured max batch x", "x"), Column("paper_max_batch_x", "paper max batch x", "x"),
             Column("flops_x", "analytic FLOPs x", "x"), Column("paper_flops_x", "paper FLOPs x", "x"),
             Column("caption_fwd_gflops_per_image", "analytic caption-only GFLOPs/image", "gflops"),
             Column("paper_caption_gflops_per_image", "paper OpenVision 2 GFLOPs/image", "gflops"),
             Column("differs_from_paper", "what differs")]
    return Table("paper_comparison", "Measured beside the paper (the paper's encoder and resolution)", hit.copy(),
                 cols, empty_reason="no measured setting uses the paper's encoder and resolution (vit-l14@224, "
                                    "vit-so400m14@384); see the paper reference table")
