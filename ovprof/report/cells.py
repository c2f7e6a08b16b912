"""The report's building blocks: columns, tables, cells that hold a number or the reason there is none.

    from ovprof.report.cells import Context, metric, ratio
    ctx = Context.of(data.runs)            # which setting fields vary: they label the groups
    metric(run, "step_time_ms_median", "caption", ctx.where(run))   # a number, or e.g. "oom"

The rules every table keeps are in ovprof/report/tables.py; this module holds
what the tables of every kind (savings.py, axes.py, estimated.py) share.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from ovprof import metrics as M
from ovprof import objectives
from ovprof.report.load import ENV_FIELDS, MEMORY_SOURCES, SETTING_FIELDS, Data, key_of, nobatch_keys

GIB = 2**30
# The savings table's sides: the columns an objective fills, as it declares (`savings_side` in
# ovprof/objectives). BASELINE is the papers' CLIP-style OpenVision, CANDIDATE caption-only OpenVision 2, and
# CONTRASTIVE plain CLIP, shown beside them.
BASELINE, CANDIDATE, CONTRASTIVE = "openvision", "caption", "clip"
SIDES = (BASELINE, CANDIDATE, CONTRASTIVE)
SIDE_NAME = {BASELINE: "OpenVision", CANDIDATE: "caption-only", CONTRASTIVE: "CLIP"}
# Memory sources side by side, named as the metric registry labels them.
SOURCE_NAME = {key: m.label for key, m in M.report_sources().items()}
# Shown as their own columns in every table; the rest of the setting goes to "other settings" when it varies.
SHOWN_FIELDS = ("encoder", "res", "batch", "world_size", "zero", "precision")


@dataclass
class Column:
    name: str  # raw column in the frame (CSV/JSON header)
    header: str  # display header, with its unit (a gib column's "GiB" becomes the unit its values pick, `shown`)
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


# -- shown cells: one formatter for Markdown, HTML and the terminal ---------------------------------------------
# CSV and JSON keep the raw cells (full precision, GiB); what a reader sees goes through `shown`: a unit per
# column for byte figures, 3-4 significant digits, fixed notation only (never 3.725e-09), ratios as 1.78x.

BYTE_UNITS = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", GIB))  # binary units; GiB is the largest shown
DIGITS = 4  # significant digits of a measured figure
GFLOPS_DIGITS = 5  # the paper's FLOPs are printed to 5 (271.75, 1636.75): quoted as printed


def sig(x: float, digits: int = DIGITS) -> str:
    """`x` rounded to `digits` significant digits in fixed notation, trailing zeros dropped; never scientific.

    sig(3.725e-09) == "0.000000003725", sig(85490.2) == "85490", sig(123456.7) == "123500", sig(2.910) == "2.91"
    """
    if x == 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(abs(x)))
    x = round(x, places)  # may carry into a new digit (9.9996 -> 10.0): recount the places
    if x == 0:
        return "0"
    places = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def byte_unit(nbytes: float) -> tuple[str, int]:
    """The largest of B, KiB, MiB, GiB that `nbytes` (a magnitude) reaches one of."""
    for name, size in reversed(BYTE_UNITS):
        if abs(nbytes) >= size:
            return name, size
    return BYTE_UNITS[0]


def bytes_text(nbytes: float, unit: tuple[str, int]) -> str:
    """Bytes in the column's unit; a figure more than 1000x below it (4 bytes in a MiB column) in its own unit,
    named in the cell ("4 B"), so it keeps its significant digits without a run of zeros."""
    if nbytes == 0:
        return "0"
    name, size = unit
    if abs(nbytes) / size < 1e-3:
        own, own_size = byte_unit(nbytes)
        return f"{sig(nbytes / own_size)} {own}"
    return sig(nbytes / size)


def fmt(v: Any, kind: str, unit: tuple[str, int] | None = None) -> str:
    """One cell as shown: numbers by kind (a gib cell in `unit`, default GiB), a reason as it is, no number "n/a"."""
    if isinstance(v, str):
        return v
    n = num(v)
    if n is None:
        return "n/a"
    if kind == "int":
        return f"{int(n)}" if float(n).is_integer() else sig(n)
    if kind == "x":
        return (f"{n:.2f}" if n == 0 or abs(n) >= 0.1 else sig(n, 2)) + "x"
    if kind == "gflops":
        return sig(n, GFLOPS_DIGITS)
    if kind == "gib":
        return bytes_text(n * GIB, unit or BYTE_UNITS[-1])
    if kind == "pct":
        return f"{n:+.1f}"
    return sig(n)


def column_unit(values: Iterable[Any], kind: str) -> tuple[str, int] | None:
    """A gib column's unit: the largest its largest figure reaches (B, KiB, MiB, GiB); None for other kinds or a
    column without a number (its header keeps GiB)."""
    if kind != "gib":
        return None
    sizes = [abs(n) * GIB for n in map(num, values) if n is not None and n != 0]
    return byte_unit(max(sizes)) if sizes else None


def shown_header(header: str, unit: tuple[str, int] | None) -> str:
    return header if unit is None else re.sub(r"\bGiB\b", unit[0], header)


def shown(frame: pd.DataFrame, col: Column) -> tuple[str, Callable[[pd.Series], str]]:
    """The header and the cell formatter of one column of `frame`, its unit picked from its own values."""
    unit = column_unit(frame[col.name] if col.name in frame else (), col.kind)

    def cell(row: pd.Series) -> str:
        v = row.get(col.name)
        if col.kind == "spread" and num(v) is not None:
            base = col.name[: -len("median")]
            lo, hi = row.get(base + "p10"), row.get(base + "p90")
            if num(lo) is not None and num(hi) is not None:
                return f"{fmt(v, 'ms')} [{fmt(lo, 'ms')}-{fmt(hi, 'ms')}]"
        return fmt(v, col.kind, unit)

    return shown_header(col.header, unit), cell


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
        parts = [_where(k, row[k]) for k in self.varying if k not in drop and _reads(row, k)]
        return ", ".join(parts) if parts else "this setting"

    def other(self, row: pd.Series | dict) -> str:
        parts = [_other(k, row[k]) for k in self.varying if k not in SHOWN_FIELDS and _reads(row, k)]
        return ", ".join(parts) if parts else "-"


def _reads(row: pd.Series | dict, key: str) -> bool:
    """False for a field some objective owns (`own_fields`, e.g. mask_grid) that the row's objective does not
    read: it sits at its default there, and naming it would only clutter that row's label."""
    owners = objectives.owned_fields().get(key)
    return owners is None or "objective" not in row or row["objective"] in owners


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
    """A setting's value exactly as set, in fixed notation (lr 1e-05 -> 0.00001)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float):
        return np.format_float_positional(v, trim="-")
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
    """Forward GFLOPs per image (the paper's FLOPs unit) of a config no record carries, e.g. the other side of a
    comparison that was not run (ovprof.objectives); or why not. A run's own figure is in its record."""
    from ovprof import objectives
    from ovprof.config import ConfigError
    from ovprof.results.record import run_config

    try:
        cfg = dataclasses.replace(run_config(config), **changes)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        return f"not computable: {str(e).splitlines()[0][:120]}"
    return objectives.gflops_per_image(cfg)["fwd_gflops_per_image"]


def run_gflops(run: Any, config: dict, **changes) -> float | str:
    """Forward GFLOPs per image of `run` as its record stores them (`derived`); computed only for a run that
    does not exist (run is None) or an old record whose config this version cannot rebuild."""
    derived = run["derived"] if run is not None else None
    if isinstance(derived, dict) and num(derived.get("fwd_gflops_per_image")) is not None:
        return derived["fwd_gflops_per_image"]
    return analytic_gflops(config, **changes)


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
    if side == CANDIDATE:
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
