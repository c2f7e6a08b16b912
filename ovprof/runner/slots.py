"""Device slots on one machine: several points at once, each on devices of its own.

    ovprof sweep run sweeps/quickstart.toml --slots 2

A slot is a disjoint share of this machine: on a GPU machine, a set of devices
(a point with world_size k needs k of them; the slot's CUDA_VISIBLE_DEVICES);
on a CPU, a set of cores (the worker's affinity, and its intra-op threads set
to match: both recorded, as env.cpu_affinity and torch_num_threads). Two
points never share a device or a core. Assigning local devices is the only
scheduling ovprof does; clusters go through their own schedulers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ovprof.errors import UsageError


@dataclass(frozen=True)
class Slot:
    index: int
    cores: tuple[int, ...] | None = None  # CPU cores the slot's workers may run on (None: unrestricted)
    gpus: tuple[str, ...] | None = None  # CUDA device ids, as CUDA_VISIBLE_DEVICES names them (None: no CUDA)

    def describe(self) -> str:
        if self.gpus is not None:
            return f"slot {self.index} (GPU {','.join(self.gpus)})"
        if self.cores is not None:
            return f"slot {self.index} (cores {','.join(map(str, self.cores))})"
        return f"slot {self.index}"

    def env(self, world_size: int) -> dict[str, str]:
        """Environment for a worker of this slot."""
        out: dict[str, str] = {}
        if self.gpus is not None:
            out["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.cores is not None:
            out["OMP_NUM_THREADS"] = str(max(1, len(self.cores) // max(1, world_size)))
        return out


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def make_slots(n: int, max_world_size: int, *, cuda: bool | None = None) -> list[Slot]:
    """n disjoint slots; a UsageError when this machine cannot give every slot what its largest point needs."""
    if n < 1:
        raise UsageError(f"--slots {n}: must be at least 1")
    if n == 1:
        return [Slot(0)]
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        gpus = _visible_gpus()
        per = len(gpus) // n
        if per < max_world_size:
            raise UsageError(f"--slots {n}: {len(gpus)} GPU(s) give each slot {per}, and a point needs "
                             f"{max_world_size} (world_size); use fewer slots")
        return [Slot(i, gpus=tuple(gpus[i * per:(i + 1) * per])) for i in range(n)]
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // n
    if per < max_world_size or per < 1:
        raise UsageError(f"--slots {n}: {len(cores)} CPU core(s) give each slot {per}, and a point needs "
                         f"{max(1, max_world_size)} (one per rank); use fewer slots")
    return [Slot(i, cores=tuple(cores[i * per:(i + 1) * per])) for i in range(n)]
