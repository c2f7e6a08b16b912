"""Tests for NvmlSampler: graceful None on a GPU-less host, and the maxima logic on a fake NVML."""

from __future__ import annotations

import os
import sys
import time
import types
from types import SimpleNamespace

import pytest

from ovprof.measure.nvml import NvmlSampler

# Large enough that the background thread never samples during a test: every
# sample below is taken explicitly, so the scripted sequences are deterministic.
NEVER_S = 3600.0


def _real_nvml_works() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


class FakeNvml(types.ModuleType):
    """A pynvml stand-in that replays scripted memory readings and process lists."""

    def __init__(self, used_bytes, processes, init_error=None, memory_error_at=None):
        super().__init__("pynvml")
        self.used_script = list(used_bytes)
        self.process_script = list(processes)
        self.init_error = init_error
        self.memory_error_at = memory_error_at
        self.memory_calls = 0
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self):
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise RuntimeError(f"Invalid Argument: index {index}")
        return "handle-0"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "GPU-abc":
            raise RuntimeError("Not Found")
        return "handle-0"

    def nvmlDeviceGetMemoryInfo(self, handle):
        assert handle == "handle-0"
        self.memory_calls += 1
        if self.memory_calls == self.memory_error_at:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(used=self.used_script.pop(0), total=80 << 30)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.process_script.pop(0)


def me(used):
    return SimpleNamespace(pid=os.getpid(), usedGpuMemory=used)


def other(used):
    return SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=used)


def test_gpu_less_host_gives_none_with_reason():
    if _real_nvml_works():
        pytest.skip("NVML initialises on this machine; the GPU-less path cannot be checked here")
    with NvmlSampler(device_index=0, interval_s=0.001) as nvml:
        pass
    assert nvml.device_peak_bytes is None
    assert nvml.process_peak_bytes is None
    assert nvml.samples == 0
    assert nvml.null_reason and nvml.null_reason.startswith("NVML unavailable: ")


def test_no_device_index_means_no_cuda_device():
    with NvmlSampler(device_index=None) as nvml:
        pass
    assert nvml.device_peak_bytes is None and nvml.process_peak_bytes is None
    assert nvml.null_reason == "no CUDA device"


def test_missing_module_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with NvmlSampler(device_index=0) as nvml:
        pass
    assert nvml.null_reason.startswith("NVML unavailable: ModuleNotFoundError: ")


def test_maxima_and_reset(monkeypatch):
    fake = FakeNvml(
        used_bytes=[100, 500, 300, 200, 50, 250],
        processes=[
            [other(999), me(10)],   # __enter__ sample
            [me(40)],               # manual
            [me(30), other(5000)],  # manual; other processes never count as ours
            [me(20)],               # after reset
            [me(25)],
            [me(15)],               # __exit__ sample
        ],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, interval_s=NEVER_S) as nvml:
        nvml._sample_once()
        nvml._sample_once()
        assert (nvml.device_peak_bytes, nvml.process_peak_bytes, nvml.samples) == (500, 40, 3)
        nvml.reset()
        assert (nvml.device_peak_bytes, nvml.process_peak_bytes, nvml.samples) == (None, None, 0)
        nvml._sample_once()
        nvml._sample_once()
        assert (nvml.device_peak_bytes, nvml.process_peak_bytes) == (200, 25)
    # The exit sample (250 used) raises the device peak; the process peak stays 25.
    assert (nvml.device_peak_bytes, nvml.process_peak_bytes, nvml.samples) == (250, 25, 3)
    assert nvml.null_reason is None
    assert fake.init_calls == 1 and fake.shutdown_calls == 1
    assert fake.used_script == [] and fake.process_script == []


def test_process_not_listed(monkeypatch):
    fake = FakeNvml(used_bytes=[7, 9], processes=[[other(1)], []])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, interval_s=NEVER_S) as nvml:
        pass
    assert nvml.device_peak_bytes == 9 and nvml.process_peak_bytes is None
    assert nvml.null_reason.startswith("process not listed by NVML")
    assert fake.shutdown_calls == 1


def test_process_listed_without_memory(monkeypatch):
    fake = FakeNvml(used_bytes=[7, 9], processes=[[me(None)], [me(None)]])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, interval_s=NEVER_S) as nvml:
        pass
    assert nvml.process_peak_bytes is None
    assert "usedGpuMemory is None" in nvml.null_reason


