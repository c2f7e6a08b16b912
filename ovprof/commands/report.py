"""`ovprof report`: the savings tables beside the paper's, with plots, from one or more JSONL stores.

    ovprof report --sweep quickstart                  # results/quickstart.jsonl -> reports/quickstart/
    ovprof report results/a.jsonl results/b.jsonl --out reports/ab --format md,csv

Only typer is imported at module level; pandas and matplotlib load inside the
command, so `ovprof --help` stays fast.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Optional

import typer

from ovprof.errors import UsageError

HELP = """Write a report from run records: the savings table (OpenVision vs caption-only: step time, peak memory, max batch, FLOPs, each ratio beside the paper's where the setting is the paper's), mask-ratio, batch and ZeRO tables, and plots.

Writes report.md, a self-contained report.html (plots embedded), one CSV per table, tables.json and the PNG plots (savings.png: the measured ratios beside the paper's) into the output directory, and prints the savings table.

Examples:

  ovprof report                      # every results/*.jsonl

  ovprof report --sweep quickstart   # results/quickstart.jsonl -> reports/quickstart/

  ovprof report results/runs.jsonl --out reports/mine --format md,html

Exit codes: 0 ok, 2 bad input (no such store, no run records, unknown format)."""

FORMATS = ("md", "html", "csv", "json")


def resolve_stores(stores: list[Path], sweep: Optional[str]) -> tuple[list[str], str]:
    """The store paths to read and the report's default name; a UsageError names what is wrong."""
    if stores and sweep:
        raise UsageError("give store paths or --sweep NAME, not both")
    if sweep:
        path = Path("results") / f"{sweep}.jsonl"
        if not path.is_file():
            raise UsageError(f"{path}: no such store (--sweep {sweep} reads results/{sweep}.jsonl)")
        return [str(path)], sweep
    if stores:
        for p in stores:
            if not p.is_file():
                raise UsageError(f"{p}: no such store")
        return [str(p) for p in stores], (stores[0].stem if len(stores) == 1 else "combined")
    found = sorted(glob.glob("results/*.jsonl"))
    if not found:
        raise UsageError("no stores: results/*.jsonl matches nothing; pass a store path or --sweep NAME")
    return found, (Path(found[0]).stem if len(found) == 1 else "combined")


def parse_formats(text: str) -> set[str]:
    wanted = {f.strip().lower() for f in text.split(",") if f.strip()}
    bad = sorted(wanted - set(FORMATS))
    if bad or not wanted:
        raise UsageError(f"--format {text!r}: unknown format {', '.join(bad) or '(none)'}; "
                         f"choose from {','.join(FORMATS)}")
    return wanted


def report(
    stores: list[Path] = typer.Argument(None, metavar="STORE", show_default=False,
                                        help="JSONL stores to read (default: every results/*.jsonl)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", metavar="NAME",
                                        help="Read results/NAME.jsonl; the report goes to reports/NAME/."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: reports/NAME/, NAME = the "
                                                           "sweep, the single store's stem, or 'combined')."),
    formats: str = typer.Option("md,html,csv,json", "--format", help="Comma-separated: md, html, csv, json. "
                                                                      "PNG plots are always written."),
) -> None:
    from ovprof.paths import input_file, output_dir, plain_name

    if sweep is not None:
        plain_name(sweep, "--sweep")
    paths, name = resolve_stores(list(stores or []), sweep)
    for p in paths:
        input_file(p, "store", missing="no such store")
    wanted = parse_formats(formats)
    out_dir = output_dir(out or Path("reports") / name, "--out")
    from ovprof.results import record

    if not record.read_stores(paths).runs:
        raise UsageError(f"{', '.join(paths)}: no run records to report on")

    from ovprof.commands.common import console
    from ovprof.report.render import print_summary, write_report

    rep = write_report(paths, out_dir, formats=wanted)
    c = console()
    print_summary(rep, c)
    c.print(f"wrote {out_dir}/: {', '.join(rep.files)}")
