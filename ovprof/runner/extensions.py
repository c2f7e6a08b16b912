"""Stale JIT-build locks: found before a worker starts, removed with one line naming the path.

    python -c "from ovprof.runner.extensions import clear_stale_locks; print(clear_stale_locks())"

torch builds a C++ extension (DeepSpeed's CPU Adam for an offloaded optimizer,
say) under `<TORCH_EXTENSIONS_DIR>/<name>/` holding a plain `lock` file; a
second process that wants the same extension sleeps until the file goes. A
builder killed mid-build leaves it behind and every later worker sleeps until
its timeout. The lock holds no process handle, so liveness is read from
/proc: a build is live while a process works in that folder (ninja and the
compilers run there) or the lock is younger than `FRESH_S` (the moment between
taking the lock and starting ninja). Otherwise the lock is stale and goes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FRESH_S = 30.0


def roots() -> list[Path]:
    """Where torch puts JIT builds: TORCH_EXTENSIONS_DIR, else every ~/.cache/torch_extensions/<python_device>/."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return [Path(env)]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return [p for p in base.glob("*") if p.is_dir()] if base.is_dir() else []


def _busy_dirs() -> set[str]:
    """The working directories of every process we can see."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.add(os.readlink(f"/proc/{entry}/cwd"))
            except OSError:
                pass
    return out


def stale_locks(now: float | None = None) -> list[Path]:
    now = time.time() if now is None else now
    locks = [lock for root in roots() for lock in root.glob("*/lock")]
    if not locks:
        return []
    busy = _busy_dirs()
    stale = []
    for lock in locks:
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:
            continue
        folder = str(lock.parent.resolve())
        live = age < FRESH_S or any(d == folder or d.startswith(folder + os.sep) for d in busy)
        if not live:
            stale.append(lock)
    return stale


def clear_stale_locks(warn=None) -> list[Path]:
    """Remove every stale build lock; `warn` hears one line per lock removed. Returns the locks removed."""
    removed = []
    for lock in stale_locks():
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        removed.append(lock)
        if warn is not None:
            warn(f"removed a stale extension build lock {lock}: no process is building there (a worker killed "
                 "mid-build left it); the next run that needs the extension builds it again")
    return removed
