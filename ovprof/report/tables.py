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

The tables live by kind: cells.py (Column, Table and the cells they share),
savings.py (savings and the paper's tables), families.py (contrastive,
captioning and pixel objectives side by side), axes.py (mask ratio, batch, ZeRO,
loss_impl, levers, runs), estimated.py (ovprof estimate's section). This module puts
them in the report's order; their names are importable from here as before.
"""

from __future__ import annotations

from ovprof.report.axes import (batch_table, bucket_note, device_limit_gib, levers_table, loss_impl_table,
                                mask_ratio_table, runs_table, zero_table)
from ovprof.report.cells import (GIB, SETTING_COLUMNS, SIDE_NAME, SIDES, SOURCE_NAME, Column, Context, Table,
                                 max_batch_cell, max_batch_lookup, memory_sources, metric, num, primary_source, ratio)
from ovprof.report.estimated import estimated_tables
from ovprof.report.families import families_table
from ovprof.report.load import Data
from ovprof.report.stacking import stacking_table
from ovprof.report.where import where_table
from ovprof.report.savings import NOT_PAPER, paper_comparison, paper_reference, savings

__all__ = ["GIB", "NOT_PAPER", "SETTING_COLUMNS", "SIDES", "SIDE_NAME", "SOURCE_NAME", "Column", "Context", "Table",
           "batch_table", "bucket_note", "build", "device_limit_gib", "families_table", "levers_table",
           "loss_impl_table", "mask_ratio_table",
           "max_batch_cell", "max_batch_lookup", "memory_sources", "metric", "num", "paper_comparison",
           "paper_reference", "primary_source", "ratio", "runs_table", "savings", "zero_table"]


def build(data: Data) -> dict[str, Table]:
    ctx = Context.of(data.runs)
    sav = savings(data, ctx)
    return {
        "savings": sav,
        "paper_comparison": paper_comparison(sav),
        "paper_reference": paper_reference(data.runs),
        "families": families_table(data, ctx),
        "mask_ratio": mask_ratio_table(data, ctx),
        "batch": batch_table(data, ctx),
        "zero": zero_table(data, ctx),
        "loss_impl": loss_impl_table(data, ctx),
        "levers": levers_table(data, ctx),
        "levers_study": stacking_table(data, ctx),
        "where_it_goes": where_table(data, ctx),
        "runs": runs_table(data, ctx),
        **estimated_tables(data.runs, data.max_batch),  # ovprof estimate, kept in its own section
    }
