"""Whether a world size fits this machine, checked before any worker starts.

    ovprof run --objective caption --encoder vit-debug --world-size 2

Used by `ovprof run` for one point and by `ovprof sweep` for every world size of
a sweep file, so a sweep with too many ranks fails before its first point.
"""

from __future__ import annotations

import os

from ovprof.config import ConfigError


def check_devices(world_size: int, source: str | None = None) -> None:
    """world_size must fit the machine: GPUs when CUDA is there, else CPU cores (one rank per core at most)."""
    if world_size <= 1:
        return
    import torch  # only for more than one rank: a single run on any machine needs no device count

    if torch.cuda.is_available():
        have, what = torch.cuda.device_count(), "CUDA devices"
    else:
        have, what = os.cpu_count() or 1, "CPU cores (no CUDA device)"
    if world_size > have:
        raise ConfigError(f"exceeds the {have} {what} available", source=source, key="world_size", value=world_size)
