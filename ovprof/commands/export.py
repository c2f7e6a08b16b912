"""`ovprof export`: run records to MLflow (one run per record), CSV or Parquet.

    ovprof export results/quickstart.jsonl --to mlflow --report reports/quickstart
    ovprof export results/quickstart.jsonl --to csv             # -> results/quickstart.csv

Only typer is imported at module level; pandas, MLflow and pyarrow load inside the command, so `ovprof --help`
and `ovprof export --help` stay fast. What is exported and how: ovprof/export/ and docs/export.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ovprof.errors import UsageError

HELP = """Export run records to MLflow (one run per record), CSV or Parquet.

Exports the latest record per run_id, as `ovprof report` reads them (--all: every record, superseded ones included and tagged so).

--to mlflow: one MLflow run per record (run records and max-batch search summaries): params from its config, metrics from its metrics block (null ones left out, their reasons as null_reason.* tags), tags from its environment (env.*), its status and error, the record itself as the artifact record.json. Into ./mlruns (MLflow's local file store) unless --tracking-uri names another store or a server; experiment: the sweep's name, else the store's name. --report DIR adds the report as the artifacts of one run named "report". Exporting again adds only records not yet in the experiment. Needs pip install 'ovprof\\[mlflow]'.

--to csv, --to parquet: one row per record, every field a column (config.*, metrics.*, derived.*, env.*: the frame ovprof.load_records returns), beside the store unless --out; run records, or --kind max_batch for the search summaries. Parquet needs pip install 'ovprof\\[parquet]'.

Examples:

  ovprof export results/quickstart.jsonl --to mlflow

  ovprof export results/quickstart.jsonl --to mlflow --report reports/quickstart --tracking-uri http://localhost:5000

  ovprof export results/quickstart.jsonl --to parquet --out quickstart.parquet

Exit codes: 0 ok, 1 MLflow failed (a server down), 2 bad input (no such store, no records, unknown target, a library missing); nothing is written on bad input."""

KINDS = ("run", "max_batch")
_MLFLOW_ONLY = ("--tracking-uri", "--experiment", "--report")
_TABLE_ONLY = ("--out", "--kind")


def export(
    store: Path = typer.Argument(..., metavar="STORE", show_default=False, help="The JSONL store to export."),
    to: Optional[str] = typer.Option(None, "--to", metavar="TARGET", help="mlflow, csv or parquet."),
    every: bool = typer.Option(False, "--all", help="Every record, superseded ones too (default: the latest "
                                                    "per run_id)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI",
                                               help="mlflow: a server (http://host:5000), a database "
                                                    "(sqlite:///mlflow.db) or a folder (default: ./mlruns)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", metavar="NAME",
                                             help="mlflow: the experiment (default: the sweep's name, else the "
                                                  "store's stem)."),
    report_dir: Optional[Path] = typer.Option(None, "--report", metavar="DIR",
                                              help="mlflow: a report folder (ovprof report's --out) to log as "
                                                   "the artifacts of a run named 'report'."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="csv/parquet: the file to write (default: beside the store, "
                                            "STORE's stem + .csv/.parquet); replaced if it exists."),
    kind: str = typer.Option("run", "--kind", metavar="KIND",
                             help="csv/parquet: run (run records) or max_batch (max-batch search summaries)."),
) -> None:
    from ovprof import export as X
    from ovprof.paths import input_dir, input_file, output_dir, output_file

    target = _target(to)
    given = {"--tracking-uri": tracking_uri, "--experiment": experiment, "--report": report_dir, "--out": out,
             "--kind": None if kind == "run" else kind}
    wrong = [o for o in (_TABLE_ONLY if target == "mlflow" else _MLFLOW_ONLY) if given[o] is not None]
    if wrong:
        raise UsageError(f"{', '.join(wrong)} does not apply to --to {target}")
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: choose run or max_batch")
    input_file(store, "store", missing="no such store")

    if target == "mlflow":
        from ovprof.export import mlflow_runs as ML

        ML.require()
        uri, folder = ML.resolve_uri(tracking_uri)
        if folder is not None:
            output_dir(folder, "--tracking-uri" if tracking_uri is not None else "MLflow file store")
        if report_dir is not None:
            input_dir(report_dir, "--report")
        chosen = X.read(store, every=every)
        if not chosen.items:
            raise UsageError(f"{store}: no records to export")
        name = ML.experiment_name(chosen, experiment)
        outcome = ML.export(chosen, uri=uri, local=folder is not None, experiment=name, report_dir=report_dir)
        _say_mlflow(chosen, outcome, folder is not None)
        return

    from ovprof.export import tables as T

    T.require(target)
    path = output_file(out or T.default_out(store, target, kind), "--out", not_same_as=(store,))
    chosen = X.read(store, every=every)
    items = chosen.of_kind(kind)
    if not items:
        what = "run records" if kind == "run" else "max-batch search summaries"
        raise UsageError(f"{store}: no {what} to export")
    frame = T.frame(items, chosen.store)
    T.write(frame, path, target)
    from ovprof.commands.common import console

    which = "every record" if every else "the latest per run_id"
    console().print(f"wrote {path}: {len(frame)} {'run records' if kind == 'run' else 'max-batch summaries'} "
                    f"({which}), {frame.shape[1]} columns", markup=False, soft_wrap=True)


def _target(to: Optional[str]) -> str:
    from ovprof.export import TARGETS

    if to is None:
        raise UsageError(f"give --to TARGET: one of {', '.join(TARGETS)}")
    t = to.strip().lower()
    if t not in TARGETS:
        from ovprof.errors import printable

        raise UsageError(f"--to {printable(to)!r}: unknown target; choose from {', '.join(TARGETS)}")
    return t


def _say_mlflow(chosen, o, local: bool) -> None:
    from ovprof.commands.common import console

    c = console()
    parts = [f"{o.new} new", f"{o.already} already there"]
    if o.redone:
        parts.append(f"{o.redone} left half-written before, written again")
    if o.marked_superseded:
        parts.append(f"{o.marked_superseded} earlier run(s) now tagged ovprof.superseded")
    c.print(f"exported {len(chosen.items)} records of {chosen.store} to MLflow experiment '{o.experiment}' "
            f"(id {o.experiment_id}) at {o.uri}: {', '.join(parts)}", markup=False, soft_wrap=True)
    if o.report_run:
        c.print(f"report: the artifacts of run {o.report_run} ('report')", markup=False, soft_wrap=True)
    if local:  # a server has its own UI
        c.print(f"browse (the UI needs the full mlflow package): MLFLOW_ALLOW_FILE_STORE=true mlflow ui "
                f"--backend-store-uri {o.uri}", markup=False, soft_wrap=True)
