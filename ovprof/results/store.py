"""Append-only JSONL store of run records: one JSON object per line.

    store.append("results/runs.jsonl", {"run_id": "ab12", "kind": "run", "status": "ok"})

Several processes (a sweep driver, the runs it launches, a user's second sweep)
may append to the same file at once, and any of them can be killed mid-write.
So each record goes out as one `os.write` under an exclusive `flock`, and the
readers skip a torn line instead of failing on it. Nothing is ever rewritten:
a later record for the same `run_id` supersedes the earlier one on read. This
module moves bytes and JSON objects; what a record is, and which lines are
records, is ovprof/results/record.py's.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

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


class StoreWriteError(OSError):
    """An append that did not complete (disk full, quota, I/O error); the store was cut back to whole lines."""

    def __init__(self, path: Path, cause: OSError):
        self.path, self.cause = path, cause
        super().__init__(cause.errno, f"cannot append to {path}: {cause.strerror or cause}")


def append(path: str | Path, record: dict) -> None:
    """Append one record as a single line; durable (fsynced) when this returns.

    If the write fails part-way (a full disk), the file is truncated back to its size before this append, so
    no torn line is left, and StoreWriteError names the file; the caller keeps the record (record.py)."""
    path = Path(path)
    data = encode(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size_before = os.fstat(fd).st_size
        try:
            # A writer killed mid-line leaves no newline; without one, this record
            # would be glued onto the torn bytes and be lost along with them.
            if _ends_torn(path):
                _write_all(fd, b"\n")
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as e:
            try:  # under the same lock: nobody else has appended since size_before
                os.ftruncate(fd, size_before)
                os.fsync(fd)
            except OSError:
                pass
            raise StoreWriteError(path, e) from e
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    # Regular files write fully unless the disk is full or a signal lands; finish under the same lock so no
    # other writer can interleave. A zero-byte write means no space.
    written = 0
    while written < len(data):
        n = os.write(fd, data[written:])
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written += n



def sidecar(store_path: str | Path, suffix: str) -> Path:
    """A path beside the store named after it: STORE + suffix (claims, inbox, submitit ledger and folder)."""
    p = Path(store_path)
    return p.with_name(p.name + suffix)


def safe_key(key: str, limit: int) -> str:
    """`key` as a file name: letters, digits, '-', '_' and '.' kept, anything else '_', at most `limit` long."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)[:limit]

@dataclass
class Cursor:
    """Where a reader stopped: the byte offset after the last whole line it read, and that line's number."""

    offset: int = 0
    lineno: int = 0


def lines(path: str | Path, cursor: Cursor | None = None) -> Iterable[tuple[int, bytes]]:
    """(1-based line number, bytes) of every non-blank line; nothing for a missing file.

    With a cursor, read only what follows it and only whole lines (a line still without its newline is left
    for the next read), advancing the cursor: a sweep re-reads its store between points this way. Decoding and
    checking a line is ovprof/results/record.py's job: this module moves bytes."""
    start = cursor.offset if cursor is not None else 0
    try:
        with open(path, "rb") as f:
            f.seek(start)
            raw = f.read()
    except FileNotFoundError:
        return
    if cursor is not None:
        end = raw.rfind(b"\n") + 1  # 0 when no whole line yet
        raw = raw[:end]
    parts = raw.split(b"\n")
    if cursor is not None:
        parts = parts[:-1]  # the empty tail after the last newline
    first = cursor.lineno + 1 if cursor is not None else 1
    for i, line in enumerate(parts):
        if line.strip():
            yield first + i, line
    if cursor is not None:
        cursor.offset = start + len(raw)
        cursor.lineno = first + len(parts) - 1


def read_with_stats(path: str | Path) -> tuple[list[dict], int]:
    """Decoded JSON objects in file order, and how many non-blank lines were not one (raw: no record checks)."""
    objects: list[dict] = []
    skipped_lines = 0
    for _, line in lines(path):
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError (a cut multi-byte char)
            skipped_lines += 1
            continue
        if isinstance(obj, dict):
            objects.append(obj)
        else:
            skipped_lines += 1
    return objects, skipped_lines


def read(path: str | Path) -> list[dict]:
    """Decoded JSON objects in file order; [] for a missing file; torn or foreign lines are skipped.

    Commands read records through ovprof.results.record.read_store, which also checks each one."""
    return read_with_stats(path)[0]
