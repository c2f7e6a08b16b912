"""Run records out of ovprof: MLflow runs (ovprof/export/mlflow_runs.py), CSV or Parquet tables (tables.py).

    from ovprof.export import read
    chosen = read("results/quickstart.jsonl", every=False)
    [(item.key, item.superseded) for item in chosen.items]

What is exported. By default the records `ovprof report` reads: the latest
record per run_id (a point measured again replaces its earlier record, as
`record.latest` decides), run records and max-batch search summaries alike.
`every=True` (`--all`) exports every readable line, superseded ones included,
each marked `superseded`. The store is parsed by ovprof/results/record.py
only: a torn or malformed line is skipped with its one warning.

A record's key names it across exports: its kind, run_id and start time
(`run/637dd8bfe9aedb4c/2026-11-23T15:47:14.311+00:00`), and, for a second
record with all three equal (a hand-made summary with no timestamps), its
count among them. Nothing in it is computed by this version of ovprof
(normalised config, derived figures), so a newer ovprof finds the runs an
older one exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ovprof.report.load import pick
from ovprof.results import record as R

TARGETS = ("mlflow", "csv", "parquet")


@dataclass(frozen=True)
class Item:
    record: R.Record
    key: str  # stable across exports: see the module docstring
    superseded: bool  # a later record of the same kind and run_id is in the store


@dataclass
class Chosen:
    store: str
    items: list[Item]  # in store order
    lines: int = 0  # records read, all kinds
    skipped: int = 0  # lines skipped with a warning
    superseded_keys: set[str] = field(default_factory=set)  # every superseded record of the store, chosen or not

    def of_kind(self, kind: str) -> list[Item]:
        return [it for it in self.items if it.record.kind == kind]

    def sweep_name(self) -> str | None:
        """The sweep every chosen record came from, if they share one."""
        names = {it.record.sweep for it in self.items}
        return names.pop() if len(names) == 1 else None


def record_keys(records: list[R.Record]) -> list[str]:
    """One key per record, in order (see the module docstring)."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        base = f"{r.kind}/{r.run_id}/{r.started_at or 'no-start-time'}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}/{n}")
    return out


def read(store: str | Path, *, every: bool) -> Chosen:
    """The records of `store` to export: the latest per run_id (each kind on its own), or every one."""
    contents = R.read_store(store)
    records = contents.records
    keys = record_keys(records)
    latest = {id(r) for r in pick(contents.runs, latest=True)} | \
             {id(r) for r in pick(contents.max_batches, latest=True)}
    items = [Item(r, k, superseded=id(r) not in latest) for r, k in zip(records, keys)]
    return Chosen(store=str(store), items=[it for it in items if every or not it.superseded],
                  lines=len(records), skipped=contents.skipped,
                  superseded_keys={it.key for it in items if it.superseded})
