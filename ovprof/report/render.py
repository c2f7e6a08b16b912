"""Write a report directory: report.md, a self-contained report.html, CSV and JSON of the tables, PNG plots.

    from ovprof.report.render import write_report
    written = write_report(["results/quickstart.jsonl"], "reports/quickstart", formats={"md", "html", "csv", "json"})

report.html embeds every PNG as a base64 data URI and its CSS inline: one file
that opens anywhere, with no external resources, laid out for a 1400-px page.
CSV and JSON hold the raw cells (full precision, memory in GiB; a failed or
missing point is its reason text), the Markdown and HTML the formatted ones
(ovprof.report.cells.shown: byte columns in the unit their values pick, B, KiB,
MiB or GiB; 3-4 significant digits; never scientific notation; ratios as
1.78x). A table wider than the page is split into parts that repeat its key
columns (`split_wide`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ovprof.report import cells, paper
from ovprof.report.cells import fmt
from ovprof.report.load import Data, load
from ovprof.report.plots import Plot, draw_all
from ovprof.report.tables import NOT_PAPER, SETTING_COLUMNS, SIDE_NAME, Column, Table, bucket_note, build, num

FORMATS = ("md", "html", "csv", "json")
# Sections of report.md/html, in order; the savings table is split into views of one frame.
SAVINGS_VIEWS = (
    ("Step time", ("step_ms", "speedup_x")),
    ("Peak memory", ("_peak_", "_saving_x")),
    ("Max batch per device", ("max_batch",)),
    ("FLOPs per image (analytic)", ("gflops", "flops_x")),
)


@dataclass
class Report:
    data: Data
    tables: dict[str, Table]
    plots: list[Plot] = field(default_factory=list)
    out: Path = Path(".")
    files: list[str] = field(default_factory=list)


# -- shown tables ------------------------------------------------------------------------------------------
# Cells are formatted by ovprof.report.cells.shown (a unit per byte column, 3-4 significant digits, no scientific
# notation); a table wider than the page is split into parts that repeat its key columns.

PAGE_PX = 1400  # the page report.html is laid out for; BODY_PX is what its tables may take
BODY_PX = PAGE_PX - 2 * 24  # body margin, as in CSS
# Estimated width of a character at the tables' 12 px font, and of a cell's padding + border (checked against
# Chromium's layout of the committed reports at a 1400-px window: no table wider than its box)
CHAR_PX, PAD_PX = 6.5, 14
WRAP_TEXT, WRAP_HEADER = 16, 14  # characters per line a text cell and a header wrap at, comfortably
# Columns that name a row: repeated in every part of a split table (a leading run of them, at most KEY_SHARE of
# the page: the rest of the table needs room).
KEY_COLUMNS = ("run_id", "paper_setting", "encoder_res", "encoder", "res", "batch_per_device", "world_size", "zero",
               "precision", "other_settings", "caption_variant", "variant", "objective", "global_batch", "device_gib")
KEY_SHARE = 0.55


def shown_columns(table: Table, columns: list[Column] | None = None) -> list[Column]:
    """The columns worth showing: present in the frame; 'other settings' only when some row has one; a side's
    columns only when that side was measured somewhere (CSV and JSON keep every column)."""
    f = table.frame
    cols = [c for c in (columns or table.columns) if c.name in f.columns]
    out = []
    for c in cols:
        if c.name == "other_settings" and (f[c.name] == "-").all():
            continue
        side = c.name.split("_", 1)[0]
        if side in SIDE_NAME and f"{side}_status" in f and (f[f"{side}_status"] == "missing").all() \
                and not c.name.endswith(("_gflops_per_image", "_max_batch")):
            continue
        out.append(c)
    return out


@dataclass
class Shown:
    """A table as a reader sees it: headers with their units, formatted cells, and the raw cells behind them."""

    names: list[str]  # frame columns
    headers: list[str]
    kinds: list[str]
    rows: list[list[str]]
    raws: list[list[Any]]
    part: tuple[int, int] = (1, 1)  # (this part, of how many)
    key: int = 0  # leading columns repeated in every part

    def columns(self, idx: list[int], part: tuple[int, int], key: int) -> "Shown":
        pick = lambda row: [row[i] for i in idx]  # noqa: E731
        return Shown(pick(self.names), pick(self.headers), pick(self.kinds), [pick(r) for r in self.rows],
                     [pick(r) for r in self.raws], part, key)


def shown_table(table: Table, columns: list[Column] | None = None, *, dedupe: bool = False) -> Shown:
    cols = shown_columns(table, columns)
    heads, cell_fns = zip(*(cells.shown(table.frame, c) for c in cols)) if cols else ((), ())
    rows, raws, seen = [], [], set()
    for _, r in table.frame.iterrows():
        row = [fn(r) for fn in cell_fns]
        if dedupe and tuple(row) in seen:
            continue
        seen.add(tuple(row))
        rows.append(row)
        raws.append([r.get(c.name) for c in cols])
    return Shown([c.name for c in cols], list(heads), [c.kind for c in cols], rows, raws)


def raw_shown(headers: list[str], rows: list[list[str]]) -> Shown:
    return Shown(list(headers), list(headers), ["text"] * len(headers), rows, rows)


def column_px(header: str, texts: list[str], raws: list[Any]) -> int:
    """The width a column takes comfortably: its header wrapped at word boundaries (never below its longest word),
    text wrapped at about WRAP_TEXT characters, a number on one line."""
    head = max([len(w) for w in header.split()] + [min(len(header), WRAP_HEADER)])
    body = max([len(t) if _is_number(raw) else min(len(t), WRAP_TEXT) for t, raw in zip(texts, raws)] + [0])
    return round(max(head, body) * CHAR_PX) + PAD_PX


def _is_number(raw: Any) -> bool:
    return not isinstance(raw, str) and num(raw) is not None


def split_wide(table: Shown, page_px: int | None = None) -> list[Shown]:
    """The table in parts no wider than `page_px` (as estimated by `column_px`): each part repeats the leading key
    columns (KEY_COLUMNS, at most KEY_SHARE of the page) and takes the other columns in order, each exactly once.
    A table that fits is one part; a single column wider than what is left still gets a part of its own, and a
    group of columns closed by a ratio (kind "x") is not split from its ratio."""
    page_px = page_px or BODY_PX
    widths = [column_px(h, [r[i] for r in table.rows], [r[i] for r in table.raws])
              for i, h in enumerate(table.headers)]
    if sum(widths) <= page_px:
        return [table]
    key = 0
    while key < len(table.names) - 1 and table.names[key] in KEY_COLUMNS \
            and sum(widths[:key + 1]) <= KEY_SHARE * page_px:
        key += 1
    groups: list[list[int]] = []
    used = page_px  # start a new part at the first column
    for i in range(key, len(widths)):
        # break after the part's last ratio column when it has one: a ratio closes its group of columns
        # (OpenVision, caption-only, CLIP, then their ratio), which then stays together; a ratio whose group
        # fills the whole part stays in it, a little too wide, rather than stand alone in the next
        cut = max((n + 1 for n, j in enumerate(groups[-1]) if table.kinds[j] == "x"), default=0) if groups else 0
        lone_ratio = bool(groups) and cut == 0 and table.kinds[i] == "x"
        if used + widths[i] > page_px and not lone_ratio:
            carried = groups[-1][cut:] if 0 < cut < len(groups[-1]) else []
            if carried:
                del groups[-1][cut:]
            groups.append(carried)
            used = sum(widths[:key]) + sum(widths[j] for j in carried)
        groups[-1].append(i)
        used += widths[i]
    return [table.columns(list(range(key)) + g, (n + 1, len(groups)), key) for n, g in enumerate(groups)]


def view(table: Table, columns: list[Column] | None = None, *,
         dedupe: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of a table, whole (unsplit)."""
    t = shown_table(table, columns, dedupe=dedupe)
    return t.headers, t.rows


