"""Shared fixtures: a tiny config that makes a real DeepSpeed point take a few seconds on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# vit-debug with a small vocabulary and short captions: the model is ~0.3M parameters.
TINY = dict(encoder="vit-debug", vocab_size=512, caption_len=16, text_len=8, batch=2, steps=2, warmup=1,
            precision="fp32")


def ovprof(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "ovprof.cli", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_toml(head: str = "", drop: tuple[str, ...] = (), **extra) -> str:
    """TINY (plus `extra`, minus `drop`) as a sweep file's [base] table, after `head` (top-level keys)."""
    values = {k: v for k, v in {**TINY, **extra}.items() if k not in drop}
    return "\n".join([head, "[base]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]) + "\n"


@pytest.fixture
def tiny():
    from ovprof.config import RunConfig

    def make(**kw):
        return RunConfig(**{**TINY, **kw})

    return make


@pytest.fixture
def cli_in_process(monkeypatch, capsys):
    """Run `ovprof ARGS` through the real entry point in this process; returns (exit code, stdout, stderr)."""
    from ovprof import cli as entry

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["ovprof", *args])
        monkeypatch.setenv("COLUMNS", "200")
        try:
            entry.main()
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
