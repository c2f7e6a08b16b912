"""The report's plots, PNG files drawn with matplotlib's Agg backend (no display needed).

    from ovprof.report.plots import draw_all
    plots = draw_all(data, tables, "reports/quickstart")  # [Plot(file="step_time.png", ...), ...]

Each plot is drawn only when its table has data. Time plots show the median
with the 10th-90th percentile spread as error bars; a failed point is drawn as
a marked "oom"/"error" label, never as a zero-height bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ovprof.report.load import BREAKDOWN, Data
from ovprof.report.tables import SIDE_NAME, SIDES, SOURCE_NAME, Table, num, primary_source

COLORS = {"openvision": "#4C72B0", "caption": "#DD8452", "clip": "#55A868"}
PART_COLORS = dict(zip(BREAKDOWN, ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#8C8C8C")))
DPI = 100


@dataclass
class Plot:
    file: str  # name inside the report directory
    title: str
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI, format="png")
    _plt().close(fig)
    return name


def _row_label(r: pd.Series) -> str:
    parts = [f"{r['encoder_res']}", f"b{r['batch_per_device']}x{r['world_size']}", f"z{r['zero']}"]
    if r.get("other_settings", "-") != "-":
        parts.append(r["other_settings"].replace("memory_budget_gib", "budget"))
    parts.append(f"cap: {r['caption_variant']}")
    return "\n".join([" ".join(parts[:3]), *parts[3:]])


def _failed_mark(ax, x, text, y=0.0):
    ax.annotate(text, (x, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8,
                color="#C44E52", rotation=90, fontweight="bold")


def savings_bars(tables: dict[str, Table], out: Path) -> list[Plot]:
    """Step time (with p10-p90 error bars) and peak memory of each savings row, side by side."""
    plt = _plt()
    f = tables["savings"].frame
    if f.empty:
        return []
    plots = []
    width = 0.8 / len(SIDES)
    xs = range(len(f))
    labels = [_row_label(r) for _, r in f.iterrows()]
    figw = max(7.0, 1.6 * len(f) + 2)

    fig, ax = plt.subplots(figsize=(figw, 4.8))
    for i, s in enumerate(SIDES):
        for x, (_, r) in zip(xs, f.iterrows()):
            pos = x + (i - 1) * width
            med, lo, hi = (num(r[f"{s}_step_ms_{k}"]) for k in ("median", "p10", "p90"))
            if med is None:
                _failed_mark(ax, pos, _short(r[f"{s}_step_ms_median"]))
                continue
            yerr = [[med - lo], [hi - med]] if lo is not None and hi is not None else None
            ax.bar(pos, med, width, color=COLORS[s], yerr=yerr, capsize=3,
                   label=SIDE_NAME[s] if x == _first_numeric(f, f"{s}_step_ms_median") else None)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("step time ms (median, p10-p90 bars)")
    ax.set_title("Step time per device: OpenVision vs caption-only vs CLIP")
    ax.legend(fontsize=8)
    plots.append(Plot(_save(fig, out, "step_time.png"), "Step time",
                      "Median step time of each savings row; error bars span the 10th to 90th percentile of the "
                      "timed steps. Red labels mark runs that did not finish (oom, error, timeout) or are missing."))

    src = "reserved" if any(c.startswith("openvision_peak_reserved") for c in f.columns) else "tracked"
    fig, ax = plt.subplots(figsize=(figw, 4.8))
    for i, s in enumerate(SIDES):
        col = f"{s}_peak_{src}_gib"
        for x, (_, r) in zip(xs, f.iterrows()):
            pos = x + (i - 1) * width
            v = num(r[col]) if col in r else None
            if v is None:
                _failed_mark(ax, pos, _short(r[col]) if col in r else "n/a")
                continue
            ax.bar(pos, v, width, color=COLORS[s], label=SIDE_NAME[s] if x == _first_numeric(f, col) else None)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel(f"peak {SOURCE_NAME[src]} GiB")
    ax.set_title(f"Peak memory per device ({SOURCE_NAME[src]})")
    ax.legend(fontsize=8)
    plots.append(Plot(_save(fig, out, "peak_memory.png"), "Peak memory",
                      f"Peak {SOURCE_NAME[src]} per device (GiB = 2^30 bytes) of each savings row."))
    return plots


def _first_numeric(f: pd.DataFrame, col: str) -> int | None:
    for i, v in enumerate(f[col] if col in f else []):
        if num(v) is not None:
            return i
    return None


def _short(v) -> str:
    s = str(v)
    return "missing" if s.startswith("no ") else s.split(":")[0][:14]


def mask_ratio_plot(tables: dict[str, Table], out: Path) -> list[Plot]:
    """Step time and peak memory vs mask ratio: a column per objective, a line per setting and masked side."""
    plt = _plt()
    f = tables["mask_ratio"].frame
    if f.empty:
        return []
    mem_col = "peak_reserved_gib" if "peak_reserved_gib" in f else "peak_tracked_gib"
    objectives = list(dict.fromkeys(f["objective"]))
    fig, axes = plt.subplots(2, len(objectives), figsize=(5.2 * len(objectives) + 1, 8), squeeze=False)
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
                yerr = [med - ok["step_ms_p10"].astype(float), ok["step_ms_p90"].astype(float) - med]
                ax_t.errorbar(ok["mask_ratio"], med, yerr=yerr, fmt=styles[side], color=color, capsize=3, label=name)
                okm = line[line[mem_col].map(num).notna()]
                ax_m.plot(okm["mask_ratio"], okm[mem_col].astype(float), styles[side], color=color, label=name)
                for _, r in line[line["status"] != "ok"].iterrows():
                    for ax in (ax_t, ax_m):
                        ax.annotate(r["status"], (r["mask_ratio"], 0), color="#C44E52", fontsize=8, ha="center",
                                    xytext=(0, 4), textcoords="offset points")
        ax_t.set_title(f"{obj}: step time vs mask ratio", fontsize=10)
        ax_m.set_title(f"{obj}: peak memory vs mask ratio", fontsize=10)
        ax_t.set_ylabel("step time ms (median, p10-p90 bars)")
        ax_m.set_ylabel(f"peak {SOURCE_NAME[mem_col[5:-4]]} GiB")
        for ax in (ax_t, ax_m):
            ax.set_xlabel("mask ratio (share of visual tokens dropped)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7, loc="best")
    return [Plot(_save(fig, out, "mask_ratio.png"), "Mask ratio",
                 "One column per objective. Solid: decoder side, visual tokens dropped before the caption decoder "
                 "(OpenVision 2); dashed: encoder side, patches dropped before the encoder (FLIP). Ratio 0 is the "
                 "same run on both lines; error bars span the 10th to 90th percentile step time.")]


def batch_plot(data: Data, tables: dict[str, Table], out: Path) -> list[Plot]:
    """Peak memory vs batch per objective variant, with the device limit and each variant's max batch."""
    plt = _plt()
    f = tables["batch"].frame
    if f.empty:
        return []
    prim = primary_source(data.runs)
    mem_col = f"peak_{prim}_gib"
    setting_cols = ["encoder_res", "world_size", "zero", "precision", "other_settings"]
    groups = list(f.groupby(setting_cols, sort=False))[:4]
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False)
    for ax, (gkey, g) in zip(axes[0], groups):
        limit = next((num(v) for v in g["device_limit_gib"] if num(v) is not None), None)
        top = max([num(v) for v in g[mem_col] if num(v) is not None] + [limit or 0]) * 1.2 or 1.0
        marked = 0
        for variant, v in g.groupby("variant", sort=False):
            ok = v[v[mem_col].map(num).notna()]
            (ln,) = ax.plot(ok["batch_per_device"], ok[mem_col].astype(float), "o-", label=variant)
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
            ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"device limit {limit:.4g} GiB")
        batches = sorted({int(b) for b in g["batch_per_device"]} | {int(m) for m in g["max_batch"] if num(m)})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_ylim(0, top)
        ax.set_xlabel("batch per device (images, log scale)")
        ax.set_ylabel(f"peak {SOURCE_NAME[prim]} GiB")
        title = f"{gkey[0]} x{gkey[1]} ZeRO {gkey[2]} {gkey[3]}"
        ax.set_title(title + ("" if gkey[4] == "-" else f"\n{gkey[4]}"), fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    return [Plot(_save(fig, out, "batch_memory.png"), "Memory vs batch",
                 f"Peak {SOURCE_NAME[prim]} per device against batch per device. Dashed: the device limit (memory "
                 "budget or GPU memory) when known; x: a run that failed (oom) at that batch, drawn on the limit; "
                 "dotted vertical lines: the max batch found by a max-batch search.")]


def zero_plot(tables: dict[str, Table], out: Path) -> list[Plot]:
    """Stacked bars: memory at the peak split by kind, for each ZeRO stage and objective variant."""
    plt = _plt()
    f = tables["zero"].frame
    if f.empty:
        return []
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(f) + 2), 5))
    totals = [sum(num(r[f"{k}_gib"]) or 0.0 for k in BREAKDOWN) for _, r in f.iterrows()]
    # debug-size runs are a few MiB: show MiB below 1 GiB so the bars stay readable
    scale, unit = (1024, "MiB (2^20 bytes)") if max(totals, default=0) < 1 else (1, "GiB (2^30 bytes)")
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
    ax.set_xticks(range(len(f)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_xlim(-0.7, len(f) - 0.3)
    ax.set_ylabel(f"tracked memory at the peak, {unit}")
    ax.set_title("Memory by kind and ZeRO stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [Plot(_save(fig, out, "zero_memory.png"), "Memory by ZeRO stage",
                 "Tracked tensors live at the peak, split into parameters, gradients, optimizer state, activations, "
                 f"temporaries, inputs and other; one bar per run, in {unit.split()[0]}.")]


FAMILY_COLORS = {"contrastive": "#4C72B0", "captioning": "#DD8452", "pixel": "#55A868"}


def families_plot(tables: dict[str, Table], out: Path) -> list[Plot]:
    """Bars per run of each setting measured in several families: step time, peak memory, train GFLOPs/image."""
    plt = _plt()
    f = tables["families"].frame
    if f.empty:
        return []
    mem_col = "peak_reserved_gib" if "peak_reserved_gib" in f else "peak_tracked_gib"
    keys = ["encoder_res", "batch_per_device", "world_size", "zero", "precision", "other_settings"]
    groups = list(f.groupby(keys, sort=False))[:4]
    width = max(6.0, 0.5 * max(len(g) for _, g in groups) + 2)
    fig, axes = plt.subplots(3, len(groups), figsize=(width * len(groups), 11), squeeze=False)
    spec = [("step_ms_median", "step time ms (median, p10-p90 bars)"),
            (mem_col, f"peak {SOURCE_NAME[mem_col[5:-4]]} GiB"),
            ("train_gflops_per_image", "train GFLOPs/image (analytic)")]
    for col, (gkey, g) in enumerate(groups):
        labels = [f"{r['objective'].split(' (')[0]}\n{_variant_short(r['variant'])}" for _, r in g.iterrows()]
        colors = [FAMILY_COLORS.get(fam, "#8C8C8C") for fam in g["family"]]
        for row, (name, ylabel) in enumerate(spec):
            ax = axes[row][col]
            for x, (_, r) in enumerate(g.iterrows()):
                v = num(r[name])
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
    return [Plot(_save(fig, out, "families.png"), "Families",
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


def draw_all(data: Data, tables: dict[str, Table], out: str | Path) -> list[Plot]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Plot] = []
    plots += savings_bars(tables, out)
    plots += families_plot(tables, out)
    plots += mask_ratio_plot(tables, out)
    plots += batch_plot(data, tables, out)
    plots += zero_plot(tables, out)
    return plots