def part_note(t: Shown) -> str:
    """'part 2 of 3' under a split table's parts, saying which columns repeat."""
    if t.part[1] == 1:
        return ""
    repeat = f"; its first {t.key} column(s) repeat in every part" if t.key else ""
    return f"Part {t.part[0]} of {t.part[1]} of a table too wide for one page{repeat}."


def savings_view(table: Table, needles: tuple[str, ...]) -> list[Column]:
    setting = [*SETTING_COLUMNS, Column("caption_variant", "caption-only masking")]
    if needles == ("max_batch",):  # batch-independent: one row per setting
        setting = [c for c in setting if c.name != "batch_per_device"]
    picked = [c for c in table.columns if c not in setting and any(n in c.name for n in needles)]
    return [*setting, *picked]


# -- JSON / CSV -------------------------------------------------------------------------------


def plain(v: Any) -> Any:
    """A JSON-ready cell: numpy scalars to Python, NaN to None (the tables hold none, but be strict)."""
    if isinstance(v, str) or v is None or isinstance(v, bool):
        return v
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def table_records(t: Table) -> list[dict]:
    return [{k: plain(v) for k, v in r.items()} for r in t.frame.to_dict(orient="records")]


def write_csv(t: Table, path: Path) -> None:
    frame = t.frame if len(t.frame.columns) else pd.DataFrame(columns=[c.name for c in t.columns])
    frame.to_csv(path, index=False)


