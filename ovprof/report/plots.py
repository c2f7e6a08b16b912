"""The report's plots, PNG files drawn with matplotlib's Agg backend (no display needed).

    from ovprof.report.plots import draw_all
    plots = draw_all(data, tables, "reports/quickstart")  # [Plot(file="savings.png", ...), ...]

Each plot is drawn only when its table has data. Time plots show the median
with the 10th-90th percentile spread as error bars; a failed point is drawn as
a marked "oom"/"error" label, never as a zero-height bar. savings.png puts the
measured caption-only vs OpenVision ratios (time, memory, max batch, FLOPs) of
every savings row beside the paper's ratios (ovprof.report.paper), drawn as
lines labelled "paper (TPU v4, JAX)"; a ratio that could not be measured is
"n/a" with its reason. Every plot carries one footer (`footer`): the hardware,
ranks, precision and torch/DeepSpeed versions of the records it was drawn from.
Plots are at most PAGE_IN inches wide, so report.html shows them unscaled.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ovprof.report import paper
from ovprof.report.cells import GIB, column_unit, sig
from ovprof.report.load import BREAKDOWN, Data
from ovprof.report.tables import NOT_PAPER, SIDE_NAME, SIDES, SOURCE_NAME, Table, num, primary_source

COLORS = {"openvision": "#4C72B0", "caption": "#DD8452", "clip": "#55A868"}
PART_COLORS = dict(zip(BREAKDOWN, ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#8C8C8C")))
DPI = 100
PAGE_IN = 13.5  # the widest a plot is drawn (inches at DPI): report.html's 1400-px page, less its margins
FOOTER_PT = 7
MISSING = "#777777"


@dataclass
class Plot:
    file: str  # name inside the report directory
    title: str
    caption: str
    footer: str = ""  # the hardware, precision and versions line drawn on it (`footer`)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# -- the footer every plot carries ---------------------------------------------------------------------------


def _values(col: pd.Series) -> list[str]:
    return sorted({str(v) for v in col if v is not None and not (isinstance(v, float) and v != v)})


def footer(runs: pd.DataFrame) -> str:
    """Where the plotted figures come from, from the records' env blocks: hardware (GPU name and count, or CPU
    model and cores), ranks, precision, torch and DeepSpeed versions. One line per report, on every plot."""
    if runs is None or not len(runs):
        return "no run records"
    hw = []
    for name, g in runs.groupby("hardware", sort=True):
        if name == "unknown hardware":  # a record without an env block
            hw.append(name)
        elif name.endswith("(CPU)"):
            cores = _values(g["cpu_count"].map(lambda v: int(v) if num(v) is not None else None))
            hw.append(f"{name}, {'/'.join(cores) or '?'} cores")
        else:
            gpus = _values(g["gpu_count"].map(lambda v: int(v) if num(v) is not None else None))
            hw.append(f"{'/'.join(gpus) or '?'} x {name}")
    ranks = sorted({int(v) for v in runs["world_size"]})
    torch = _values(runs["torch"]) or ["?"]
    ds = _values(runs["deepspeed"]) or ["?"]
    return (f"Measured on {'; '.join(hw)} | ranks {', '.join(map(str, ranks))} | precision "
            f"{', '.join(_values(runs['precision']))} | torch {', '.join(torch)}, DeepSpeed {', '.join(ds)} | "
            f"PyTorch + DeepSpeed ({len(runs)} run records)")


def add_footer(fig, foot: str, top: float = 1.0):
    """`foot` along the bottom edge of `fig`, wrapped to its width, with the layout (below `top`, a fraction of
    the height) kept clear of it."""
    width_in, height_in = fig.get_size_inches()
    lines = textwrap.wrap(foot, max(40, int(width_in * 72 / (FOOTER_PT * 0.55))))
    text = fig.text(0.005, 0.004, "\n".join(lines), fontsize=FOOTER_PT, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, (len(lines) * FOOTER_PT * 1.3 + 4) / 72 / height_in, 1, top))
    return text


def _save(fig, out: Path, name: str, foot: str, top: float = 1.0) -> str:
    """Write `fig` with its footer; every plot goes through here."""
    add_footer(fig, foot, top)
    fig.savefig(out / name, dpi=DPI, format="png")
    _done(fig)
    return name


def _done(fig) -> None:
    _plt().close(fig)


# -- row labels ------------------------------------------------------------------------------------------------


def row_labels(f: pd.DataFrame, width: int = 46) -> tuple[list[str], str]:
    """A label per savings row naming only what differs between the rows, and the rest once ("all rows: ...")."""
    parts = []
    for _, r in f.iterrows():
        p = {"encoder": str(r["encoder_res"]), "batch": f"batch {r['batch_per_device']}",
             "ranks": f"{r['world_size']} rank(s)", "zero": f"ZeRO {r['zero']}", "precision": str(r["precision"])}
        other = r.get("other_settings", "-")
        for i, item in enumerate([] if other == "-" else other.split(", ")):
            p[f"other{i}:{item}"] = item.replace("memory_budget_gib", "budget")
        p["caption"] = f"caption-only: {r['caption_variant']}"
        parts.append(p)
    keys = list(dict.fromkeys(k for p in parts for k in p))
    common = [k for k in keys if len({p.get(k) for p in parts}) == 1 and all(k in p for p in parts)]
    if len(parts) == 1:  # one row: its label says it all
        common = []
    labels = [textwrap.fill(", ".join(v for k, v in p.items() if k not in common), width, break_on_hyphens=False)
              for p in parts]
    shared = ", ".join(parts[0][k] for k in common) if parts else ""
    return labels, (f"all rows: {shared}" if shared else "")


def _failed_mark(ax, x, text, y=0.0):
    """A vertical bar that is not there: its reason, in red, where the bar would stand."""
    ax.annotate(text, (x, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8,
                color="#C44E52", rotation=90, fontweight="bold")


def _missing_text(ax, y, text, x=0.0):
    ax.annotate(f"n/a: {text}", (x, y), xytext=(3, 0), textcoords="offset points", ha="left", va="center",
                fontsize=7, color=MISSING, style="italic")


_POW = {"B": 0, "KiB": 10, "MiB": 20, "GiB": 30}


def byte_scale(values_gib) -> tuple[float, str]:
    """(factor from GiB, unit) for a memory axis, the unit picked as a table column's is (cells.column_unit)."""
    name, size = column_unit(values_gib, "gib") or ("GiB", GIB)
    return GIB / size, name


