"""Claims: several sweeps on one store share its points, none run twice.

    with claims.claim("results/q.jsonl", run_id) as mine:
        if mine:  # no live sweep runs this point: run it, append its record, then the claim goes
            ...

A claim is a file `<store>.claims/<key>.claim` held under an exclusive `flock`
by the process that runs the point; it names its owner (pid, host, start). The
kernel drops the lock when the owner dies, however it dies, so a claim whose
owner is dead is simply taken over by the next sweep that asks; no pid
guessing, no timeouts. The owner appends the point's record before it lets the
claim go, and a sweep re-reads the store after taking a claim, so a point that
another sweep has just finished is seen as done. flock works on local
filesystems; on NFS it depends on the server's lock manager (docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from ovprof.results.store import safe_key, sidecar


def claims_dir(store: str | Path) -> Path:
    return sidecar(store, ".claims")


def _path(store: str | Path, key: str) -> Path:
    return claims_dir(store) / f"{safe_key(key, 128)}.claim"


def _try_lock(path: Path) -> int | None:
    """An fd holding the lock on the file now at `path`, or None when a live process holds it."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the previous owner may have removed the file between our open and our lock: lock the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def owner(store: str | Path, key: str) -> dict | None:
    """Who holds (or last held) the claim on `key`, as it wrote itself down; None if there is no claim file."""
    try:
        return json.loads(_path(store, key).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def claim(store: str | Path, key: str) -> Iterator[bool]:
    """Yield True while this process holds the claim on `key`, False when a live process holds it."""
    path = _path(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(path)
    if fd is None:
        yield False
        return
    try:
        previous = os.pread(fd, 4096, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if previous.strip():
            me["took_over_from"] = previous.decode(errors="replace")[:300]  # its owner died holding it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still under our lock: a waiting process sees the inode change and retries
        os.close(fd)
