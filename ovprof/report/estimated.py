"""The report's "Estimated (not measured)" section: ovprof estimate's predictions, kept apart from measurements.

    from ovprof.report.estimated import estimated_tables

Two tables come from ovprof/estimate/paper.py (the paper's table predicted at
full scale, memory and max batch) and one compares the analytic estimate with
each measured ok run of the report (`peak_tracked_bytes`), so a reader sees how
far the estimator can be trusted on this hardware before reading its
full-scale numbers.
"""

from __future__ import annotations

import pandas as pd

from ovprof.report.cells import Column, Table

ESTIMATE_METHOD = "analytic"


def _vs_measured(runs: pd.DataFrame) -> Table:
    from ovprof.config import ConfigError
    from ovprof.results.record import run_config
    from ovprof.estimate import estimate

    rows = []
    for _, r in runs.iterrows():
        measured = r.get("peak_tracked_bytes")
        if r.get("status") != "ok" or not isinstance(r.get("config"), dict) or pd.isna(measured):
            continue
        try:
            cfg = run_config(r["config"])
        except ConfigError:  # a config today's rules refuse: no estimate for it
            continue
        attention = "native" if pd.isna(r.get("gpu_memory_bytes")) else "flash"
        est = estimate(cfg, ESTIMATE_METHOD, attention).peak_bytes
        rows.append({"run_id": r["run_id"], "variant": r["variant"], "zero": cfg.zero, "batch": cfg.batch,
                     "precision": cfg.precision, "measured_peak_tracked_gib": measured / 2**30,
                     "estimated_peak_gib": est / 2**30, "error_pct": 100 * (est / measured - 1)})
    frame = pd.DataFrame(rows)
    notes = []
    if len(frame):
        err = frame["error_pct"].abs()
        notes.append(f"Analytic estimate vs measured peak_tracked_bytes over {len(frame)} ok run(s): mean |error| "
                     f"{err.mean():.2f}%, max |error| {err.max():.2f}% (`ovprof estimate --validate STORE "
                     f"--method both` adds the fake-tensor method).")
    cols = [Column("run_id", "run_id"), Column("variant", "variant"), Column("zero", "ZeRO", "int"),
            Column("batch", "batch", "int"), Column("precision", "precision"),
            Column("measured_peak_tracked_gib", "measured peak tracked GiB", "gib"),
            Column("estimated_peak_gib", "estimated GiB", "gib"), Column("error_pct", "error %", "num")]
    return Table("estimated_vs_measured", "Estimated vs measured: peak tracked memory of these runs", frame, cols,
                 notes, empty_reason="No ok run with a tracked peak to compare with.")


def _max_batch_vs_found(max_batch: pd.DataFrame, runs: pd.DataFrame) -> Table:
    """Each max-batch search's result beside the analytic estimate's max batch for the same config under the
    same limit: the memory budget (CPU: a cap on live tensor bytes, which the estimate models), or the GPU."""
    from ovprof.config import ConfigError
    from ovprof.estimate import max_batch as predict
    from ovprof.results.record import run_config

    gpu_bytes = {}
    if "gpu_memory_bytes" in runs:
        for _, r in runs.iterrows():
            if not pd.isna(r.get("gpu_memory_bytes")):
                gpu_bytes[r["setting_key"]] = int(r["gpu_memory_bytes"])
    rows = []
    for _, m in max_batch.iterrows():
        cfg_d = m.get("config")
        if not isinstance(cfg_d, dict):
            continue
        budget = cfg_d.get("memory_budget_gib")
        if budget:
            limit, where = int(budget * 2**30), f"budget {budget:g} GiB"
        else:  # the device itself: only a GPU's memory is known to the estimate
            found_gpu = next(iter(gpu_bytes.values()), None)
            if found_gpu is None:
                continue
            limit, where = found_gpu, f"GPU {found_gpu / 2**30:.1f} GiB"
        try:
            cfg = run_config(dict(cfg_d, batch=1))
        except ConfigError:
            continue
        attention = "flash" if gpu_bytes else "native"  # as _vs_measured: CPU runs take the native kernel
        est, _ = predict(cfg, limit, ESTIMATE_METHOD, attention, limit=1 << 16)
        found = m["max_batch"] if m["status"] == "ok" else None
        if m["status"] == "oom":
            found = 0  # even the first batch did not fit: the largest that fits is below it
        rows.append({"run_id": m["run_id"], "variant": m["variant"], "encoder": cfg.encoder, "res": cfg.res,
                     "zero": cfg.zero, "world_size": cfg.world_size, "limit": where,
                     "found_max_batch": found if found is not None else f"search {m['status']}",
                     "first_oom_batch": m["first_oom_batch"] if not pd.isna(m["first_oom_batch"]) else "-",
                     "estimated_max_batch": est,
                     "error_pct": (100 * (est / found - 1)) if found else "-"})
    frame = pd.DataFrame(rows)
    notes = []
    if len(frame):
        errs = [abs(e) for e in frame["error_pct"] if not isinstance(e, str)]
        if errs:
            notes.append(f"Analytic max batch vs the search's over {len(errs)} search(es): mean |error| "
                         f"{sum(errs) / len(errs):.1f}%, max {max(errs):.1f}%. The search stops within its granularity "
                         "of the boundary (found <= true max < first oom); the estimate is exact to one image of its "
                         "own model. Found 0: even the search's first batch did not fit.")
    cols = [Column("variant", "variant"), Column("encoder", "encoder"), Column("res", "res", "int"),
            Column("zero", "ZeRO", "int"), Column("world_size", "ranks", "int"), Column("limit", "limit"),
            Column("found_max_batch", "found max batch", "int"), Column("first_oom_batch", "first oom", "int"),
            Column("estimated_max_batch", "estimated max batch", "int"), Column("error_pct", "error %", "num")]
    return Table("estimated_max_batch", "Estimated vs found: the max batch of each search", frame, cols, notes,
                 empty_reason="No max-batch search under a known limit (a memory budget, or a GPU).")


