"""Errors the CLI maps to one red line and an exit status."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input that is not a config field (a missing file, a bad flag combination): exit 2."""


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_OOM, EXIT_TIMEOUT = 0, 1, 2, 3, 4
STATUS_EXIT = {"ok": EXIT_OK, "error": EXIT_ERROR, "oom": EXIT_OOM, "timeout": EXIT_TIMEOUT}
