"""The report's tables, as pandas frames whose cells are numbers or the text that says why there is none.

    from ovprof.report.load import load
    from ovprof.report.tables import build
    tables = build(load(["results/quickstart.jsonl"]))
    tables["savings"].frame

Rules every table keeps:
- a ratio is computed only between runs in one group (equal `setting_key`: they
  differ in the objective variant alone); the openvision side is the unmasked
  OpenVision run, as in the paper;
- a cell with no number holds a reason instead: "oom", "error", "timeout" for a
  failed run, "no OpenVision run at batch 16" for a missing one, "not measured:
  ..." for a null metric. Never 0, never NaN;
- every column name carries its unit (ms, GiB = 2^30 bytes, x for ratios);
- the paper's figures stand beside measured ones only where encoder and
  resolution are the paper's (vit-l14@224, vit-so400m14@384); every other
  setting gets the paper's headline ratios in a separate reference table that
  says the settings differ.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ovprof.report import paper
from ovprof.report.load import (BREAKDOWN, ENV_FIELDS, MEMORY_SOURCES, SETTING_FIELDS, Data, key_of, nobatch_keys,
                                variant_label)

GIB = 2**30
SIDES = ("openvision", "caption", "clip")
SIDE_NAME = {"openvision": "OpenVision", "caption": "caption-only", "clip": "CLIP"}
SOURCE_NAME = {"tracked": "tracked tensors", "rss": "process RSS", "allocated": "CUDA allocated",
               "reserved": "CUDA reserved", "nvml_process": "NVML process"}
# Shown as their own columns in every table; the rest of the setting goes to "other settings" when it varies.
SHOWN_FIELDS = ("encoder", "res", "batch", "world_size", "zero", "precision")
NOT_PAPER = "settings differ from the paper's: see the paper reference table"
DEFAULT_BUCKET_ELEMS = 500_000_000


@dataclass
class Column:
    name: str  # raw column in the frame (CSV/JSON header)
    header: str  # display header, with its unit
    kind: str = "text"  # text | int | ms | gib | x | gflops | num | pct (signed, 1 decimal) | spread (median [p10-p90])


@dataclass
class Table:
    name: str  # file stem
    title: str
    frame: pd.DataFrame  # raw cells: numbers, or a string that says why there is no number
    columns: list[Column]  # what md/html/terminal show, in order
    notes: list[str] = field(default_factory=list)
    empty_reason: str = ""  # shown instead of the table when the frame is empty


# -- cells ------------------------------------------------------------------------------


def num(v: Any) -> float | None:
    """A finite number, or None (None, NaN, text)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    try:  # numpy scalars
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and not isinstance(v, str) else None


def metric(run: pd.Series | None, col: str, side: str, where: str, *, scale: float = 1.0) -> Any:
    """One measured figure of one run, or why there is none."""
    if run is None:
        return f"no {SIDE_NAME.get(side, side)} run at {where}"
    if run["status"] != "ok":
        return str(run["status"])
    v = num(run[col])
    if v is None:
        reasons = run["null_reasons"] or {}
        key = col[3:] if col.startswith("bd_") else col
        why = reasons.get(key) or ("not in the tracked breakdown" if col.startswith("bd_") else "not recorded")
        return f"not measured: {why}"
    return v / scale


def ratio(a: Any, b: Any, name_a: str, name_b: str) -> Any:
    """a / b when both are numbers, else the reasons of the side(s) that have none, e.g. "OpenVision oom"."""
    if num(a) is not None and num(b) is not None:
        if b == 0:
            return f"{name_b} is 0"
        return a / b
    why = []
    for v, n in ((a, name_a), (b, name_b)):
        if num(v) is not None:
            continue
        v = str(v)
        if v.startswith("no max-batch search"):
            why.append(f"no {n} max-batch search")
        elif v.startswith("no "):
            why.append(f"no {n} run")
        elif v.startswith("not measured"):
            why.append(f"{n} not measured")
        else:
            why.append(f"{n} {v}")
    if len(why) == 2 and all(w.endswith("max-batch search") for w in why):
        return "no max-batch search"
    return "; ".join(why)