def estimated_tables(runs: pd.DataFrame, max_batch: pd.DataFrame | None = None) -> dict[str, Table]:
    from ovprof.estimate.paper import paper_table

    rows = paper_table(ESTIMATE_METHOD)
    note = ("ESTIMATED, not measured: PyTorch + DeepSpeed ZeRO 3 over 32 ranks, bf16, activation checkpointing "
            "on the vision encoder only (as the paper), fused attention, OpenVision 2 keeping 35% of visual tokens. "
            "The paper measured JAX on TPU v4 (32 GiB chips): compare the ratios, not the GB.")
    # A missing paper figure is text ("OOM" where the paper ran out, "-" where it has no number), never NaN.
    mem = pd.DataFrame([{**r, "paper_openvision_gb": "OOM" if r["paper_openvision_gb"] is None else r["paper_openvision_gb"],
                         "paper_memory_ratio_x": "-" if r["paper_memory_ratio_x"] is None else r["paper_memory_ratio_x"]}
                        for r in rows if r["kind"] == "memory"], dtype=object).drop(columns=["kind"])
    mem_cols = [Column("encoder", "encoder"), Column("res", "res", "int"),
                Column("global_batch", "global batch", "int"), Column("per_device_batch", "per device", "int"),
                Column("est_openvision_gib", "est. OpenVision GiB", "gib"),
                Column("est_caption_gib", "est. OpenVision 2 GiB", "gib"),
                Column("est_memory_ratio_x", "est. ratio x", "x"),
                Column("paper_openvision_gb", "paper OpenVision GB", "num"),
                Column("paper_caption_gb", "paper OpenVision 2 GB", "num"),
                Column("paper_memory_ratio_x", "paper ratio x", "x")]
    mb = pd.DataFrame([r for r in rows if r["kind"] == "max_batch"]).drop(columns=["kind"])
    mb_cols = [Column("encoder", "encoder"), Column("device_gib", "device GiB", "int"),
               Column("est_max_global_batch_openvision", "est. OpenVision max global batch", "int"),
               Column("est_max_global_batch_caption", "est. OpenVision 2 max global batch", "int"),
               Column("est_max_batch_ratio_x", "est. ratio x", "x"),
               Column("paper_max_global_batch_openvision", "paper OpenVision", "int"),
               Column("paper_max_global_batch_caption", "paper OpenVision 2", "int"),
               Column("paper_max_batch_ratio_x", "paper ratio x", "x")]
    return {
        "estimated_paper_memory": Table("estimated_paper_memory",
                                        "ESTIMATED: the paper's peak memory per device at full scale", mem, mem_cols,
                                        [note]),
        "estimated_paper_max_batch": Table("estimated_paper_max_batch",
                                           "ESTIMATED: max global batch on 32 devices of 32 and 80 GiB", mb, mb_cols),
        "estimated_vs_measured": _vs_measured(runs),
        "estimated_max_batch": _max_batch_vs_found(max_batch if max_batch is not None else pd.DataFrame(), runs),
    }
