"""The "where it goes" table: time per step and tracked peak memory by module group, for runs with breakdown=true.

    ovprof run --objective caption --encoder vit-debug --set breakdown=true --out X.jsonl && ovprof report X.jsonl

One row per (run, module group): the group's forward, backward, optimizer and
engine milliseconds per step (one profiled step after the measured ones,
ovprof/runner/profiling.py), its share of that step, and the bytes it holds at
the tracked peak (activations, and all kinds together). Comparing two runs'
rows shows where a saving comes from, e.g. the decoder's share with and
without token masking.
"""

from __future__ import annotations

import pandas as pd

from ovprof.report.cells import Column, Context, Table, setting_cells
from ovprof.report.load import Data

COLUMNS = [Column("variant", "variant"), Column("encoder_res", "encoder@res"), Column("batch_per_device", "batch", "int"),
           Column("other_settings", "other settings"), Column("group", "module group"),
           Column("forward_ms", "forward ms", "ms"), Column("backward_ms", "backward ms", "ms"),
           Column("optimizer_ms", "optimizer ms", "ms"),
           Column("total_ms", "total ms", "ms"), Column("share_pct", "share of step %", "num"),
           Column("activations_gib", "activations at peak GiB", "gib"),
           Column("memory_gib", "all kinds at peak GiB", "gib")]


def _split(bd: dict | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for k, v in (bd or {}).items():
        g, _, col = k.rpartition("/")
        out.setdefault(g, {})[col] = v
    return out


def where_table(data: Data, ctx: Context) -> Table:
    runs = data.runs
    rows = []
    for _, r in runs.iterrows():
        if r["status"] != "ok" or not isinstance(r.get("breakdown_time_ms"), dict):
            continue
        t, m = _split(r["breakdown_time_ms"]), _split(r.get("breakdown_memory_bytes"))
        step = sum(sum(v.values()) for v in t.values()) or 1.0
        by_time = sorted(t, key=lambda g: -sum(t[g].values()))  # where the time goes first, then memory-only groups
        for g in by_time + sorted((g for g in m if g not in t), key=lambda g: -sum(m[g].values())):
            tt, mm = t.get(g, {}), m.get(g, {})
            total = sum(tt.values())
            rows.append({"variant": r["variant"], **setting_cells(r, ctx), "group": g,
                         **{f"{c}_ms": tt.get(c, 0.0) for c in ("forward", "backward", "optimizer")},
                         "total_ms": total, "share_pct": round(100 * total / step, 1),
                         "activations_gib": mm.get("activations", 0) / 2**30,
                         "memory_gib": sum(mm.values()) / 2**30, "run_id": r["run_id"]})
    frame = pd.DataFrame(rows)
    return Table("where_it_goes", "Where it goes: time and memory by module group (runs with breakdown=true)",
                 frame, COLUMNS,
                 notes=["Times are one profiled step after the measured ones (torch.profiler, CPU wall per step; "
                        "the hooks add a little), so their total differs from the timed median. Memory is the "
                        "tracked peak split by the group whose forward allocated a tensor or whose parameter owns "
                        "it; (backward)/(optimizer) are allocations outside any module's forward."],
                 empty_reason="No run carries a breakdown: run with --set breakdown=true.")
