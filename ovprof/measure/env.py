"""The environment block of a run record: versions, GPU, CPU, memory, host.

    env = collect_env()  # {"torch": "2.13.0+cpu", "gpu_name": None, "cpu_count": 16, ...}

Every value that cannot be found is None, never a guess, so that a report can
say "unknown" instead of quoting a plausible but wrong figure. GPU fields
describe the device torch would use (the current CUDA device), which is the one
a run measures; `gpu_count` is what torch can see (0 when CUDA is unavailable).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ovprof

_GIT_TIMEOUT_S = 2.0


def _dist_version(name: str) -> str | None:
    # Metadata only: importing deepspeed or triton would cost seconds and may print.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD sha, dirty) of the checkout ovprof runs from; (None, None) when not a checkout."""
    package_dir = Path(ovprof.__file__).resolve().parent
    # An installed copy under some unrelated repository (a venv inside a project)
    # would report that repository's HEAD; only trust a checkout that tracks ovprof.
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return None, None
    sha = _git(["rev-parse", "HEAD"], package_dir)
    if sha is None:  # e.g. no commit yet
        return None, None
    # Tracked changes only, as `git describe --dirty` does: untracked scratch files
    # and ignored results/ do not change what the code measures.
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    return sha.strip(), (None if status is None else bool(status.strip()))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    value, unit = line.split()[1:3]
                    # /proc/meminfo's "kB" is KiB.
                    return int(value) * 1024 if unit == "kB" else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS
        return None


def _cpu_affinity() -> list[int] | None:
    """The cores this process may run on (a sweep with --slots gives each point its own)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _driver_version() -> str | None:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # missing module, missing libnvidia-ml, no driver: all mean "unknown"
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _torch_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {"cuda": None, "cuda_available": None, "gpu_name": None,
                              "gpu_memory_bytes": None, "gpu_count": None}
    try:
        import torch
    except ImportError:
        return fields
    fields["cuda"] = torch.version.cuda
    try:
        available = torch.cuda.is_available()
        fields["cuda_available"] = available
        fields["gpu_count"] = torch.cuda.device_count() if available else 0
        if available:
            index = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            fields["gpu_name"] = props.name
            fields["gpu_memory_bytes"] = int(props.total_memory)
    except Exception:  # a broken driver raises here; keep what we already know
        pass
    return fields


def collect_env() -> dict[str, Any]:
    """The environment block of a record. Imports torch (if installed); fast after that."""
    sha, dirty = git_state()
    env: dict[str, Any] = {
        "ovprof_version": ovprof.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "deepspeed": _dist_version("deepspeed"),
        "triton": _dist_version("triton"),
        "pandas": _dist_version("pandas"),
    }
    env.update(_torch_fields())
    env.update({
        "driver_version": _driver_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity_count": _cpu_affinity_count(),
        "cpu_affinity": _cpu_affinity(),
        "memory_total_bytes": _memory_total_bytes(),
        "hostname": socket.gethostname() or None,
        "platform": platform.platform(),
    })
    return env


if __name__ == "__main__":
    import json
    json.dump(collect_env(), sys.stdout, indent=2)
    print()
