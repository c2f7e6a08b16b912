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


def estimated_tables(runs: pd.DataFrame) -> dict[str, Table]:
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
    }
