"""The one-axis tables: how step time and memory move along mask ratio, batch, ZeRO stage, loss_impl or the
levers (optimizer_impl, optimizer_state_dtype, grad_accum, attention, compile); every run.

    ovprof report results/quickstart.jsonl --out reports/quickstart   # mask_ratio.csv, batch.csv, zero.csv, ...

Each axis table keeps the runs whose setting differs in that axis alone and
that were measured at more than one value of it, one row per run
(`one_row_per_run`); the runs table lists every run.
"""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from ovprof.estimate.zero import DEEPSPEED_DEFAULT_BUCKET_ELEMS
from ovprof.report.cells import (GIB, SETTING_COLUMNS, SOURCE_NAME, Column, Context, Table, run_gflops,
                                 max_batch_cell, max_batch_lookup, memory_sources, metric, num, primary_source,
                                 ratio, setting_cells)
from ovprof.report.load import BREAKDOWN, ENV_FIELDS, MEMORY_SOURCES, SETTING_FIELDS, Data, key_of, variant_label

LOSS_IMPL_ORDER = {"eager": 0, "compiled": 1, "chunked": 2, "triton": 3}
# The survey's levers (docs/levers.md): each value against the field's default at the same setting.
LEVER_AXES = ("optimizer_impl", "optimizer_state_dtype", "grad_accum", "attention", "compile")


def one_row_per_run(runs: pd.DataFrame, ctx: Context, axis: str, cells: Callable[[pd.Series, pd.DataFrame], dict],
                    *, keep: tuple[str, ...] = (), order: str | list[str], sort_key: Callable | None = None,
                    value: Callable[[pd.Series], Any] | None = None) -> list[dict]:
    """A row per run, {setting cells, cells(run, its group), run_id}, for the runs that differ in `axis` alone.

    A group is the runs of one setting without `axis`, also equal in the variant fields named in `keep`
    (objective, mask_ratio, ...); a group measured at one value of the axis says nothing about it and gets no
    rows. `value(run)` is what counts as a value of the axis (default: the run's `axis` field). Groups come in
    the order of their first run, each group's runs sorted by `order`.
    """
    if not len(runs):
        return []
    fields = [k for k in (*SETTING_FIELDS, *ENV_FIELDS, *keep) if k != axis]
    groups = runs.apply(lambda r: key_of({k: r[k] for k in fields}), axis=1)
    values = runs.apply(value, axis=1) if value else runs[axis]
    rows = []
    for _, g in runs.groupby(groups, sort=False):
        if values.loc[g.index].nunique() < 2:
            continue
        for _, r in g.sort_values(order, key=sort_key).iterrows():
            rows.append({**setting_cells(r, ctx), **cells(r, g), "run_id": r["run_id"]})
    return rows


def axis_table(name: str, title: str, rows: list[dict], cols: list[Column], notes: list[str],
               empty_reason: str) -> Table:
    """The table of `one_row_per_run`'s rows: the setting's columns, then `cols` (what `cells` made), then run_id."""
    return Table(name, title, pd.DataFrame(rows), [*SETTING_COLUMNS, *cols, Column("run_id", "run_id")], notes,
                 empty_reason=empty_reason)


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
    sources = memory_sources(data.runs)

    def cells(r: pd.Series, _g) -> dict:
        d = r["derived"] if isinstance(r["derived"], dict) else {}  # None: a config this version cannot rebuild
        kept, total = d.get("kept_tokens"), d.get("num_patches")
        return {"objective": r["objective"], "mask_position": r["mask_position"], "mask_ratio": float(r["mask_ratio"]),
                "visual_tokens_kept": f"{kept}/{total}" if kept is not None else "-",
                **_measure_cells(r, sources, ctx.where(r)),
                "fwd_gflops_per_image": run_gflops(r, r["config"])}

    # an unmasked run is one variant whichever side it names; loss_impl is not split off (a run of each shows)
    rows = one_row_per_run(data.runs, ctx, "mask_ratio", cells, keep=("objective",),
                           order=["mask_position", "mask_ratio"],
                           value=lambda r: (r["mask_ratio"], r["mask_position"] if r["mask_ratio"] else "-"))
    cols = [Column("objective", "objective"), Column("mask_position", "masked side"),
            Column("mask_ratio", "mask ratio", "num"), Column("visual_tokens_kept", "visual tokens kept"),
            *_measure_columns(sources), Column("fwd_gflops_per_image", "fwd GFLOPs/image (analytic)", "gflops")]
    notes = ["decoder: visual tokens dropped after the encoder, before the caption decoder (OpenVision 2); "
             "encoder: patches dropped before the encoder (FLIP). mask ratio 0 is the same computation on both sides."]
    return axis_table("mask_ratio", "Mask ratio: step time and peak memory", rows, cols, notes,
                      "no setting was measured at more than one mask ratio")