# -- settings, labels --------------------------------------------------------------------


@dataclass
class Context:
    """Which setting fields vary across the runs of the report: they label the groups."""

    varying: tuple[str, ...]

    @classmethod
    def of(cls, runs: pd.DataFrame) -> "Context":
        fields = []
        for k in (*SETTING_FIELDS, *ENV_FIELDS):
            if k in runs and runs[k].map(lambda v: key_of({"v": v})).nunique() > 1:
                fields.append(k)
        return cls(tuple(fields))

    def where(self, row: pd.Series | dict, drop: tuple[str, ...] = ()) -> str:
        """'batch 4, zero 0' for the fields that vary in this report; 'this setting' when none does."""
        parts = [_where(k, row[k]) for k in self.varying if k not in drop]
        return ", ".join(parts) if parts else "this setting"

    def other(self, row: pd.Series | dict) -> str:
        parts = [_other(k, row[k]) for k in self.varying if k not in SHOWN_FIELDS]
        return ", ".join(parts) if parts else "-"


def _other(k: str, v: Any) -> str:
    if k == "memory_budget_gib":
        return "no memory budget" if num(v) is None else f"memory budget {_show(v)} GiB"
    if k == "bucket_elems" and num(v) is None:
        return "bucket DeepSpeed default"
    return f"{k}={_show(v)}"


def _where(k: str, v: Any) -> str:
    if k == "memory_budget_gib":
        return _other(k, v)
    name = "world size" if k == "world_size" else k
    return f"{name} {_show(v)}"


