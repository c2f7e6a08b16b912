"""Filesystem targets checked before anything runs: one line naming the argument, exit 2.

    from ovprof.paths import output_file
    output_file("results/q.jsonl", "--store")        # fine, or UsageError("--store results/q.jsonl: ...")

A command validates every path it will write or read before the first worker
starts, so bad input never costs a run and never leaves half a result: a store
that is a directory, a FIFO or a device, the sweep file itself given as the
store, a path under a regular file, a folder that cannot be created or written,
a name that climbs out of its folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ovprof.errors import UsageError, printable


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _bad(what: str, path: Path | str, why: str) -> UsageError:
    return UsageError(f"{what} {printable(path)}: {why}")


def _check_parents(path: Path, what: str) -> None:
    """Every existing ancestor must be a directory; the nearest existing one must be writable."""
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue  # a higher ancestor is a file: found below
        if not stat.S_ISDIR(st.st_mode):
            raise _bad(what, path, f"{printable(parent)} is {_kind(st.st_mode).replace('not a regular file', 'a file')}"
                       ", not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise _bad(what, path, f"cannot create it: {printable(parent)} is not writable")
        return


def output_file(path: str | Path, what: str, *, not_same_as: tuple[str | Path, ...] = ()) -> Path:
    """A file ovprof will create or append to (a store, a baseline, a JUnit report)."""
    p = Path(path)
    if str(path).strip() == "":
        raise UsageError(f"{what}: an empty path")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise _bad(what, p, f"is {_kind(st.st_mode)}, not a file")
        for other in not_same_as:
            try:
                if os.path.samefile(p, other):
                    raise _bad(what, p, f"is {printable(other)} itself")
            except FileNotFoundError:
                pass
        if not os.access(p, os.W_OK):
            raise _bad(what, p, "is not writable")
    _check_parents(p, what)
    return p


def output_dir(path: str | Path, what: str) -> Path:
    """A folder ovprof will create or write into (a report, a log folder)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise _bad(what, p, f"is {_kind(st.st_mode).replace('not a regular file', 'a file')}, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise _bad(what, p, "is not writable")
        return p
    _check_parents(p / "x", what)
    return p


def _input(path: str | Path, what: str, missing: str, folder: bool) -> Path:
    """A path ovprof will read: present, of the right kind, readable; else one BadPath naming it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise _bad(what, p, missing) from None
    except OSError as e:
        raise _bad(what, p, f"cannot read it ({e.strerror})") from None
    if folder and not stat.S_ISDIR(st.st_mode):
        raise _bad(what, p, f"is {_kind(st.st_mode).replace('not a regular file', 'a file')}, not a folder")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise _bad(what, p, f"is {_kind(st.st_mode)}, not a file")
    if not os.access(p, os.R_OK | (os.X_OK if folder else 0)):
        raise _bad(what, p, "is not readable")
    return p


def input_file(path: str | Path, what: str, *, missing: str = "no such file") -> Path:
    """A file ovprof will read (a store, a sweep file, a DeepSpeed config, a baseline)."""
    return _input(path, what, missing, folder=False)


def input_dir(path: str | Path, what: str, *, missing: str = "no such folder") -> Path:
    """A folder ovprof will read (a report to attach to an export)."""
    return _input(path, what, missing, folder=True)


def plain_name(name: str, what: str) -> str:
    """A name that becomes part of a path (a sweep's name -> results/NAME.jsonl): no folders, no climbing out."""
    bad = [ch for ch in name if not (ch.isalnum() or ch in "-_.+@")]
    if not name.strip() or bad or name.strip(".") == "" or name.startswith("-"):
        raise UsageError(f"{what} {printable(name)!r}: use letters, digits and - _ . + @ only (it names files "
                         "under results/ and reports/)")
    return name