def _fig_height(rows: int, per_row: float, extra: float) -> float:
    return min(40.0, max(3.5, rows * per_row + extra))


# -- savings.png: measured ratios beside the paper's ---------------------------------------------------------

# (savings column, panel, paper.HEADLINE key, which way the ratio goes)
RATIOS = (("speedup_x", "time", "time_x", "step time, OpenVision / caption-only"),
          ("{src}_saving_x", "memory", "memory_x", "peak {source}, OpenVision / caption-only"),
          ("max_batch_x", "max batch", "max_batch_x", "max batch, caption-only / OpenVision"),
          ("flops_x", "FLOPs", "flops_x", "forward FLOPs/image (analytic), OpenVision / caption-only"))
RATIO_COLORS = {"time": "#4C72B0", "memory": "#DD8452", "max batch": "#55A868", "FLOPs": "#8172B3"}
PAPER_STYLES = ("--", ":")  # one line style per paper setting, in paper.SETTINGS order


def _has_max_batch(f: pd.DataFrame) -> bool:
    """Some row has a max-batch search on some side (a number, or a search that failed)."""
    return any(not (isinstance(v, str) and v.startswith("no ")) for s in SIDES if f"{s}_max_batch" in f
               for v in f[f"{s}_max_batch"])


def max_batch_grid() -> str:
    """The paper's max-batch grid in a few words, from ovprof.report.paper."""
    grids = ", ".join(f"{'/'.join(b for b, _, _ in s.memory_rows)} ({s.label.split('/')[0]})" for s in paper.SETTINGS)
    return f"paper: largest of a global-batch grid, {grids}, on {paper.MEMORY_POD}; here: a per-device search"


