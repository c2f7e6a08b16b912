"""Peak GPU memory as the driver sees it, sampled by NVML from a background thread.

    with NvmlSampler(device_index=0) as nvml:
        warm_up(); nvml.reset(); measure()
    record["nvml_process_peak_bytes"] = nvml.process_peak_bytes  # None + nvml.null_reason if unknown

torch's allocator statistics miss what lives outside the caching allocator (the
CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers), so the driver's view is
recorded beside them. Two figures are kept:

- `device_peak_bytes`: the device's used memory (`nvmlDeviceGetMemoryInfo.used`),
  which includes every process on the GPU and the driver's own reservation.
- `process_peak_bytes`: this process's entry in
  `nvmlDeviceGetComputeRunningProcesses`, CUDA context included. Often None in
  containers, where NVML lists host PIDs that never equal `os.getpid()`.

Both are maxima over samples taken every `interval_s`, so a spike shorter than
the interval can be missed: they are lower bounds on the true peak. NVML
problems never raise out of the context manager; they leave the values None and
say why in `null_reason`.

`device_index` is NVML's index, which ignores CUDA_VISIBLE_DEVICES and
CUDA_DEVICE_ORDER; to follow a torch device exactly, pass
`uuid=torch_device_uuids(torch_index)` instead.

MIG: torch reports a device's UUID without NVML's prefix, and a MIG instance's
NVML UUID is "MIG-<uuid>", not "GPU-<uuid>" (drivers >= R470; older ones name
instances "MIG-GPU-<gpu>/<gi>/<ci>", which torch's UUID cannot be mapped to,
and the null reason says so). `torch_device_uuids` gives both candidates and
the sampler takes the one NVML knows. On a MIG instance NVML usually lists
processes without per-process memory; the null reason names the instance.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def nvml_uuid_candidates(uuid: str) -> tuple[str, ...]:
    """NVML UUIDs a torch device UUID can stand for: a full GPU ("GPU-...") or a MIG instance ("MIG-...")."""
    if uuid.startswith(("GPU-", "MIG-")):
        return (uuid,)
    return (f"GPU-{uuid}", f"MIG-{uuid}")


def torch_device_uuids(index: int) -> tuple[str, ...]:
    """The NVML UUIDs torch CUDA device `index` may have (see nvml_uuid_candidates); () if unknown."""
    try:
        import torch
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # no CUDA, old torch without .uuid, bad index
        return ()
    return nvml_uuid_candidates(uuid)


class NvmlSampler:
    """Context manager sampling one GPU's used memory and this process's share of it."""

    def __init__(self, device_index: int | None = None, *, interval_s: float = 0.01,
                 uuid: str | tuple[str, ...] | list[str] | None = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.device_index = device_index
        # NVML UUIDs to try in order (the first NVML knows wins); None or () falls back to device_index
        self.uuids: tuple[str, ...] = (uuid,) if isinstance(uuid, str) else tuple(uuid or ())
        self.uuid: str | None = None  # the UUID NVML resolved
        self.mig = False  # the device is a MIG instance
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: ModuleType | None = None  # set only while NVML is initialised
        self._handle: Any = None
        self._setup_reason: str | None = None
        self._device_error: str | None = None
        self._process_error: str | None = None
        self._clear_maxima()

    def _clear_maxima(self) -> None:
        self._device_peak_bytes: int | None = None
        self._process_peak_bytes: int | None = None
        self._samples = 0
        self._process_listed = False  # seen in the process list, with or without a figure

    # -- results ---------------------------------------------------------------

    @property
    def device_peak_bytes(self) -> int | None:
        with self._lock:
            return self._device_peak_bytes

    @property
    def process_peak_bytes(self) -> int | None:
        with self._lock:
            return self._process_peak_bytes

    @property
    def samples(self) -> int:
        with self._lock:
            return self._samples

    @property
    def null_reason(self) -> str | None:
        """Why a value is None (the device figure's reason first); None when both are known."""
        with self._lock:
            if self._setup_reason is not None:
                return self._setup_reason
            if self._device_peak_bytes is None:
                if self._device_error is not None:
                    return f"NVML memory query failed: {self._device_error}"
                return "no NVML sample taken"
            if self._process_peak_bytes is None:
                if self._process_error is not None:
                    return f"NVML process query failed: {self._process_error}"
                if self._process_listed:
                    where = f" on MIG instance {self.uuid}" if self.mig else ""
                    return f"NVML lists the process without per-process memory{where} (usedGpuMemory is None)"
                return (f"process not listed by NVML (pid {os.getpid()}; in a container NVML "
                        "reports host PIDs)")
            return None

    # -- control ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget the maxima so far (call after warm-up); sampling continues."""
        with self._lock:
            self._clear_maxima()

    def __enter__(self) -> NvmlSampler:
        self._stop.clear()
        self._setup_reason = self._device_error = self._process_error = None
        self._clear_maxima()
        if self.device_index is None and not self.uuids:
            self._setup_reason = "no CUDA device"
            return self
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver mismatch...
            self._setup_reason = f"NVML unavailable: {_describe(exc)}"
            return self
        try:
            self._handle = self._lookup(pynvml)
        except Exception as exc:
            if self.uuids:
                which = "uuid " + " or ".join(self.uuids)
                if any(u.startswith("MIG-") for u in self.uuids):
                    which += (" (a MIG instance is only found by a driver >= R470, which names it "
                              "MIG-<uuid>)")
            else:
                which = f"index {self.device_index}"
            self._setup_reason = f"NVML device {which} not available: {_describe(exc)}"
            self._shutdown(pynvml)
            return self
        self._nvml = pynvml
        # A first sample now, so a block shorter than the interval still has one.
        self._sample_once()
        self._thread = threading.Thread(target=self._run, name="ovprof-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 10 * self.interval_s))
            self._thread = None
        if self._nvml is not None:
            self._sample_once()  # the end state counts too
            nvml, self._nvml, self._handle = self._nvml, None, None
            self._shutdown(nvml)
        return False  # never swallow the caller's exception

    def _lookup(self, pynvml: ModuleType) -> Any:
        """The NVML handle: the first of `uuids` NVML knows, else `device_index`; raises the last error."""
        if not self.uuids:
            return pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        error: Exception | None = None
        for uuid in self.uuids:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception as exc:  # NVMLError_NotFound for the wrong prefix
                error = exc
                continue
            self.uuid, self.mig = uuid, uuid.startswith("MIG-")
            return handle
        assert error is not None
        raise error

    @staticmethod
    def _shutdown(nvml: ModuleType) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_once()

    def _sample_once(self) -> None:
        """Take one sample; errors are remembered, never raised."""
        nvml, handle = self._nvml, self._handle
        if nvml is None:
            return
        try:
            used_bytes = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception as exc:
            with self._lock:
                self._device_error = self._device_error or _describe(exc)
            return
        process_bytes: int | None = None
        listed = False
        process_error: str | None = None
        try:
            pid = os.getpid()
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid:
                    listed = True
                    if proc.usedGpuMemory is not None:
                        process_bytes = max(process_bytes or 0, int(proc.usedGpuMemory))
        except Exception as exc:
            process_error = _describe(exc)
        with self._lock:
            self._samples += 1
            if self._device_peak_bytes is None or used_bytes > self._device_peak_bytes:
                self._device_peak_bytes = used_bytes
            self._process_listed = self._process_listed or listed
            if process_bytes is not None and (self._process_peak_bytes is None
                                              or process_bytes > self._process_peak_bytes):
                self._process_peak_bytes = process_bytes
            if process_error is not None:
                self._process_error = self._process_error or process_error