def tables_json(rep: Report) -> dict:
    return {
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stores": rep.data.stores,
        "runs": len(rep.data.runs), "max_batch_searches": len(rep.data.max_batch),
        "tables": {name: {"title": t.title, "columns": {c.name: c.header for c in t.columns},
                          "notes": t.notes, "rows": table_records(t)}
                   for name, t in rep.tables.items()},
        "plots": [{"file": p.file, "title": p.title, "caption": p.caption, "footer": p.footer} for p in rep.plots],
    }


# -- Markdown -----------------------------------------------------------------------------------


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _sections(rep: Report) -> list[tuple[str, Any]]:
    """The report as (kind, payload) items shared by the Markdown and HTML writers."""
    t, d = rep.tables, rep.data
    plots = {p.file: p for p in rep.plots}
    items: list[tuple[str, Any]] = [("h1", "ovprof report: caption-only (OpenVision 2) vs CLIP-style (OpenVision)")]
    n_status = d.runs["status"].value_counts().to_dict() if len(d.runs) else {}
    items.append(("p", f"Stores: {', '.join(d.stores)}. {len(d.runs)} runs (latest record per run_id; "
                       f"{d.superseded} earlier record(s) superseded; {d.skipped_lines} unreadable line(s) skipped), "
                       f"{len(d.max_batch)} max-batch search(es). Status: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(n_status.items())) + "."))
    sav = t["savings"]
    items.append(("h2", sav.title))
    if sav.frame.empty:
        items.append(("p", sav.empty_reason))
    else:
        for title, needles in SAVINGS_VIEWS:
            items.append(("h3", title))
            if needles != ("max_batch",):
                items.append(("table", (sav, savings_view(sav, needles), False)))
                continue
            items.append(("note", paper.max_batch_note()))
            searched = _with_max_batch(sav)
            if searched.frame.empty:
                items.append(("p", "No max-batch search matches a setting of this table (a sweep point with "
                                   "batch = \"max\" runs one)."))
                continue
            items.append(("table", (searched, savings_view(sav, needles), True)))
            left_out = len(sav.frame.drop_duplicates(["encoder_res", "world_size", "zero", "precision",
                                                      "other_settings", "caption_variant"])) - \
                len(searched.frame.drop_duplicates(["encoder_res", "world_size", "zero", "precision",
                                                    "other_settings", "caption_variant"]))
            if left_out:
                items.append(("note", f"{left_out} other setting(s) of this table have no max-batch search."))
            for n in dict.fromkeys(n for n in searched.frame["max_batch_note"] if n != "-"):
                items.append(("note", n))
        for n in sav.notes:
            items.append(("note", n))
        for f in ("savings.png", "step_time.png", "peak_memory.png"):
            if f in plots:
                items.append(("img", plots[f]))
    items.append(("h2", t["paper_comparison"].title))
    pc = t["paper_comparison"]
    items.append(("p", pc.empty_reason) if pc.frame.empty else ("table", (pc, None, False)))
    items.append(("h2", t["paper_reference"].title))
    for n in t["paper_reference"].notes:
        items.append(("note", n))
    items.append(("table", (t["paper_reference"], None, False)))
    mem_rows = [[p.label, b, o, c] for p in paper.SETTINGS for b, o, c in p.memory_rows]
    items.append(("p", "The paper's peak memory per chip (TPU v4-64, GB as printed), by global batch:"))
    items.append(("raw_table", (["paper setting", "global batch", "OpenVision GB/chip", "OpenVision 2 GB/chip"],
                                mem_rows)))
    for name, plot in (("families", "families.png"), ("mask_ratio", "mask_ratio.png"), ("batch", "batch_memory.png"),
                       ("zero", "zero_memory.png"), ("loss_impl", None), ("levers", None),
                       ("levers_study", "levers_study.png"), ("where_it_goes", None)):
        tab = t[name]
        if name == "levers_study" and tab.frame.empty:  # a study's own section: absent from other reports
            continue
        items.append(("h2", tab.title))
        if name == "zero":
            items.append(("note", bucket_note(d.runs)))
        if tab.frame.empty:
            items.append(("p", tab.empty_reason))
            continue
        for n in tab.notes:
            items.append(("note", n))
        items.append(("table", (tab, None, False)))
        if plot in plots:
            items.append(("img", plots[plot]))
    items.append(("h2", "Estimated (not measured)"))
    items.append(("note", "Everything in this section is predicted by `ovprof estimate`, not measured."))
    for name in ("estimated_vs_measured", "estimated_max_batch", "estimated_paper_memory",
                 "estimated_paper_max_batch"):
        tab = t[name]
        items.append(("h3", tab.title))
        for n in tab.notes:
            items.append(("note", n))
        items.append(("p", tab.empty_reason) if tab.frame.empty else ("table", (tab, None, False)))
    items.append(("h2", t["runs"].title))
    items.append(("table", (t["runs"], None, False)))
    return items


def _shown(kind: str, payload: Any) -> Shown:
    """A ("table", (table, columns, dedupe)) or ("raw_table", (headers, rows)) item of `_sections`, as shown."""
    if kind == "raw_table":
        return raw_shown(*payload)
    tab, cols, dedupe = payload
    return shown_table(tab, cols, dedupe=dedupe)


def _with_max_batch(sav: Table) -> Table:
    """The savings rows where some side has a max-batch search (the rest would be all 'no search' cells)."""
    f = sav.frame
    searched = pd.Series(False, index=f.index)
    for s in SIDE_NAME:
        searched |= f[f"{s}_max_batch"].map(lambda v: not (isinstance(v, str) and v.startswith("no ")))
    return Table(sav.name, sav.title, f[searched], sav.columns, sav.notes)


def render_md(rep: Report) -> str:
    out = []
    for kind, payload in _sections(rep):
        if kind == "h1":
            out.append(f"# {payload}\n")
        elif kind == "h2":
            out.append(f"## {payload}\n")
        elif kind == "h3":
            out.append(f"### {payload}\n")
        elif kind == "p":
            out.append(payload + "\n")
        elif kind == "note":
            out.append(f"> {payload}\n")
        elif kind in ("table", "raw_table"):
            for part in split_wide(_shown(kind, payload)):
                out.append(_md_table(part.headers, part.rows) + "\n")
                if part_note(part):
                    out.append(f"*{part_note(part)}*\n")
        elif kind == "img":
            out.append(f"![{payload.title}]({payload.file})\n\n*{payload.caption}*\n")
    return "\n".join(out)


# -- HTML ----------------------------------------------------------------------------------------

CSS = """
body {{ font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222;
       max-width: {body_px}px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 15px; margin-bottom: 6px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }}
th {{ background: #f3f3f3; text-align: left; }}
td {{ overflow-wrap: break-word; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.why {{ color: #777; font-style: italic; }}
td.bad {{ color: #b00020; font-weight: bold; }}
.note {{ color: #444; font-size: 13px; border-left: 3px solid #ccc; padding-left: 8px; margin: 6px 0; }}
.part {{ color: #777; font-size: 12px; font-style: italic; margin: -12px 0 16px; }}
figure {{ margin: 12px 0 24px; }} figcaption {{ font-size: 12px; color: #555; max-width: 1100px; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.scroll {{ overflow-x: auto; }}
"""


BAD = ("oom", "error", "timeout")


def _td(text: str, raw: Any, kind: str) -> str:
    """A cell; a number right-aligned, a reason in a numeric column grey (a failed run red)."""
    if kind != "text" and num(raw) is not None and not isinstance(raw, str):
        cls = "num"
    elif kind != "text" and isinstance(raw, str):
        cls = "bad" if raw in BAD or raw.endswith(tuple(f" {b}" for b in BAD)) else "why"
    else:
        cls = "bad" if raw in BAD else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def _html_table(t: Shown) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(_td(str(c), rv, k) for c, rv, k in zip(row, rr, t.kinds)) + "</tr>"
                   for row, rr in zip(t.rows, t.raws))
    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    return out + (f'<p class="part">{html.escape(part_note(t))}</p>' if part_note(t) else "")


def render_html(rep: Report) -> str:
    parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
             "<title>ovprof report</title>", f"<style>{CSS.format(body_px=BODY_PX)}</style></head><body>"]
    for kind, payload in _sections(rep):
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "note":
            parts.append(f'<p class="note">{html.escape(payload)}</p>')
        elif kind in ("table", "raw_table"):
            parts += [_html_table(t) for t in split_wide(_shown(kind, payload))]
        elif kind == "img":
            data = base64.b64encode((rep.out / payload.file).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(payload.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(payload.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- terminal ------------------------------------------------------------------------------------

def print_summary(rep: Report, console) -> None:
    """The savings table, compact: one line per comparison, reasons shortened, paper ratios where they apply."""
    from rich.table import Table as RichTable

    f = rep.tables["savings"].frame
    if f.empty:
        console.print(f"[yellow]savings table: {rep.tables['savings'].empty_reason}[/]")
        return
    prim = "reserved" if "openvision_peak_reserved_gib" in f else "tracked"
    spec = [("openvision_step_ms_median", "OpenVision ms", "ms"), ("caption_step_ms_median", "caption-only ms", "ms"),
            ("speedup_x", "speed-up x", "x"), (f"openvision_peak_{prim}_gib", f"OpenVision {prim} GiB", "gib"),
            (f"caption_peak_{prim}_gib", f"caption-only {prim} GiB", "gib"), (f"{prim}_saving_x", "memory x", "x"),
            ("max_batch_x", "max batch x", "x"), ("flops_x", "FLOPs x (analytic)", "x")]
    paper_rows = f["paper_setting"] != NOT_PAPER
    if paper_rows.any():
        spec += [("paper_time_x", "paper time x", "x"), ("paper_memory_x", "paper memory x", "x"),
                 ("paper_max_batch_x", "paper max batch x", "x"), ("paper_flops_x", "paper FLOPs x", "x")]
    t = RichTable(title="Savings: OpenVision vs caption-only (ratios OpenVision / caption-only, max batch the "
                        "other way)", title_justify="left")
    t.add_column("setting", overflow="fold")
    t.add_column("caption-only masking")
    units = {col: cells.column_unit(f[col] if col in f else (), kind) for col, _, kind in spec}
    for col, header, _ in spec:
        t.add_column(cells.shown_header(header, units[col]), justify="right", overflow="fold")
    for _, r in f.iterrows():
        setting = f"{r['encoder_res']} b{r['batch_per_device']}x{r['world_size']} z{r['zero']} {r['precision']}"
        if r["other_settings"] != "-":
            setting += f" {r['other_settings']}"
        row = [_escape(setting), _escape(r["caption_variant"])]
        for col, _, kind in spec:
            v = r.get(col)
            if isinstance(v, str):
                style = "red" if v in BAD or v.endswith(tuple(f" {b}" for b in BAD)) else "dim"
                row.append(f"[{style}]{_escape(_short(v))}[/]")
            else:
                row.append(fmt(v, kind, units[col]))
        t.add_row(*row)
    console.print(t)
    if not paper_rows.all():
        p = paper.SETTINGS[0]
        h = paper.HEADLINE[p.encoder]
        console.print(f"[dim]paper, other settings (orientation only, not comparable): {p.label} on TPU v4 "
                      f"(JAX): time {fmt(h['time_x'], 'x')}, memory {fmt(h['memory_x'], 'x')}, max batch "
                      f"{fmt(h['max_batch_x'], 'x')}, FLOPs {fmt(h['flops_x'], 'x')}; see the report's paper "
                      "reference table.[/]")


def _short(v: str) -> str:
    """A reason, short enough for a terminal cell: 'no OpenVision run at batch 16, ...' -> 'no OpenVision run'."""
    if v.startswith("no ") and v.endswith("max-batch search"):
        return "no search"
    if v.startswith("no ") and " run at " in v:
        v = v.split(" at ", 1)[0]
    if v.startswith("not measured"):
        return "not measured"
    return v if len(v) <= 40 else v[:39] + "…"


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


# -- the whole directory ---------------------------------------------------------------------------


def write_report(stores: list[str], out: str | Path, formats=FORMATS) -> Report:
    """Read the stores, build the tables and plots, write the requested formats into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(stores)
    tables = build(data)
    rep = Report(data=data, tables=tables, out=out)
    rep.plots = draw_all(data, tables, out)
    rep.files += [p.file for p in rep.plots]
    if "csv" in formats:
        for name, t in tables.items():
            write_csv(t, out / f"{name}.csv")
            rep.files.append(f"{name}.csv")
    if "json" in formats:
        (out / "tables.json").write_text(json.dumps(tables_json(rep), indent=1, allow_nan=False) + "\n")
        rep.files.append("tables.json")
    if "md" in formats:
        (out / "report.md").write_text(render_md(rep))
        rep.files.append("report.md")
    if "html" in formats:
        (out / "report.html").write_text(render_html(rep))
        rep.files.append("report.html")
    return rep