def savings_ratio_figure(f: pd.DataFrame):
    """The figure of savings.png: a panel per ratio (time, memory, max batch when searched, FLOPs), a bar per
    savings row, the paper's ratio per paper setting as a vertical line labelled paper.LABEL. Returns the figure
    and the fraction of its height below the title and legend (where the panels go)."""
    plt = _plt()
    src = "reserved" if "reserved_saving_x" in f else "tracked"
    metrics = [(col.format(src=src), name, key, what.format(source=SOURCE_NAME[src]))
               for col, name, key, what in RATIOS
               if col.format(src=src) in f and (name != "max batch" or _has_max_batch(f))]
    labels, common = row_labels(f)
    if "paper_setting" in f:  # the rows whose line of the paper is the comparable one
        labels = [lab + (f"\n= the paper's {ps}" if ps != NOT_PAPER else "")
                  for lab, ps in zip(labels, f["paper_setting"])]
    n = len(f)
    label_in = 0.075 * max(len(line) for lab in labels for line in lab.splitlines()) + 0.4
    panel_in = min(3.0, (PAGE_IN - label_in) / len(metrics))
    lines = max(lab.count("\n") + 1 for lab in labels)
    title = ["Savings per setting: caption-only (OpenVision 2) vs OpenVision; bars measured, lines the paper's",
             *textwrap.wrap(common, 150)]
    band_in = 0.17 * len(title) + 0.3  # title lines, then the legend's row
    height = _fig_height(n, 0.13 * lines + 0.17, 2.6 + band_in)
    fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False,
                             figsize=(min(PAGE_IN, label_in + panel_in * len(metrics)), height))
    ys = list(range(n))
    handles = {}
    for ax, (col, name, key, what) in zip(axes[0], metrics):
        values = [num(v) for v in f[col]]
        top = max([v for v in values if v is not None] + [paper.HEADLINE[p.encoder][key] for p in paper.SETTINGS])
        for y, v, raw in zip(ys, values, f[col]):
            if v is None:
                _missing_text(ax, y, _why(raw))
                continue
            ax.barh(y, v, 0.6, color=RATIO_COLORS[name])
            ax.annotate(f"{v:.2f}x", (v, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7,
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        handles["1x"] = ax.axvline(1.0, color="#999999", linewidth=0.8, label="1x: no change")
        for i, (p, style) in enumerate(zip(paper.SETTINGS, PAPER_STYLES)):
            v = paper.HEADLINE[p.encoder][key]
            handles[p.label] = ax.axvline(v, color="black", linestyle=style, linewidth=1.4,
                                          label=f"{paper.LABEL}: {p.label}")
            ax.annotate(f"{p.label.split('/')[0]} {v:.2f}x", (v, 1.0), xycoords=ax.get_xaxis_transform(),
                        xytext=(0, 2 + 9 * i), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xlim(0, top * 1.3)
        ax.set_title(name, pad=24, fontsize=10, fontweight="bold")
        xlabel = textwrap.fill(what, 34)
        if name == "max batch":
            xlabel += "\n" + textwrap.fill(max_batch_grid(), 40)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(ys, labels, fontsize=7)
    axes[0][0].set_ylim(n - 0.5, -0.5)  # first row on top
    order = ["1x", *(p.label for p in paper.SETTINGS)]
    # fig.text, not suptitle: tight_layout would reserve room for a suptitle a second time, below `top`
    fig.text(0.01, 1 - 0.05 / height, "\n".join(title), fontsize=9, ha="left", va="top")
    fig.legend([handles[k] for k in order], [handles[k].get_label() for k in order], loc="upper left",
               bbox_to_anchor=(0.01, 1 - (0.17 * len(title) + 0.08) / height), fontsize=7, ncol=3, frameon=False)
    return fig, 1 - band_in / height


def _why(raw) -> str:
    """A short reason for a missing ratio: 'OpenVision oom', 'no OpenVision run', 'no max-batch search'."""
    text = str(raw)
    return text if len(text) <= 32 else text[:31] + "…"


def savings_ratio_plot(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    f = tables["savings"].frame
    if f.empty:
        return []
    fig, top = savings_ratio_figure(f)
    searched = _has_max_batch(f)
    return [Plot(_save(fig, out, "savings.png", foot, top), "Savings ratios beside the paper's",
                 "One bar per row of the savings table: the measured ratio of caption-only (OpenVision 2) to "
                 "OpenVision (CLIP-style) for step time, peak memory (the device's limiting source), "
                 + ("max batch per device, " if searched else "")
                 + "and analytic forward FLOPs per image; above 1, caption-only saves (for max batch: fits "
                 "more). Lines: the paper's ratios for " + " and ".join(p.label for p in paper.SETTINGS)
                 + " (legend: " + paper.LABEL + "; source: " + paper.SOURCE + "); beside a row at another encoder, "
                 "resolution, hardware or batch they are for orientation only. n/a: the ratio could not be "
                 "measured, with the reason."
                 + (" " + paper.max_batch_note() if searched
                    else " No max-batch search in these records, so no max-batch panel."))]


# -- step time and peak memory per savings row -------------------------------------------------------------


def _sides_measured(f: pd.DataFrame) -> list[str]:
    """The sides some savings row has a run of (a side run nowhere would only fill the plot with n/a)."""
    return [s for s in SIDES if f"{s}_status" not in f or (f[f"{s}_status"] != "missing").any()]


def _side_bars(ax, f: pd.DataFrame, sides: list[str], col_of, err_of=None, scale: float = 1.0) -> None:
    """Horizontal bars, one group per savings row, one bar per side; a missing figure is 'n/a' text."""
    height = 0.8 / len(sides)
    for i, s in enumerate(sides):
        col = col_of(s)
        first = True
        for y, (_, r) in enumerate(f.iterrows()):
            pos = y + (i - (len(sides) - 1) / 2) * height
            v = num(r[col]) if col in r else None
            if v is not None:
                v *= scale
            if v is None:
                raw = str(r[col]) if col in r else "not measured"
                why = f"no {SIDE_NAME[s]} run" if raw.startswith("no ") else f"{SIDE_NAME[s]} {_short(raw)}"
                _missing_text(ax, pos, why)
                continue
            err = err_of(r, s, v) if err_of else None
            ax.barh(pos, v, height, color=COLORS[s], xerr=err, capsize=2, error_kw={"linewidth": 0.8},
                    label=SIDE_NAME[s] if first else None)
            end = v + (err[1][0] if err else 0.0)  # the value beside the bar (past its error bar)
            ax.annotate(sig(v, 3), (end, pos), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
            first = False
    ax.set_ylim(len(f) - 0.5, -0.5)


def _spread(r: pd.Series, s: str, med: float):
    lo, hi = (num(r[f"{s}_step_ms_{k}"]) for k in ("p10", "p90"))
    return [[med - lo], [hi - med]] if lo is not None and hi is not None else None


def savings_bars(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    """Step time (with p10-p90 error bars) and peak memory of each savings row, side by side."""
    plt = _plt()
    f = tables["savings"].frame
    if f.empty:
        return []
    plots = []
    sides = _sides_measured(f)
    labels, common = row_labels(f)
    lines = max(lab.count("\n") + 1 for lab in labels)
    label_in = 0.075 * max(len(line) for lab in labels for line in lab.splitlines()) + 0.4
    size = (min(PAGE_IN, label_in + 7.0), _fig_height(len(f), max(0.13 * lines + 0.17, 0.2 * len(sides) + 0.15), 2.2))
    absent = [SIDE_NAME[s] for s in SIDES if s not in sides]
    sub = "".join(f"\n{line}" for line in textwrap.wrap(common, 140))
    sub += f"\nnot run at any of these settings: {' or '.join(absent)}" if absent else ""

    fig, ax = plt.subplots(figsize=size)
    _side_bars(ax, f, sides, lambda s: f"{s}_step_ms_median", _spread)
    ax.set_yticks(range(len(f)), labels, fontsize=7)
    ax.set_xlabel("step time ms (median, p10-p90 bars)")
    ax.set_title("Step time per device: OpenVision vs caption-only vs CLIP" + sub, fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="lower right")
    plots.append(Plot(_save(fig, out, "step_time.png", foot), "Step time",
                      "Median step time of each savings row; error bars span the 10th to 90th percentile of the "
                      "timed steps. n/a marks a side that did not finish (oom, error, timeout) or was not run."))

    src = "reserved" if any(c.startswith("openvision_peak_reserved") for c in f.columns) else "tracked"
    fig, ax = plt.subplots(figsize=size)
    scale, unit = byte_scale([v for s in sides for v in f[f"{s}_peak_{src}_gib"]])
    _side_bars(ax, f, sides, lambda s: f"{s}_peak_{src}_gib", scale=scale)
    ax.set_yticks(range(len(f)), labels, fontsize=7)
    ax.set_xlabel(f"peak {SOURCE_NAME[src]} {unit}")
    ax.set_title(f"Peak memory per device ({SOURCE_NAME[src]})" + sub, fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="lower right")
    plots.append(Plot(_save(fig, out, "peak_memory.png", foot), "Peak memory",
                      f"Peak {SOURCE_NAME[src]} per device ({unit}, binary: 1 {unit} = 2^{_POW[unit]} bytes) of each "
                      "savings row; n/a marks a "
                      "side that did not finish or was not run."))
    return plots


def _first_numeric(f: pd.DataFrame, col: str) -> int | None:
    for i, v in enumerate(f[col] if col in f else []):
        if num(v) is not None:
            return i
    return None


def _short(v) -> str:
    s = str(v)
    return "missing" if s.startswith("no ") else s.split(":")[0][:14]


def mask_ratio_plot(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    """Step time and peak memory vs mask ratio: a column per objective, a line per setting and masked side."""
    plt = _plt()
    f = tables["mask_ratio"].frame
    if f.empty:
        return []
    mem_col = "peak_reserved_gib" if "peak_reserved_gib" in f else "peak_tracked_gib"
    objectives = list(dict.fromkeys(f["objective"]))
    fig, axes = plt.subplots(2, len(objectives), figsize=(min(PAGE_IN, 5.2 * len(objectives) + 1), 8), squeeze=False)
    mscale, munit = byte_scale(f[mem_col])
    styles = {"decoder": "o-", "encoder": "s--"}
    for col, obj in enumerate(objectives):
        ax_t, ax_m = axes[0][col], axes[1][col]
        fo = f[f["objective"] == obj]
        keys = ["encoder_res", "batch_per_device", "world_size", "zero", "precision", "other_settings"]
        for i, (gkey, g) in enumerate(fo.groupby(keys, sort=False)):
            color = f"C{i % 10}"
            zero_pts = g[g["mask_ratio"] == 0]
            for side in ("decoder", "encoder"):
                line = pd.concat([zero_pts, g[(g["mask_ratio"] > 0) & (g["mask_position"] == side)]])
                if (line["mask_ratio"] > 0).sum() == 0:
                    continue
                line = line.drop_duplicates("mask_ratio").sort_values("mask_ratio")
                name = f"b{gkey[1]} ZeRO {gkey[3]}" + ("" if gkey[5] == "-" else f" {gkey[5]}") + f", {side} side"
                ok = line[line["step_ms_median"].map(num).notna()]
                med = ok["step_ms_median"].astype(float)
                # a spread that was not measured (text in its cell) draws no error bar, never a failure
                p10 = ok["step_ms_p10"].map(num).astype(float).fillna(med)
                p90 = ok["step_ms_p90"].map(num).astype(float).fillna(med)
                yerr = [med - p10, p90 - med]
                ax_t.errorbar(ok["mask_ratio"], med, yerr=yerr, fmt=styles[side], color=color, capsize=3, label=name)
                okm = line[line[mem_col].map(num).notna()]
                ax_m.plot(okm["mask_ratio"], okm[mem_col].astype(float) * mscale, styles[side], color=color,
                          label=name)
                for _, r in line[line["status"] != "ok"].iterrows():
                    for ax in (ax_t, ax_m):
                        ax.annotate(r["status"], (r["mask_ratio"], 0), color="#C44E52", fontsize=8, ha="center",
                                    xytext=(0, 4), textcoords="offset points")
        ax_t.set_title(f"{obj}: step time vs mask ratio", fontsize=10)
        ax_m.set_title(f"{obj}: peak memory vs mask ratio", fontsize=10)
        ax_t.set_ylabel("step time ms (median, p10-p90 bars)")
        ax_m.set_ylabel(f"peak {SOURCE_NAME[mem_col[5:-4]]} {munit}")
        for ax in (ax_t, ax_m):
            ax.set_xlabel("mask ratio (share of visual tokens dropped)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7, loc="best")
    return [Plot(_save(fig, out, "mask_ratio.png", foot), "Mask ratio",
                 "One column per objective. Solid: decoder side, visual tokens dropped before the caption decoder "
                 "(OpenVision 2); dashed: encoder side, patches dropped before the encoder (FLIP). Ratio 0 is the "
                 "same run on both lines; error bars span the 10th to 90th percentile step time.")]


def batch_plot(data: Data, tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    """Peak memory vs batch per objective variant, with the device limit and each variant's max batch."""
    plt = _plt()
    f = tables["batch"].frame
    if f.empty:
        return []
    prim = primary_source(data.runs)
    mem_col = f"peak_{prim}_gib"
    setting_cols = ["encoder_res", "world_size", "zero", "precision", "other_settings"]
    groups = list(f.groupby(setting_cols, sort=False))[:4]
    fig, axes = plt.subplots(1, len(groups), figsize=(min(PAGE_IN, 6.5 * len(groups)), 5), squeeze=False)
    scale, unit = byte_scale([*f[mem_col], *f["device_limit_gib"]])
    for ax, (gkey, g) in zip(axes[0], groups):
        limit = next((num(v) * scale for v in g["device_limit_gib"] if num(v) is not None), None)
        top = max([num(v) * scale for v in g[mem_col] if num(v) is not None] + [limit or 0]) * 1.2 or 1.0
        marked = 0
        for variant, v in g.groupby("variant", sort=False):
            ok = v[v[mem_col].map(num).notna()]
            (ln,) = ax.plot(ok["batch_per_device"], ok[mem_col].astype(float) * scale, "o-", label=variant)
            bad = v[v[mem_col].map(num).isna()]
            if len(bad):  # failed points sit on the limit (or the top): they did not fit
                y = limit if limit is not None else top / 1.2
                ax.plot(bad["batch_per_device"], [y] * len(bad), "x", color=ln.get_color(), markersize=10, mew=2)
                for _, r in bad.iterrows():
                    ax.annotate(r["status"], (r["batch_per_device"], y), xytext=(5, 5), textcoords="offset points",
                                fontsize=8, color=ln.get_color())
            mb = next((int(m) for m in v["max_batch"] if num(m) is not None), None)
            if mb is not None:
                ax.axvline(mb, color=ln.get_color(), linestyle=":", linewidth=1.5)
                ax.annotate(f"max batch {mb}", (mb, 0.04 + 0.06 * marked), xycoords=ax.get_xaxis_transform(),
                            xytext=(4, 0), textcoords="offset points", fontsize=8, color=ln.get_color())
                marked += 1
        if limit is not None:
            ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"device limit {sig(limit)} {unit}")
        batches = sorted({int(b) for b in g["batch_per_device"]} | {int(m) for m in g["max_batch"] if num(m)})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_ylim(0, top)
        ax.set_xlabel("batch per device (images, log scale)")
        ax.set_ylabel(f"peak {SOURCE_NAME[prim]} {unit}")
        title = f"{gkey[0]} x{gkey[1]} ZeRO {gkey[2]} {gkey[3]}"
        ax.set_title(title + ("" if gkey[4] == "-" else f"\n{gkey[4]}"), fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    return [Plot(_save(fig, out, "batch_memory.png", foot), "Memory vs batch",
                 f"Peak {SOURCE_NAME[prim]} per device against batch per device. Dashed: the device limit (memory "
                 "budget or GPU memory) when known; x: a run that failed (oom) at that batch, drawn on the limit; "
                 "dotted vertical lines: the max batch found by a max-batch search.")]


def zero_plot(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    """Stacked bars: memory at the peak split by kind, for each ZeRO stage and objective variant."""
    plt = _plt()
    f = tables["zero"].frame
    if f.empty:
        return []
    width = min(PAGE_IN, max(7.0, 0.9 * len(f) + 2))
    fig, ax = plt.subplots(figsize=(width, 5 if width / len(f) >= 0.8 else 6))
    totals = [sum(num(r[f"{k}_gib"]) or 0.0 for k in BREAKDOWN) for _, r in f.iterrows()]
    # debug-size runs are a few MiB: the axis takes the unit of the tallest bar, as a table column would
    scale, unit = byte_scale(totals)
    unit = f"{unit} (2^{_POW[unit]} bytes)"
    labels = []
    for x, (_, r) in enumerate(f.iterrows()):
        labels.append(f"{r['variant']}\nb{r['batch_per_device']} ZeRO {r['zero']}")
        if r["status"] != "ok":
            _failed_mark(ax, x, r["status"])
            continue
        bottom = 0.0
        for k in BREAKDOWN:
            v = (num(r[f"{k}_gib"]) or 0.0) * scale  # a kind absent at the peak is zero bytes of that kind
            ax.bar(x, v, 0.6, bottom=bottom, color=PART_COLORS[k], label=k if x == _first_ok(f) else None)
            bottom += v
    crowded = width / len(f) < 0.8  # inches per bar: slanted labels would run into each other
    ax.set_xticks(range(len(f)), labels, fontsize=7, rotation=90 if crowded else 30,
                  ha="center" if crowded else "right")
    ax.set_xlim(-0.7, len(f) - 0.3)
    ax.set_ylabel(f"tracked memory at the peak, {unit}")
    ax.set_title("Memory by kind and ZeRO stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [Plot(_save(fig, out, "zero_memory.png", foot), "Memory by ZeRO stage",
                 "Tracked tensors live at the peak, split into parameters, gradients, optimizer state, activations, "
                 f"temporaries, inputs and other; one bar per run, in {unit.split()[0]}.")]


FAMILY_COLORS = {"contrastive": "#4C72B0", "captioning": "#DD8452", "pixel": "#55A868"}


def families_plot(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    """Bars per run of each setting measured in several families: step time, peak memory, train GFLOPs/image."""
    plt = _plt()
    f = tables["families"].frame
    if f.empty:
        return []
    mem_col = "peak_reserved_gib" if "peak_reserved_gib" in f else "peak_tracked_gib"
    keys = ["encoder_res", "batch_per_device", "world_size", "zero", "precision", "other_settings"]
    groups = list(f.groupby(keys, sort=False))[:4]
    width = min(PAGE_IN / len(groups), max(6.0, 0.5 * max(len(g) for _, g in groups) + 2))
    fig, axes = plt.subplots(3, len(groups), figsize=(width * len(groups), 11), squeeze=False)
    mscale, munit = byte_scale(f[mem_col])
    spec = [("step_ms_median", "step time ms (median, p10-p90 bars)"),
            (mem_col, f"peak {SOURCE_NAME[mem_col[5:-4]]} {munit}"),
            ("train_gflops_per_image", "train GFLOPs/image (analytic)")]
    for col, (gkey, g) in enumerate(groups):
        labels = [f"{r['objective'].split(' (')[0]}\n{_variant_short(r['variant'])}" for _, r in g.iterrows()]
        colors = [FAMILY_COLORS.get(fam, "#8C8C8C") for fam in g["family"]]
        for row, (name, ylabel) in enumerate(spec):
            ax = axes[row][col]
            for x, (_, r) in enumerate(g.iterrows()):
                v = num(r[name])
                if v is not None and name == mem_col:
                    v *= mscale
                if v is None:
                    _failed_mark(ax, x, _short(r[name]) if r["status"] == "ok" else r["status"])
                    continue
                err = None
                if name == "step_ms_median" and num(r["step_ms_p10"]) is not None and num(r["step_ms_p90"]) is not None:
                    err = [[v - r["step_ms_p10"]], [r["step_ms_p90"] - v]]
                ax.bar(x, v, 0.7, color=colors[x], yerr=err, capsize=3)
            ax.set_xticks(range(len(g)), labels if row == 2 else [""] * len(g), fontsize=7, rotation=45, ha="right")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_ylim(bottom=0)
            if row == 0:
                title = f"{gkey[0]} b{gkey[1]}x{gkey[2]} ZeRO {gkey[3]} {gkey[4]}"
                ax.set_title(title + ("" if gkey[5] == "-" else f"\n{gkey[5]}"), fontsize=10)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in FAMILY_COLORS.values()]
        axes[0][col].legend(handles, list(FAMILY_COLORS), fontsize=7, loc="upper left")
    return [Plot(_save(fig, out, "families.png", foot), "Families",
                 "One column per setting measured in several families; one bar per run, colored by family "
                 "(contrastive, captioning, pixel). Top: median step time with the 10th-90th percentile spread; "
                 "middle: peak memory; bottom: analytic training FLOPs per image.")]


def _variant_short(v: str) -> str:
    """'mae mask 0.75 (encoder), pixel_decoder dec-mae, mask_grid 1, cls_tokens 1' -> 'mask 0.75, grid 1'."""
    parts = v.split(", ")
    head = parts[0].split(" ", 1)[1] if " " in parts[0] else parts[0]
    head = head.replace(" (encoder)", "").replace(" (decoder)", "")
    grid = next((p.split()[-1] for p in parts[1:] if p.startswith("mask_grid ")), None)
    return head + (f", grid {grid}" if grid else "")


def _first_ok(f: pd.DataFrame) -> int:
    return next(i for i, s in enumerate(f["status"]) if s == "ok")


def levers_study_figure(frame: pd.DataFrame):
    """Per study group: memory (baseline / run) and max batch (run / baseline) for each lever alone, then the
    waterfall of the stacked levers (each floating bar goes from the ratio before the lever to the ratio with
    it), with the paper's OpenVision 2 ratios at ViT-L/14 as lines."""
    from ovprof.report.stacking import chain

    plt = _plt()
    groups = list(frame.groupby(["setting", "batch"], sort=False))
    n_rows = max(len(g) for _, g in groups)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13.5, 1.2 + 0.42 * n_rows * len(groups)), squeeze=False)
    ref = paper.HEADLINE["vit-l14"]
    for gi, ((where, batch), g) in enumerate(groups):
        g = g.reset_index(drop=True)
        steps = chain(g)
        order = [i for i in range(len(g)) if i not in steps[1:]] + steps[1:]  # alone rows, then the waterfall
        labels = [("+ " + g["levers"][i].removeprefix("+ ").split(" + ")[-1] if i in steps[1:] else g["levers"][i])
                  for i in order]
        for ax, col, title, line in ((axes[gi][0], "memory_x", f"lower peak memory (x), batch {batch}",
                                      ref["memory_x"]),
                                     (axes[gi][1], "max_batch_x", "larger max batch (x), searched under "
                                      + ", ".join(dict.fromkeys(f"{b:g} GiB" if num(b) is not None else str(b)
                                                                for b in g["max_batch_budget_gib"])),
                                      ref["max_batch_x"])):
            prev = None
            for y, i in enumerate(order):
                v = num(g[col][i])
                kind = g["kind"][i]
                color = {"baseline": "#8C8C8C", "caption-only": "#DD8452", "alone": "#4C72B0",
                         "stacked": "#55A868"}.get(kind, "#4C72B0")
                if i in steps[1:]:
                    color = "#55A868"
                if v is None:
                    ax.text(1.0, y, f"  n/a: {g[col][i]}", va="center", fontsize=8, color="#C44E52")
                    prev = None if i in steps else prev
                    continue
                if i in steps[1:] and prev is not None:  # a waterfall step: from the ratio before to this one
                    ax.barh(y, v - prev, left=prev, color=color, height=0.6)
                else:
                    ax.barh(y, v, color=color, height=0.6)
                ax.text(v, y, f" {v:.2f}x", va="center", fontsize=8)
                if i in steps:
                    prev = v
            ax.axvline(1.0, color="#8C8C8C", lw=0.8)
            ax.axvline(line, color="#C44E52", ls="--", lw=1.2,
                       label=f"{paper.LABEL}: OpenVision 2 at ViT-L/14, {line:g}x")
            if len(steps) > 1:
                ax.axhline(len(order) - len(steps) + 0.5, color="#CCCCCC", lw=0.8)
            ax.set_yticks(range(len(order)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{title}\n{where}", fontsize=9)
            ax.legend(fontsize=7, loc="upper right")
            top = max([line, *(v for v in g[col].map(num) if v is not None)])
            ax.set_xlim(0, top * 1.15)
    fig.suptitle("Levers against the OpenVision baseline: each alone (blue), then stacked one by one (green, "
                 "a waterfall: each bar spans what its lever adds)", fontsize=10)
    fig.tight_layout()
    return fig


def levers_study_plot(tables: dict[str, Table], out: Path, foot: str) -> list[Plot]:
    t = tables.get("levers_study")
    if t is None or t.frame.empty:
        return []
    fig = levers_study_figure(t.frame)
    return [Plot(_save(fig, out, "levers_study.png", foot), "Levers study: alone and stacked",
                 "Left: the baseline's tracked peak over each run's (per device, higher is better); right: each "
                 "run's max batch over the baseline's under the same budget. Blue: one lever on caption-only "
                 "without masking; green: the levers stacked one at a time, each bar from the ratio before its "
                 "lever to the ratio with it, so the last bar ends at all levers together. Dashed: the paper's "
                 "OpenVision 2 ratios at ViT-L/14 (TPU v4, JAX), for orientation: another scale and hardware.")]


def draw_all(data: Data, tables: dict[str, Table], out: str | Path) -> list[Plot]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    foot = footer(data.runs)
    plots: list[Plot] = []
    plots += savings_ratio_plot(tables, out, foot)
    plots += savings_bars(tables, out, foot)
    plots += families_plot(tables, out, foot)
    plots += mask_ratio_plot(tables, out, foot)
    plots += batch_plot(data, tables, out, foot)
    plots += zero_plot(tables, out, foot)
    plots += levers_study_plot(tables, out, foot)
    for p in plots:
        p.footer = foot
    return plots