def test_init_failure_does_not_raise(monkeypatch):
    fake = FakeNvml([], [], init_error=RuntimeError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0) as nvml:
        pass
    assert nvml.null_reason == "NVML unavailable: RuntimeError: Driver Not Loaded"
    assert nvml.device_peak_bytes is None
    assert fake.shutdown_calls == 0  # init never succeeded, so nothing to shut down


def test_bad_index_shuts_nvml_down(monkeypatch):
    fake = FakeNvml([], [])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=3) as nvml:
        pass
    assert nvml.null_reason.startswith("NVML device index 3 not available")
    assert fake.shutdown_calls == 1


def test_uuid_selects_the_device(monkeypatch):
    fake = FakeNvml(used_bytes=[5, 6], processes=[[me(3)], [me(4)]])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    # The uuid wins over the index (NVML's index ignores CUDA_VISIBLE_DEVICES).
    with NvmlSampler(device_index=7, uuid="GPU-abc", interval_s=NEVER_S) as nvml:
        pass
    assert (nvml.device_peak_bytes, nvml.process_peak_bytes, nvml.null_reason) == (6, 4, None)


def test_query_errors_are_kept_not_raised(monkeypatch):
    # The second memory query fails; the first and third succeed.
    fake = FakeNvml(used_bytes=[100, 300], processes=[[me(1)], [me(2)]], memory_error_at=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, interval_s=NEVER_S) as nvml:
        nvml._sample_once()
    assert nvml.device_peak_bytes == 300 and nvml.samples == 2
    assert fake.shutdown_calls == 1


def test_caller_exception_propagates_and_nvml_is_shut_down(monkeypatch):
    fake = FakeNvml(used_bytes=[1, 2], processes=[[me(1)], [me(2)]])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(KeyError):
        with NvmlSampler(device_index=0, interval_s=NEVER_S):
            raise KeyError("boom")
    assert fake.shutdown_calls == 1


def test_background_thread_samples(monkeypatch):
    fake = FakeNvml(used_bytes=[1] * 10_000, processes=[[me(1)]] * 10_000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, interval_s=0.001) as nvml:
        deadline = time.monotonic() + 5
        while nvml.samples < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert nvml.samples >= 5


# -- MIG: torch's UUID has no prefix; a MIG instance is "MIG-<uuid>" to NVML -------------------------------------

class FakeMigNvml(FakeNvml):
    """A driver whose only visible device is MIG instance MIG-5f0e (listed without per-process memory)."""

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "MIG-5f0e":
            raise RuntimeError("Not Found")
        return "handle-0"


def test_torch_uuid_stands_for_a_gpu_or_a_mig_instance(monkeypatch):
    import torch

    from ovprof.measure.nvml import nvml_uuid_candidates, torch_device_uuids

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid="5f0e"))
    assert torch_device_uuids(0) == ("GPU-5f0e", "MIG-5f0e")
    assert nvml_uuid_candidates("MIG-5f0e") == ("MIG-5f0e",)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: 1 / 0)
    assert torch_device_uuids(0) == ()  # no CUDA: the sampler falls back to the index


def test_a_mig_instance_is_found_by_its_mig_uuid(monkeypatch):
    fake = FakeMigNvml(used_bytes=[7, 9], processes=[[me(None)], [me(None)]])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, uuid=("GPU-5f0e", "MIG-5f0e"), interval_s=NEVER_S) as nvml:
        pass
    assert (nvml.uuid, nvml.mig, nvml.device_peak_bytes) == ("MIG-5f0e", True, 9)
    assert nvml.process_peak_bytes is None and "on MIG instance MIG-5f0e" in nvml.null_reason


def test_a_full_gpu_is_still_found_by_its_gpu_uuid(monkeypatch):
    fake = FakeNvml(used_bytes=[5, 6], processes=[[me(3)], [me(4)]])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=7, uuid=("GPU-abc", "MIG-abc"), interval_s=NEVER_S) as nvml:
        pass
    assert (nvml.uuid, nvml.mig, nvml.device_peak_bytes, nvml.null_reason) == ("GPU-abc", False, 6, None)


def test_an_unmapped_mig_instance_says_why_in_the_null_reason(monkeypatch):
    fake = FakeNvml(used_bytes=[], processes=[])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(device_index=0, uuid=("GPU-77aa", "MIG-77aa"), interval_s=NEVER_S) as nvml:
        pass
    assert nvml.device_peak_bytes is None and fake.shutdown_calls == 1
    assert nvml.null_reason.startswith("NVML device uuid GPU-77aa or MIG-77aa (a MIG instance is only found by "
                                       "a driver >= R470")
