"""Append-only JSONL store of run records: one JSON object per line.

    store.append("results/runs.jsonl", {"run_id": "ab12", "kind": "run", "status": "ok"})

Several processes (a sweep driver, the runs it launches, a user's second sweep)
may append to the same file at once, and any of them can be killed mid-write.
So each record goes out as one `os.write` under an exclusive `flock`, and the
readers skip a torn line instead of failing on it. Nothing is ever rewritten:
a later record for the same `run_id` supersedes the earlier one on read.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

DONE_STATUSES = ("ok", "oom")


def _finite(value: Any) -> Any:
    """Replace float nan/inf by None, recursively, so strict JSON can encode the record."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(record: dict) -> bytes:
    """The exact bytes `append` writes for `record`, newline included."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a dict, got {type(record).__name__}")
    text = json.dumps(_finite(record), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


def _ends_torn(path: Path) -> bool:
    """True when the file is non-empty and its last byte is not a newline."""
    # The append descriptor is write-only (O_APPEND), so peek through a separate one.
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        size_bytes = os.fstat(fd).st_size
        return size_bytes > 0 and os.pread(fd, 1, size_bytes - 1) != b"\n"
    finally:
        os.close(fd)


def append(path: str | Path, record: dict) -> None:
    """Append one record as a single line; durable (fsynced) when this returns."""
    path = Path(path)
    data = encode(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # A writer killed mid-line leaves no newline; without one, this record
            # would be glued onto the torn bytes and be lost along with them.
            if _ends_torn(path):
                os.write(fd, b"\n")
            written_bytes = os.write(fd, data)
            # Regular files write fully unless the disk is full or a signal lands;
            # finish under the same lock so no other writer can interleave.
            while written_bytes < len(data):
                written_bytes += os.write(fd, data[written_bytes:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_with_stats(path: str | Path) -> tuple[list[dict], int]:
    """Records in file order, and how many non-blank lines were skipped as unparseable."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[dict] = []
    skipped_lines = 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError (a cut multi-byte char)
            skipped_lines += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            skipped_lines += 1
    return records, skipped_lines


def read(path: str | Path) -> list[dict]:
    """Records in file order; [] for a missing file; torn or foreign lines are skipped."""
    return read_with_stats(path)[0]


def _is_run(record: dict) -> bool:
    # Records written before `kind` existed are run records.
    return record.get("kind", "run") == "run"


def latest_by_run_id(records: Iterable[dict]) -> dict[str, dict]:
    """The last run record for each run_id (file order decides, not timestamps)."""
    latest: dict[str, dict] = {}
    for record in records:
        run_id = record.get("run_id")
        if _is_run(record) and isinstance(run_id, str):
            latest[run_id] = record
    return latest


def done_run_ids(path: str | Path, statuses: Iterable[str] = DONE_STATUSES) -> set[str]:
    """run_ids with at least one run record in one of `statuses` (so a resumed sweep skips them)."""
    wanted = set(statuses)
    return {
        record["run_id"]
        for record in read(path)
        if _is_run(record) and isinstance(record.get("run_id"), str) and record.get("status") in wanted
    }