def batch_table(data: Data, ctx: Context) -> Table:
    sources = memory_sources(data.runs)
    prim = primary_source(data.runs)

    def cells(r: pd.Series, _g) -> dict:
        rec = (max_batch_lookup(data, r, r["side"], r["mask_ratio"], r["mask_position"], r["loss_impl"])
               if r["side"] else None)
        return {"variant": r["variant"], **_measure_cells(r, sources, ctx.where(r)),
                "device_limit_gib": device_limit_gib(r),
                "max_batch": max_batch_cell(rec, r["side"]) if r["side"] else "-"}

    rows = one_row_per_run(data.runs, ctx, "batch", cells,
                           order=["objective", "mask_ratio", "mask_position", "batch"])
    cols = [Column("variant", "objective variant"), *_measure_columns(sources),
            Column("device_limit_gib", "device limit GiB", "gib"), Column("max_batch", "max batch /device", "int")]
    notes = [f"The device limit is the run's memory budget (memory_budget_gib) or the GPU's memory; it caps "
             f"{SOURCE_NAME[prim]} (the plot's memory axis)."]
    return axis_table("batch", "Batch size: peak memory per objective", rows, cols, notes,
                      "no setting was measured at more than one batch size")


def device_limit_gib(r: pd.Series) -> Any:
    if num(r["memory_budget_gib"]) is not None:
        return float(r["memory_budget_gib"])
    if num(r["gpu_memory_bytes"]) is not None:
        return r["gpu_memory_bytes"] / GIB
    return "unknown: no memory budget, no GPU"


def zero_table(data: Data, ctx: Context) -> Table:
    def cells(r: pd.Series, _g) -> dict:
        where = ctx.where(r)
        row = {"variant": r["variant"], "status": r["status"]}
        for k in BREAKDOWN:
            row[f"{k}_gib"] = metric(r, f"bd_{k}", r["objective"], where, scale=GIB)
        row["peak_tracked_gib"] = metric(r, "peak_tracked_bytes", r["objective"], where, scale=GIB)
        row["peak_rss_gib"] = metric(r, "peak_rss_bytes", r["objective"], where, scale=GIB)
        row["bucket_elems"] = int(r["bucket_elems"]) if num(r["bucket_elems"]) is not None else \
            f"DeepSpeed default {DEEPSPEED_DEFAULT_BUCKET_ELEMS:,}"
        return row

    rows = one_row_per_run(data.runs, ctx, "zero", cells, order=["objective", "mask_ratio", "mask_position", "zero"])
    cols = [Column("variant", "objective variant"), Column("status", "status"),
            *[Column(f"{k}_gib", f"{k} GiB", "gib") for k in BREAKDOWN],
            Column("peak_tracked_gib", "peak tracked GiB", "gib"), Column("peak_rss_gib", "peak RSS GiB", "gib"),
            Column("bucket_elems", "bucket elements", "int")]
    notes = ["The parts are the tracked tensors live at the moment of the peak, by kind; they add up to the "
             "peak tracked figure (inputs are the batch itself)."]
    return axis_table("zero", "ZeRO stage: memory by kind at the peak", rows, cols, notes,
                      "no setting was measured at more than one ZeRO stage")


def loss_impl_table(data: Data, ctx: Context) -> Table:
    """Each setting measured with more than one loss_impl: the fused head + cross-entropy against eager."""
    sources = memory_sources(data.runs)

    def cells(r: pd.Series, g: pd.DataFrame) -> dict:
        eager = g[g["loss_impl"] == "eager"]
        base = eager.iloc[0] if len(eager) else None
        where = ctx.where(r)
        row = {"variant": variant_label(r["objective"], r["mask_ratio"], r["mask_position"]),
               "loss_impl": r["loss_impl"], **_measure_cells(r, sources, where)}
        for src in sources:
            mine = row[f"peak_{src}_gib"]
            ref = (metric(base, MEMORY_SOURCES[src], "eager", where, scale=GIB) if base is not None
                   else f"no eager run at {where}")
            change = ratio(mine, ref, r["loss_impl"], "eager")
            row[f"change_{src}_pct"] = (change - 1) * 100 if num(change) is not None else change
        return row

    rows = one_row_per_run(data.runs, ctx, "loss_impl", cells, keep=("objective", "mask_ratio", "mask_position"),
                           order="loss_impl", sort_key=lambda c: c.map(LOSS_IMPL_ORDER))
    cols = [Column("variant", "objective variant"), Column("loss_impl", "loss_impl"), *_measure_columns(sources),
            *[Column(f"change_{s}_pct", f"{SOURCE_NAME[s]} vs eager %", "pct") for s in sources]]
    notes = ["eager materializes the caption head's logits (tokens x vocabulary) and their fp32 copies; chunked "
             "(PyTorch, any device) and triton (fused kernel, CUDA or TRITON_INTERPRET=1) never hold them whole "
             "(docs/fused-ce.md). Negative % = less memory than eager at the same setting. What the loss can save "
             "is bounded by eager's own logits memory, so its share shrinks as activations grow. compiled is eager "
             "under torch.compile, the baseline fused kernels are judged against; it has no tracked peak (inductor's "
             "buffers are invisible to the tracker): compare RSS or the allocator."]
    return axis_table("loss_impl", "Caption head + cross-entropy: eager vs fused (loss_impl)", rows, cols, notes,
                      "no setting was measured with more than one loss_impl")


