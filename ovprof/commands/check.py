"""`ovprof check`: the CI gate on memory regressions, a committed baseline against the latest results.

    ovprof check --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl --junit check.xml

Semantics (matching, tolerances, verdicts) are in ovprof/check/compare.py and docs/ci.md.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Optional

import typer

from ovprof.commands.common import console, print_json
from ovprof.errors import UsageError

HELP = """Compare each point of a baseline with its latest ok/oom record in the results and fail on a memory regression.

Points are matched by their resolved config (what run_id hashes). The gated metric is peak_allocated_bytes for records from a CUDA device and peak_tracked_bytes (exact live-tensor peak) on CPU; --metric overrides. Step time is gated only with --time-tolerance. A tolerance is a percentage: "5%" and "5" both mean 5 %.

Verdicts: ok, regression (over baseline x (1 + tol)), improved (under baseline x (1 - tol); passes, update the baseline), missing (fails unless --allow-missing), new (passes), status-changed (e.g. ok -> oom; fails).

Examples:

  ovprof check --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl --junit check.xml

  ovprof check --update-baseline --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl

  ovprof check --baseline B.json --results new.jsonl --ignore-field decoder   (compare across a deliberate change)

Exit codes: 0 passed, 1 regression / missing point / status change, 2 bad input."""

_COLORS = {"ok": "green", "improved": "cyan", "new": "blue", "missing": "yellow", "regression": "bold red",
           "status-changed": "bold red"}


def _read_results(paths: list[Path]) -> list:
    """The run records of the stores, in order; a bad line is one warning on stderr (record.read_store)."""
    from ovprof.results import record

    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such results store")
    return record.read_stores(paths).runs


def _value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, str)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.2f}"


def _table(result) -> None:
    from rich.table import Table
    from rich.text import Text

    c = console()
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 160  # CI logs are wide; rich's default of 80 would fold every row
    t = Table(show_lines=False)
    for name, justify in (("point", "left"), ("run_id", "left"), ("metric", "left"), ("baseline", "right"),
                          ("current", "right"), ("delta", "right"), ("verdict", "left")):
        t.add_column(name, justify=justify)
    for p in result.points:
        for i, r in enumerate(p.rows):
            d = r.delta_pct
            verdict = r.verdict + (" (allowed)" if r.excused else "")
            t.add_row(Text(p.label) if i == 0 else "", p.run_id_text if i == 0 else "", r.metric,
                      _value(r.baseline), _value(r.current), "-" if d is None else f"{d:+.2f}%",
                      Text(verdict, style=_COLORS.get(r.verdict, "")))
    c.print(t)


def _summary(result, baseline_path: Path, gate) -> str:
    from ovprof.check.compare import TIME_METRIC, pct_str

    counts = result.counts()
    excused = sum(p.excused and not p.failed for p in result.points)
    parts = [f"{n} {v}" + (f" ({excused} allowed)" if v == "missing" and excused else "") for v, n in counts.items()]
    gated = []
    for p in result.points:
        for r in p.rows:
            if r.metric not in ("status", TIME_METRIC) and r.metric not in gated:
                gated.append(r.metric)
    what = f"{', '.join(gated) or 'status only'} within {pct_str(gate.tolerance_pct)}"
    if gate.time_tolerance_pct is not None:
        what += f", {TIME_METRIC} within {pct_str(gate.time_tolerance_pct)}"
    word = "FAIL" if result.failed else "PASS"
    n = len(result.points)
    return f"{word}: {n} point{'s' * (n != 1)} against {baseline_path}: {', '.join(parts)} ({what})"


def _update(baseline: Path, results: list[Path], metrics: list[str], json_out: bool) -> None:
    from ovprof.check.baseline import build_baseline, dump_baseline

    data = build_baseline(_read_results(results), metrics)
    text = dump_baseline(data)
    baseline.parent.mkdir(parents=True, exist_ok=True)
    tmp = baseline.with_name(baseline.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, baseline)  # a reviewer never sees half a file
    if json_out:
        print_json(data)
        return
    env, pts = data["env"], data["points"]
    n_ok = sum(p["status"] == "ok" for p in pts)
    typer.echo(f"wrote {baseline}: {len(pts)} points ({n_ok} ok, {len(pts) - n_ok} oom), gating "
               f"{', '.join(data['gated_metrics'])}; torch {env['torch']}, deepspeed {env['deepspeed']}, "
               f"ovprof {env['ovprof_version']}, git {(env['git_sha'] or '?')[:12]}")
    if env.get("git_dirty"):
        console().print("[yellow]warning:[/] the records come from a checkout with uncommitted changes; "
                        "commit first so the baseline names the code it measured", soft_wrap=True)


def check(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON (reports/baselines/NAME.json)."),
    results: list[Path] = typer.Option([], "--results", help="JSONL store(s); later ones win. Repeatable. "
                                                              "(default: results/runs.jsonl)"),
    tolerance: str = typer.Option("5%", "--tolerance", help="Allowed growth of each memory metric, in percent: "
                                                            "5% or 5 (a bare number is percent; 0 = exact)."),
    metric: list[str] = typer.Option([], "--metric", help="Gate this memory metric instead of the per-device "
                                                          "default. Repeatable."),
    time_tolerance: Optional[str] = typer.Option(None, "--time-tolerance", help="Also gate step_time_ms_median, "
                                                                                "with this tolerance (e.g. 30%)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report here."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Baseline points absent from the results "
                                                                      "pass (a partial sweep)."),
    ignore_field: list[str] = typer.Option([], "--ignore-field", help="Leave this config field out of the "
                                                                      "match, to compare across a deliberate "
                                                                      "config change. Repeatable."),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Write the baseline from the results "
                                                                          "instead of checking."),
    json_out: bool = typer.Option(False, "--json", help="Print the outcome as JSON instead of a table."),
) -> None:
    from ovprof.check.compare import Gate, check_field_names, check_metric_names, parse_tolerance

    from ovprof.paths import input_file, output_file

    results = results or [Path("results/runs.jsonl")]
    for r in results:
        input_file(r, "--results", missing="no such results store")
    if update_baseline:
        output_file(baseline, "--baseline", not_same_as=tuple(results))
    else:
        input_file(baseline, "--baseline", missing="no such baseline file (write one with: ovprof check "
                   f"--update-baseline --baseline {baseline} --results STORE)")
    if junit is not None:
        output_file(junit, "--junit", not_same_as=(baseline, *results))
    metrics = check_metric_names(metric)
    tol = parse_tolerance(tolerance)
    time_tol: Fraction | None = None if time_tolerance is None else parse_tolerance(time_tolerance,
                                                                                    "--time-tolerance")
    ignore = check_field_names(ignore_field)
    if update_baseline:
        if ignore or junit is not None:
            raise UsageError("--update-baseline writes every point as measured; it takes no --ignore-field "
                             "or --junit")
        _update(baseline, results, metrics, json_out)
        return

    from rich.markup import escape

    from ovprof.check.baseline import load_baseline
    from ovprof.check.compare import compare, plain_lines, to_json

    base = load_baseline(baseline)
    gate = Gate(tolerance_pct=tol, time_tolerance_pct=time_tol, metrics=tuple(metrics), ignore_fields=ignore,
                allow_missing=allow_missing)
    result = compare(base, _read_results(results), gate, baseline_name=str(baseline))
    if junit is not None:
        from ovprof.check.junit import write_junit

        write_junit(result, junit, suite=baseline.stem)
    if json_out:
        print_json(to_json(result))
        raise typer.Exit(result.exit_code)
    c = console()
    if ignore:
        c.print(f"matching points without: {', '.join(sorted(ignore))}", soft_wrap=True)
    for note in result.env_notes:
        c.print(f"[yellow]note:[/] {escape(note)} (points are matched by config; figures may move with the "
                "software)", soft_wrap=True)
    _table(result)
    # Plain lines, not rich: CI logs and grep see each finding whole, never folded.
    for line in plain_lines(result):
        typer.echo(line)
    if any(p.verdict == "improved" for p in result.points):
        typer.echo(f"improvements: refresh the baseline with  ovprof check --update-baseline --baseline {baseline} "
                   + " ".join(f"--results {r}" for r in results))
    from rich.text import Text

    c.print(Text(_summary(result, baseline, gate), style="bold red" if result.failed else "bold green"),
            soft_wrap=True)
    raise typer.Exit(result.exit_code)
