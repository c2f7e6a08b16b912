"""The minimum versions pyproject asks for are the ones the code needs, the installed ones meet them, and code that
meets an older library says so in one line (issue 18, item 7)."""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
import types

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT

# What the code needs, and why: torch.OutOfMemoryError (2.5), DeepSpeed's DDP path for bf16 at ZeRO 0 that the
# ZeRO memory model assumes (0.18), triton.knobs (3.4).
NEEDED = {"torch": "2.5", "deepspeed": "0.18", "triton": "3.4"}


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


@pytest.mark.parametrize("name", sorted(NEEDED))
def test_pyproject_asks_for_what_the_code_needs_and_this_machine_has_it(name):
    req = requirements()[name]
    mins = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert mins == [Version(NEEDED[name])], str(req)
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} not installed")
    assert req.specifier.contains(installed, prereleases=True), (name, installed, str(req))


def test_triton_min_version_is_the_kernels_own():
    from ovprof.kernels.fused_ce import TRITON_MIN_VERSION

    assert TRITON_MIN_VERSION == NEEDED["triton"]


def test_a_triton_without_knobs_is_one_clear_error(monkeypatch):
    from ovprof.kernels import fused_ce

    old = types.ModuleType("triton")
    old.__version__ = "3.2.0"
    monkeypatch.setitem(sys.modules, "triton", old)
    with pytest.raises(RuntimeError, match=r"needs triton >= 3\.4 \(found 3\.2\.0, which has no triton\.knobs\)"):
        fused_ce._interpret_mode()