def levers_table(data: Data, ctx: Context) -> Table:
    """Each lever measured at more than one value: step time, time per sample and tracked peak against the
    lever's default (config.DEFAULTS) at the same setting."""
    from ovprof.config import DEFAULTS

    rows: list[dict] = []
    for axis in LEVER_AXES:
        if axis not in data.runs:
            continue
        default = DEFAULTS[axis]

        def cells(r: pd.Series, g: pd.DataFrame, axis=axis, default=default) -> dict:
            ref = g[g[axis] == default]
            base = ref.iloc[0] if len(ref) else None
            where, name = ctx.where(r), f"{axis}={r[axis]}"
            row = {"variant": variant_label(r["objective"], r["mask_ratio"], r["mask_position"], r["loss_impl"]),
                   "lever": axis, "value": str(r[axis]), "status": r["status"],
                   "step_ms_median": metric(r, "step_time_ms_median", r["objective"], where),
                   "ms_per_sample": metric(r, "time_per_sample_ms", r["objective"], where),
                   "peak_tracked_gib": metric(r, "peak_tracked_bytes", r["objective"], where, scale=GIB)}
            for key, col, scale in (("step", "step_time_ms_median", 1.0), ("sample", "time_per_sample_ms", 1.0),
                                    ("tracked", "peak_tracked_bytes", GIB)):
                mine = row[{"step": "step_ms_median", "sample": "ms_per_sample", "tracked": "peak_tracked_gib"}[key]]
                ref_v = (metric(base, col, r["objective"], where, scale=scale) if base is not None
                         else f"no {axis}={default} run at {where}")
                change = ratio(mine, ref_v, name, f"{axis}={default}")
                row[f"change_{key}_pct"] = (change - 1) * 100 if num(change) is not None else change
            return row

        rows += one_row_per_run(data.runs, ctx, axis, cells,
                                keep=("objective", "mask_ratio", "mask_position", "loss_impl"), order=axis,
                                sort_key=lambda c, d=default: c.map(lambda v: (v != d, str(v))))
    cols = [Column("variant", "objective variant"), Column("lever", "lever"), Column("value", "value"),
            Column("status", "status"), Column("step_ms_median", "step ms median", "ms"),
            Column("ms_per_sample", "ms per sample", "ms"), Column("peak_tracked_gib", "peak tracked GiB", "gib"),
            Column("change_step_pct", "step time vs default %", "pct"),
            Column("change_sample_pct", "time per sample vs default %", "pct"),
            Column("change_tracked_pct", "tracked peak vs default %", "pct")]
    notes = ["Each lever's value against the lever's default at the same setting (docs/levers.md): optimizer_impl "
             "forloop, optimizer_state_dtype fp32, grad_accum 1, attention auto, compile none. A step is one optimizer step, so "
             "at grad_accum k it runs k micro-batches: compare time per sample. Negative % = faster or less "
             "memory than the default. A compiled run has no tracked peak (the tracker cannot see inductor's buffers): "
             "compare its RSS (CPU) or allocator peak (CUDA) in the runs table."]
    return axis_table("levers", "Levers: each value against the default at the same setting", rows, cols, notes,
                      "no setting was measured at more than one value of a lever")


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
    base = ("At ZeRO 2 and 3 DeepSpeed allocates its reduce bucket in full (reduce_bucket_size, default "
            "500,000,000 elements: 1.86 GiB at 4 bytes per element), so the bucket size shows up in the memory "
            "measured; ovprof records it as bucket_elems in each run's config.")
    if not len(runs):
        return base
    used = []
    for elems, g in runs.groupby(runs["bucket_elems"].map(lambda v: int(v) if num(v) is not None else -1)):
        n_z = int((g["zero"] >= 2).sum())
        if elems < 0:
            desc = f"the DeepSpeed default ({DEEPSPEED_DEFAULT_BUCKET_ELEMS:,} elements)"
            elems = DEEPSPEED_DEFAULT_BUCKET_ELEMS
        else:
            desc = f"{elems:,} elements"
        nbytes = {"fp32": 4}.get(g["precision"].iloc[0], 2) * elems
        used.append(f"{desc} ({nbytes / 2**20:,.1f} MiB at {g['precision'].iloc[0]}) in {len(g)} run(s), "
                    f"{n_z} of them at ZeRO 2/3")
    return base + " These runs used: " + "; ".join(used) + "."
