"""Records as one table: CSV or Parquet, one row per record, the frame `ovprof.load_records` returns.

    ovprof export results/quickstart.jsonl --to csv          # -> results/quickstart.csv
    ovprof export results/quickstart.jsonl --to parquet --kind max_batch --out searches.parquet

Columns come from `ovprof.report.load.flat_frame`, the one flattener: `config.<field>`, `metrics.<name>`,
`derived.<name>`, `env.<key>`, `error.<key>`, the record's own fields, `store`. A table holds one kind of record
(run records, or max-batch search summaries): their columns differ, and a column has one type in Parquet.
Parquet keeps a list (`metrics.step_times_ms`, `trials`) as a list; CSV writes a list or an object as JSON text
(`json.loads` reads it back). The file is written beside its target and moved into place, so a failed export
leaves the previous file (or none), never half a table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ovprof.errors import UsageError

SUFFIX = {"csv": ".csv", "parquet": ".parquet"}
EXTRA = {"parquet": ("pyarrow", "parquet")}  # format -> (module it needs, ovprof's extra that installs it)


def require(fmt: str) -> None:
    """A one-line UsageError when the format's library is missing; checked before anything is read or written."""
    if fmt not in EXTRA:
        return
    module, extra = EXTRA[fmt]
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--to {fmt} needs {module}, which is not installed: pip install 'ovprof[{extra}]'") \
            from None


def default_out(store: str | Path, fmt: str, kind: str) -> Path:
    """Beside the store: results/q.jsonl -> results/q.csv (run records), results/q.max_batch.csv (summaries)."""
    p = Path(store)
    return p.with_name(p.stem + ("" if kind == "run" else f".{kind}") + SUFFIX[fmt])


def frame(items, store: str):
    from ovprof.report.load import flat_frame

    return flat_frame((it.record, store) for it in items)


def _json_cells(df):
    """Lists and objects as JSON text (CSV has no other way to hold them; Parquet's fallback)."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df


def write(df, path: Path, fmt: str) -> None:
    """Write `df` to `path` atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # created by the writer: the umask's mode
    try:
        if fmt == "csv":
            _json_cells(df).to_csv(tmp, index=False)
        else:
            import pyarrow

            try:
                df.to_parquet(tmp, index=False, engine="pyarrow")
            except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, pyarrow.ArrowNotImplementedError):
                # a column pyarrow cannot type (a metric a newer ovprof wrote in two shapes): as JSON text
                _json_cells(df).to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
