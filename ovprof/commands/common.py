"""Helpers shared by commands: JSON output, byte formatting, the console."""

from __future__ import annotations

import json
import sys
from typing import Any


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def gib(nbytes: Any) -> str:
    """Bytes as GiB (2^30) for tables; '-' for a missing figure."""
    if nbytes is None:
        return "-"
    return f"{nbytes / 2**30:.3f}"


def fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)
