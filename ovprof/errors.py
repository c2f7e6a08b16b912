"""Errors the CLI maps to one red line and an exit status.

    ovprof run --objective captoin   # error: key 'objective', value 'captoin': ... (did you mean 'caption'?)

The lowest layer of the package: anything may raise these without importing
what validates a config (ovprof/objectives raises ConfigError for an unknown
objective; ovprof/config.py re-exports it).
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Bad user input. Rendered as one line: where, which key, which value, why."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 value: Any = None, hint: str | None = None):
        self.source, self.key, self.value, self.hint = source, key, value, hint
        self.detail = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        # Every part that came from the user is escaped and bounded: a message never carries a raw control
        # character or a megabyte of value to the terminal.
        where = []
        if self.source:
            where.append(printable(self.source, 300))
        if self.key is not None:
            where.append(f"key '{printable(self.key, 80)}'")
        if self.key is not None and self.value is not None:
            where.append(f"value {printable(repr(self.value), 80)}")
        head = ": ".join([", ".join(where)] if where else [])
        msg = f"{head}: {self.detail}" if head else self.detail
        if self.hint:
            msg += f" ({self.hint})"
        return msg


def printable(text: object, limit: int = 200) -> str:
    """User text safe to echo: control characters escaped, at most `limit` characters (cut in the middle, so that
    both ends stay: a path's file name is at its end)."""
    s = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))
    if len(s) <= limit:
        return s
    head = (limit - 3) // 2
    return s[:head] + "..." + s[len(s) - (limit - 3 - head):]


class UsageError(ValueError):
    """Bad input that is not a config field (a missing file, a bad flag combination): exit 2."""


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_OOM, EXIT_TIMEOUT = 0, 1, 2, 3, 4
STATUS_EXIT = {"ok": EXIT_OK, "error": EXIT_ERROR, "oom": EXIT_OOM, "timeout": EXIT_TIMEOUT}
