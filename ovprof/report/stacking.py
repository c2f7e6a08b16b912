"""The levers study: caption-only with each memory lever alone and stacked, against the OpenVision baseline.

    from ovprof.report.load import load
    from ovprof.report.stacking import stacking_table
    stacking_table(load(["results/levers-study.jsonl"])).frame

A lever is a RunConfig field that trades nothing in the model for memory: token masking at the decoder, a fused
caption loss, activation checkpointing (vision, text), ZeRO at a world size, the optimizer's implementation and
state precision (STACK_LEVERS). A run's levers are the fields it sets away from the plain caption-only run.
The baseline is the OpenVision run (unmasked, eager loss: the papers') with no lever on; its tracked peak (per
device: the max over ranks) and its max batch (the search under the same budget) are the reference.

The table is built per study group (every setting field but the levers and batch equal, same hardware and
software) that has such a baseline and caption-only runs at one fixed batch that vary at least MIN_LEVERS lever
fields between them (sweeps/levers-study.toml): below that, the savings and levers tables already say it all.
Rows: the baseline, plain caption-only, each lever alone, then the stacked runs in order of how many levers
they hold (each the previous plus one: the waterfall of levers_study.png).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ovprof.config import DEFAULTS
from ovprof.report.cells import (BASELINE, CANDIDATE, GIB, Column, Context, Table, max_batch_cell, metric,
                                 ratio)
from ovprof.report.load import ENV_FIELDS, SETTING_FIELDS, Data, key_of

# The levers, in the order a study stacks them; each a RunConfig field (zero goes with world_size).
STACK_LEVERS = ("mask_ratio", "loss_impl", "checkpointing", "checkpointing_text", "zero", "world_size",
                "optimizer_impl", "optimizer_state_dtype")
MIN_LEVERS = 3
GROUP_FIELDS = tuple(f for f in (*SETTING_FIELDS, *ENV_FIELDS) if f not in STACK_LEVERS and f != "batch")


def _plain(field: str, value: Any) -> bool:
    """True when the field sits where the plain caption-only run (and the papers' OpenVision) has it."""
    if field == "mask_ratio":
        return not value
    if field == "world_size":
        return True  # judged with zero: a ZeRO stage at a world size is one lever
    return value == DEFAULTS[field]


def lever_names(r: pd.Series | dict) -> list[str]:
    """The levers a run holds, as the table names them: "mask 0.65", "fused CE (chunked)", "ZeRO 2 x2"..."""
    names = []
    for f in STACK_LEVERS:
        v = r[f]
        if _plain(f, v):
            continue
        names.append({"mask_ratio": lambda: f"mask {v:g}",
                      "loss_impl": lambda: f"fused CE ({v})",
                      "checkpointing": lambda: "ckpt vision",
                      "checkpointing_text": lambda: "ckpt text",
                      "zero": lambda: f"ZeRO {v} x{r['world_size']}",
                      "optimizer_impl": lambda: f"{v} AdamW",
                      "optimizer_state_dtype": lambda: f"{v} moment"}[f]())
    return names


def _group_key(r: pd.Series) -> str:
    return key_of({k: r[k] for k in GROUP_FIELDS if k in r})


# A search may run under another budget than the fixed-batch runs (sweeps/levers-study.toml: a smaller one, so
# that its trials stay small): the search of a run is the one whose config equals the run's but for these.
SEARCH_FREE = ("batch", "memory_budget_gib")


def _max_batch(data: Data, r: pd.Series) -> pd.Series | None:
    """The search whose config is this run's with batch "max" (same levers, everything but SEARCH_FREE)."""
    mb = data.max_batch
    if mb.empty or "config" not in mb:
        return None

    def key(c: dict) -> str:
        return key_of({k: v for k, v in c.items() if k not in SEARCH_FREE})

    want = key(r["config"])
    hit = mb[mb["config"].map(lambda c: isinstance(c, dict) and key(c) == want)]
    return None if hit.empty else hit.iloc[-1]


def _budget(rec: pd.Series | None) -> Any:
    b = None if rec is None else rec["config"].get("memory_budget_gib")
    return b if b else "the device"


def stacking_groups(data: Data) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(baseline run, caption-only runs) per study group, at each fixed batch that has a baseline."""
    runs = data.runs
    if runs.empty or any(f not in runs for f in STACK_LEVERS):
        return []
    if "max_batch_search" in runs:  # a search's trials are its own business: the study compares its fixed batches
        runs = runs[runs["max_batch_search"].isna()]
    out = []
    for (_, _batch), g in runs.groupby([runs.apply(_group_key, axis=1), runs["batch"]], sort=False):
        base = g[(g["side"] == BASELINE) & g.apply(lambda r: not lever_names(r), axis=1)]
        cap = g[g["objective"] == CANDIDATE]
        varied = [f for f in STACK_LEVERS if f != "world_size" and cap[f].map(str).nunique() > 1]
        if base.empty or len(varied) < MIN_LEVERS:
            continue
        out.append((base.iloc[-1], cap))
    return out


def stacking_table(data: Data, ctx: Context | None = None) -> Table:
    ctx = ctx or Context.of(data.runs)
    rows: list[dict] = []
    for base, cap in stacking_groups(data):
        where = ctx.where(base, drop=STACK_LEVERS)
        base_peak = metric(base, "peak_tracked_bytes", BASELINE, where, scale=GIB)
        base_search = _max_batch(data, base)
        base_mb = max_batch_cell(base_search, BASELINE)
        base_time = metric(base, "time_per_sample_ms", BASELINE, where)

        def row(r: pd.Series, kind: str) -> dict:
            names = lever_names(r)
            side = BASELINE if kind == "baseline" else CANDIDATE
            label = ("OpenVision (baseline)" if kind == "baseline" else
                     "caption-only" if not names else ("+ " if kind == "alone" else "") + " + ".join(names))
            peak = metric(r, "peak_tracked_bytes", side, where, scale=GIB)
            search = _max_batch(data, r)
            mb = max_batch_cell(search, side)
            if search is not None and base_search is not None and _budget(search) != _budget(base_search):
                mb_x = f"budget {_budget(search)} vs the baseline's {_budget(base_search)}"
            else:
                mb_x = ratio(mb, base_mb, "this run", "baseline")
            t = metric(r, "time_per_sample_ms", side, where)
            return {"setting": where, "batch": int(r["batch"]), "kind": kind, "levers": label,
                    "lever_count": len(names), "status": r["status"], "peak_tracked_gib": peak,
                    "memory_x": ratio(base_peak, peak, "baseline", "this run"),
                    "max_batch": mb, "max_batch_x": mb_x, "max_batch_budget_gib": _budget(search),
                    "ms_per_sample": t, "time_x": ratio(base_time, t, "baseline", "this run"),
                    "run_id": r["run_id"]}

        rows.append(row(base, "baseline"))
        counted = cap.assign(_n=cap.apply(lambda r: len(lever_names(r)), axis=1))
        plain = counted[counted["_n"] == 0]
        if len(plain):
            rows.append(row(plain.iloc[-1], "caption-only"))
        for f in STACK_LEVERS:  # each lever alone, in stacking order
            alone = counted[(counted["_n"] == 1) & counted.apply(lambda r, f=f: not _plain(f, r[f]), axis=1)]
            for _, r in alone.iterrows():
                rows.append(row(r, "alone"))
        for _, r in counted[counted["_n"] >= 2].sort_values("_n", kind="stable").iterrows():
            rows.append(row(r, "stacked"))
    cols = [Column("setting", "setting"), Column("batch", "batch", "int"), Column("kind", "kind"),
            Column("levers", "levers"), Column("status", "status"),
            Column("peak_tracked_gib", "peak tracked GiB (per device)", "gib"),
            Column("memory_x", "memory: baseline / this x", "x"), Column("max_batch", "max batch", "int"),
            Column("max_batch_budget_gib", "search budget GiB", "num"),
            Column("max_batch_x", "max batch: this / baseline x", "x"), Column("ms_per_sample", "ms per sample", "ms"),
            Column("time_x", "time per sample: baseline / this x", "x")]
    notes = ["Each caption-only run against the OpenVision baseline at the same setting and batch: memory is the "
             "tracked peak per device (the largest rank's), lower is better, so the ratio is baseline / this; "
             "max batch is the search under the same budget with the same levers, this / baseline. 'alone' rows hold "
             "one lever on top of caption-only without masking; 'stacked' rows add the levers one by one, the last "
             "holds them all. The paper's OpenVision 2 is caption-only + mask 0.65 (ratio 1.78x memory and 4x max "
             "batch at ViT-L/14 on TPU v4, where the max batch is a 2k/4k/8k grid, not a search)."]
    frame = pd.DataFrame(rows)
    return Table("levers_study", "Levers study: caption-only with each lever alone and stacked, against OpenVision",
                 frame, cols, notes,
                 empty_reason=f"no setting has an OpenVision baseline and caption-only runs varying {MIN_LEVERS}+ "
                              "levers (sweeps/levers-study.toml)")


def chain(frame: pd.DataFrame) -> list[int]:
    """Row positions (in `frame`, one group) of the stacking chain: caption-only, then each next row holding
    exactly one more lever than the previous and all of its levers (the waterfall's steps); the longest such
    chain, the earliest rows on a tie."""
    kinds = list(frame["kind"])
    sets = [frozenset() if k in ("caption-only", "baseline") else frozenset(s.removeprefix("+ ").split(" + "))
            for s, k in zip(frame["levers"], kinds)]
    start = [i for i, k in enumerate(kinds) if k == "caption-only"]
    if not start:
        return []

    def longest(i: int) -> list[int]:
        best: list[int] = []
        for j, s in enumerate(sets):
            if kinds[j] != "baseline" and len(s) == len(sets[i]) + 1 and sets[i] < s:
                tail = longest(j)
                if len(tail) > len(best):
                    best = tail
        return [i, *best]

    return longest(start[0])