def _show(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def setting_cells(row: pd.Series, ctx: Context) -> dict:
    return {
        "encoder_res": f"{row['encoder']}@{row['res']}", "batch_per_device": int(row["batch"]),
        "world_size": int(row["world_size"]), "zero": int(row["zero"]), "precision": row["precision"],
        "other_settings": ctx.other(row), "hardware": row["hardware"],
    }


SETTING_COLUMNS = [
    Column("encoder_res", "encoder@res px"), Column("batch_per_device", "batch /device", "int"),
    Column("world_size", "ranks", "int"), Column("zero", "ZeRO", "int"), Column("precision", "precision"),
    Column("other_settings", "other settings"),
]


def memory_sources(runs: pd.DataFrame) -> list[str]:
    """The memory sources some run measured (the CUDA ones are absent on CPU)."""
    return [s for s, col in MEMORY_SOURCES.items() if col in runs and runs[col].map(num).notna().any()]


def primary_source(runs: pd.DataFrame) -> str:
    """What a device limit caps: the CUDA caching allocator's reserve on a GPU, live tensors on CPU."""
    return "reserved" if "reserved" in memory_sources(runs) else "tracked"


def analytic_gflops(config: dict, **changes) -> float | str:
    """Forward GFLOPs per image of a config (the paper's FLOPs unit), from ovprof.measure.flops; or why not."""
    from ovprof.config import ConfigError, config_from_record
    from ovprof.measure.flops import gflops_per_image

    try:
        cfg = dataclasses.replace(config_from_record(config), **changes)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        return f"not computable: {str(e).splitlines()[0][:120]}"
    return gflops_per_image(cfg)["fwd_gflops_per_image"]


def _pick(g: pd.DataFrame) -> pd.Series | None:
    """One run of a side: an unmasked run's mask_position does not matter; prefer the default ("decoder")."""
    if g.empty:
        return None
    return g.sort_values("mask_position").iloc[0]


# -- max batch -----------------------------------------------------------------------------


def max_batch_lookup(data: Data, run: pd.Series, side: str, mask_ratio: float = 0.0,
                     mask_position: str = "decoder", loss_impl: str = "eager") -> pd.Series | None:
    """The max-batch search whose config equals `run`'s apart from batch, for one side's variant."""
    mb = data.max_batch
    if mb.empty:
        return None
    skey, ckey = nobatch_keys(run)
    same_setting = (mb["setting_key_nobatch"] == skey) | (mb["setting_key_nobatch"].isna()
                                                         & (mb["config_key_nobatch"] == ckey))
    hit = mb[same_setting & (mb["side"] == side) & (mb["loss_impl"] == loss_impl)]
    if side == "caption":
        hit = hit[(hit["mask_ratio"] == mask_ratio)
                  & ((mask_ratio == 0) | (hit["mask_position"] == mask_position))]
    return None if hit.empty else hit.iloc[-1]


def max_batch_cell(rec: pd.Series | None, side: str) -> Any:
    if rec is None:
        return f"no max-batch search for {SIDE_NAME[side]}"
    if rec["status"] == "ok" and num(rec["max_batch"]) is not None:
        return int(rec["max_batch"])
    if rec["status"] == "oom":
        first = num(rec["first_oom_batch"])
        return f"oom at batch {int(first)}" if first is not None else "oom"
    return f"search {rec['status']}" + (f": {rec['error_message']}" if rec["error_message"] else "")


# -- the savings table ------------------------------------------------------------------------


def savings(data: Data, ctx: Context) -> Table:
    runs = data.runs
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
    noisy = sum(any(_wide_spread(r, s) for s in ("openvision", "caption")) for _, r in frame.iterrows())
    if noisy:
        notes.append(f"{noisy} of {len(frame)} rows have a step time whose p10-p90 spread is wider than half its "
                     f"median (threshold {WIDE_SPREAD:g}): the machine was busy or there were too few timed steps. "
                     "Read their speed-ups with care, or run them again with more steps.")
    return Table("savings", "Savings: OpenVision (CLIP-style) vs caption-only (OpenVision 2)", frame, cols, notes,
                 empty_reason="no setting has both an OpenVision-style and a caption-only objective measured")


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
        if s == "caption" and cap is None:
            row["caption_max_batch"] = f"no {SIDE_NAME[s]} run at {where}"
            continue
        rec = max_batch_lookup(data, any_run, s, *ratio_cfg) if s == "caption" else max_batch_lookup(data, any_run, s)
        row[f"{s}_max_batch"] = max_batch_cell(rec, s)
        if rec is not None and rec["status"] == "ok" and rec["limit_reached"]:
            notes.append(f"{SIDE_NAME[s]} ran ok up to the search limit: its max batch is a lower bound")
    row["max_batch_x"] = ratio(row["caption_max_batch"], row["openvision_max_batch"],
                               SIDE_NAME["caption"], SIDE_NAME["openvision"])
    row["max_batch_note"] = "; ".join(notes) or "-"
    # analytic forward FLOPs per image (configs of the records; a missing side is the same config, its objective)
    cfg = any_run["config"]
    row["openvision_fwd_gflops_per_image"] = analytic_gflops(cfg, objective="openvision", mask_ratio=0.0,
                                                             mask_position="decoder")
    row["caption_fwd_gflops_per_image"] = (
        analytic_gflops(cfg, objective="caption", mask_ratio=ratio_cfg[0], mask_position=ratio_cfg[1])
        if cap is not None else f"no {SIDE_NAME['caption']} run at {where}")  # which masking is unknown
    row["clip_fwd_gflops_per_image"] = analytic_gflops(cfg, objective="clip", mask_ratio=0.0,
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


# -- mask ratio, batch, ZeRO, runs --------------------------------------------------------------


def _measure_cells(r: pd.Series, sources, where: str) -> dict:
    side = r["objective"]
    out = {
        "status": r["status"],
        "step_ms_median": metric(r, "step_time_ms_median", side, where),
        "step_ms_p10": metric(r, "step_time_ms_p10", side, where),
        "step_ms_p90": metric(r, "step_time_ms_p90", side, where),
    }
    for src in sources:
        out[f"peak_{src}_gib"] = metric(r, MEMORY_SOURCES[src], side, where, scale=GIB)
    return out


def _measure_columns(sources) -> list[Column]:
    return [Column("status", "status"), Column("step_ms_median", "step ms median [p10-p90]", "spread"),
            *[Column(f"peak_{s}_gib", f"peak {SOURCE_NAME[s]} GiB", "gib") for s in sources]]


def mask_ratio_table(data: Data, ctx: Context) -> Table:
    from ovprof.config import config_from_record

    runs = data.runs
    sources = memory_sources(runs)
    rows = []
    for (_, obj), g in runs.groupby(["setting_key", "objective"], sort=False):
        variants = {(r, p if r else "-") for r, p in zip(g["mask_ratio"], g["mask_position"])}
        if len(variants) < 2:
            continue
        for _, r in g.sort_values(["mask_position", "mask_ratio"]).iterrows():
            cfg = r["config"]
            try:
                c = config_from_record(cfg)
                kept, total = c.kept_tokens, c.num_patches
            except Exception:  # noqa: BLE001 - a config this version cannot rebuild still gets a row
                kept, total = None, None
            rows.append({**setting_cells(r, ctx), "objective": obj, "mask_position": r["mask_position"],
                         "mask_ratio": float(r["mask_ratio"]),
                         "visual_tokens_kept": f"{kept}/{total}" if kept is not None else "-",
                         **_measure_cells(r, sources, ctx.where(r)),
                         "fwd_gflops_per_image": analytic_gflops(cfg), "run_id": r["run_id"]})
    cols = [*SETTING_COLUMNS, Column("objective", "objective"), Column("mask_position", "masked side"),
            Column("mask_ratio", "mask ratio", "num"), Column("visual_tokens_kept", "visual tokens kept"),
            *_measure_columns(sources), Column("fwd_gflops_per_image", "fwd GFLOPs/image (analytic)", "gflops"),
            Column("run_id", "run_id")]
    notes = ["decoder: visual tokens dropped after the encoder, before the caption decoder (OpenVision 2); "
             "encoder: patches dropped before the encoder (FLIP). mask ratio 0 is the same computation on both sides."]
    return Table("mask_ratio", "Mask ratio: step time and peak memory", pd.DataFrame(rows), cols, notes,
                 empty_reason="no setting was measured at more than one mask ratio")


def batch_table(data: Data, ctx: Context) -> Table:
    runs = data.runs
    sources = memory_sources(runs)
    prim = primary_source(runs)
    rows = []
    if len(runs):
        nb = runs.apply(lambda r: nobatch_keys(r)[0], axis=1)
        for key, g in runs.groupby(nb, sort=False):
            if g["batch"].nunique() < 2:
                continue
            for _, r in g.sort_values(["objective", "mask_ratio", "mask_position", "batch"]).iterrows():
                rec = (max_batch_lookup(data, r, r["side"], r["mask_ratio"], r["mask_position"], r["loss_impl"])
                       if r["side"] else None)
                rows.append({**setting_cells(r, ctx), "variant": r["variant"],
                             **_measure_cells(r, sources, ctx.where(r)),
                             "device_limit_gib": device_limit_gib(r),
                             "max_batch": max_batch_cell(rec, r["side"]) if r["side"] else "-",
                             "run_id": r["run_id"]})
    cols = [*SETTING_COLUMNS, Column("variant", "objective variant"), *_measure_columns(sources),
            Column("device_limit_gib", "device limit GiB", "gib"), Column("max_batch", "max batch /device", "int"),
            Column("run_id", "run_id")]
    notes = [f"The device limit is the run's memory budget (memory_budget_gib) or the GPU's memory; it caps "
             f"{SOURCE_NAME[prim]} (the plot's memory axis)."]
    return Table("batch", "Batch size: peak memory per objective", pd.DataFrame(rows), cols, notes,
                 empty_reason="no setting was measured at more than one batch size")


def device_limit_gib(r: pd.Series) -> Any:
    if num(r["memory_budget_gib"]) is not None:
        return float(r["memory_budget_gib"])
    if num(r["gpu_memory_bytes"]) is not None:
        return r["gpu_memory_bytes"] / GIB
    return "unknown: no memory budget, no GPU"


def zero_table(data: Data, ctx: Context) -> Table:
    runs = data.runs
    rows = []
    if len(runs):
        nz = runs.apply(lambda r: key_of({**{k: r[k] for k in SETTING_FIELDS if k != "zero"},
                                          "hw": r["hardware"], "torch": r["torch"], "ds": r["deepspeed"]}), axis=1)
        for _, g in runs.groupby(nz, sort=False):
            if g["zero"].nunique() < 2:
                continue
            for _, r in g.sort_values(["objective", "mask_ratio", "mask_position", "zero"]).iterrows():
                where = ctx.where(r)
                row = {**setting_cells(r, ctx), "variant": r["variant"], "status": r["status"]}
                for k in BREAKDOWN:
                    row[f"{k}_gib"] = metric(r, f"bd_{k}", r["objective"], where, scale=GIB)
                row["peak_tracked_gib"] = metric(r, "peak_tracked_bytes", r["objective"], where, scale=GIB)
                row["peak_rss_gib"] = metric(r, "peak_rss_bytes", r["objective"], where, scale=GIB)
                row["bucket_elems"] = int(r["bucket_elems"]) if num(r["bucket_elems"]) is not None else \
                    f"DeepSpeed default {DEFAULT_BUCKET_ELEMS:.0e}"
                row["run_id"] = r["run_id"]
                rows.append(row)
    cols = [*SETTING_COLUMNS, Column("variant", "objective variant"), Column("status", "status"),
            *[Column(f"{k}_gib", f"{k} GiB", "gib") for k in BREAKDOWN],
            Column("peak_tracked_gib", "peak tracked GiB", "gib"), Column("peak_rss_gib", "peak RSS GiB", "gib"),
            Column("bucket_elems", "bucket elements", "int"), Column("run_id", "run_id")]
    notes = ["The parts are the tracked tensors live at the moment of the peak, by kind; they add up to the "
             "peak tracked figure (inputs are the batch itself)."]
    return Table("zero", "ZeRO stage: memory by kind at the peak", pd.DataFrame(rows), cols, notes,
                 empty_reason="no setting was measured at more than one ZeRO stage")


LOSS_IMPL_ORDER = {"eager": 0, "chunked": 1, "triton": 2}


def loss_impl_table(data: Data, ctx: Context) -> Table:
    """Each setting measured with more than one loss_impl: the fused head + cross-entropy against eager."""
    runs = data.runs
    sources = memory_sources(runs)
    rows = []
    if len(runs):
        for _, g in runs.groupby(["setting_key", "objective", "mask_ratio", "mask_position"], sort=False):
            if g["loss_impl"].nunique() < 2:
                continue
            eager = g[g["loss_impl"] == "eager"]
            base = eager.iloc[0] if len(eager) else None
            for _, r in g.sort_values("loss_impl", key=lambda c: c.map(LOSS_IMPL_ORDER)).iterrows():
                where = ctx.where(r)
                row = {**setting_cells(r, ctx), "variant": variant_label(r["objective"], r["mask_ratio"],
                                                                         r["mask_position"]),
                       "loss_impl": r["loss_impl"], **_measure_cells(r, sources, where)}
                for src in sources:
                    mine = row[f"peak_{src}_gib"]
                    ref = (metric(base, MEMORY_SOURCES[src], "eager", where, scale=GIB) if base is not None
                           else f"no eager run at {where}")
                    change = ratio(mine, ref, r["loss_impl"], "eager")
                    row[f"change_{src}_pct"] = (change - 1) * 100 if num(change) is not None else change
                row["run_id"] = r["run_id"]
                rows.append(row)
    cols = [*SETTING_COLUMNS, Column("variant", "objective variant"), Column("loss_impl", "loss_impl"),
            *_measure_columns(sources),
            *[Column(f"change_{s}_pct", f"{SOURCE_NAME[s]} vs eager %", "pct") for s in sources],
            Column("run_id", "run_id")]
    notes = ["eager materializes the caption head's logits (tokens x vocabulary) and their fp32 copies; chunked "
             "(PyTorch, any device) and triton (fused kernel, CUDA or TRITON_INTERPRET=1) never hold them whole "
             "(docs/fused-ce.md). Negative % = less memory than eager at the same setting. What the loss can save "
             "is bounded by eager's own logits memory, so its share shrinks as activations grow."]
    return Table("loss_impl", "Caption head + cross-entropy: eager vs fused (loss_impl)", pd.DataFrame(rows), cols,
                 notes, empty_reason="no setting was measured with more than one loss_impl")


def runs_table(data: Data, ctx: Context) -> Table:
    runs = data.runs
    sources = memory_sources(runs)
    rows = []
    for _, r in runs.iterrows():
        err = "-" if r["status"] == "ok" else f"{r['error_type'] or ''}: {r['error_message'] or ''}".strip(": ")
        rows.append({"run_id": r["run_id"], **setting_cells(r, ctx), "variant": r["variant"],
                     **_measure_cells(r, sources, ctx.where(r)), "error": err or "-"})
    cols = [Column("run_id", "run_id"), *SETTING_COLUMNS, Column("variant", "objective variant"),
            *_measure_columns(sources), Column("error", "error")]
    return Table("runs", "Every run (latest record per run_id)", pd.DataFrame(rows), cols)


def bucket_note(runs: pd.DataFrame) -> str:
    """At ZeRO 2/3 DeepSpeed allocates its reduce bucket in full, so say which bucket the runs used."""
    base = ("At ZeRO 2 and 3 DeepSpeed allocates its reduce bucket in full (reduce_bucket_size, default 5e8 "
            "elements: 1.86 GiB at 4 bytes per element), so the bucket size shows up in the memory measured; "
            "ovprof records it as bucket_elems in each run's config.")
    if not len(runs):
        return base
    used = []
    for elems, g in runs.groupby(runs["bucket_elems"].map(lambda v: int(v) if num(v) is not None else -1)):
        n_z = int((g["zero"] >= 2).sum())
        if elems < 0:
            desc = f"the DeepSpeed default ({DEFAULT_BUCKET_ELEMS:.0e} elements)"
            elems = DEFAULT_BUCKET_ELEMS
        else:
            desc = f"{elems:,} elements"
        nbytes = {"fp32": 4}.get(g["precision"].iloc[0], 2) * elems
        used.append(f"{desc} ({nbytes / 2**20:,.1f} MiB at {g['precision'].iloc[0]}) in {len(g)} run(s), "
                    f"{n_z} of them at ZeRO 2/3")
    return base + " These runs used: " + "; ".join(used) + "."


def build(data: Data) -> dict[str, Table]:
    from ovprof.report.estimated import estimated_tables  # imports this module: import here, not at the top

    ctx = Context.of(data.runs)
    sav = savings(data, ctx)
    return {
        "savings": sav,
        "paper_comparison": paper_comparison(sav),
        "paper_reference": paper_reference(data.runs),
        "mask_ratio": mask_ratio_table(data, ctx),
        "batch": batch_table(data, ctx),
        "zero": zero_table(data, ctx),
        "loss_impl": loss_impl_table(data, ctx),
        "runs": runs_table(data, ctx),
        **estimated_tables(data.runs),  # ovprof estimate, kept in its own section
    }
