"""Every GPU out-of-memory is an `oom`, whichever library reports it; nothing else is, and a max-batch search
reads each one as "over the limit" (issue 18, item 3). No GPU needed: the exceptions are built as torch,
cuBLAS and NCCL raise them (messages as their sources format them)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ovprof.config import ExecOptions
from ovprof.runner import executor as X
from ovprof.runner import launch
from ovprof.runner.worker import EXIT_ERROR, EXIT_OOM, is_oom
from ovprof.sweep import spec as S
from ovprof.sweep.execute import run_sweep

from conftest import tiny_toml

NCCL_OOM = ("NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled cuda error "
            "(run with NCCL_DEBUG=INFO for details), NCCL version 2.27.5\nncclUnhandledCudaError: Call to CUDA "
            "function failed.\nLast error:\nCuda failure 2 'out of memory'")
NCCL_CALLOC = ("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error (run with NCCL_DEBUG=INFO for "
               "details), NCCL version 2.21.5\nncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\n"
               "Failed to CUDA calloc 10485760 bytes")
NCCL_FAULT = NCCL_OOM.replace("Cuda failure 2 'out of memory'", "Cuda failure 700 'an illegal memory access was "
                              "encountered'")


def accelerator_error(message: str, code: int | None):
    e = torch.AcceleratorError(message)
    if code is not None:
        e.error_code = code  # set by torch's C++ -> Python translation
    return e


def wrapped(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("DeepSpeed step failed") from e
    except RuntimeError as outer:
        return outer


OOMS = {
    "caching allocator": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                                "total capacity of 79.10 GiB of which 1.06 GiB is free."),
    "cuBLAS alloc": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuBLASLt workspace": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasLtMatmul("
                                       "ltHandle, computeDesc.descriptor(), ...)`"),
    "cuBLAS handle": RuntimeError("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`"),
    "CUDA runtime, by code": accelerator_error("CUDA error: out of memory\nCUDA kernel errors might be "
                                               "asynchronously reported at some other API call", 2),
    "CUDA runtime, by message": RuntimeError("CUDA error: out of memory\nCompile with `TORCH_USE_CUDA_DSA` to "
                                             "enable device-side assertions."),
    "NCCL, cuda failure": dist.DistBackendError(NCCL_OOM),
    "NCCL, calloc": dist.DistBackendError(NCCL_CALLOC),
    "CPU allocator": RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                  "memory: you tried to allocate 123 bytes."),
    "wrapped": wrapped(torch.OutOfMemoryError("CUDA out of memory.")),
}
NOT_OOMS = {
    "illegal access": accelerator_error("CUDA error: an illegal memory access was encountered", 700),
    "illegal access, by message": RuntimeError("CUDA error: an illegal memory access was encountered"),
    "cuBLAS execution": RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( "
                                     "handle, opa, opb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`"),
    "cuBLAS not initialized, not at handle creation": RuntimeError(
        "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasSetStream(handle, stream)`"),
    "NCCL, other cuda failure": dist.DistBackendError(NCCL_FAULT),
    "a bug": ValueError("shapes (2, 3) and (4, 5) do not match"),
    "Ctrl-C": KeyboardInterrupt(),
}


@pytest.mark.parametrize("exc", OOMS.values(), ids=OOMS.keys())
def test_every_out_of_memory_is_oom(exc):
    assert is_oom(exc)


@pytest.mark.parametrize("exc", NOT_OOMS.values(), ids=NOT_OOMS.keys())
def test_an_unrelated_failure_is_not_oom(exc):
    assert not is_oom(exc)


def test_without_torch_OutOfMemoryError_the_cuda_alias_still_classifies(monkeypatch):
    # The guard for torch < 2.5 (pyproject now asks for >= 2.5): torch.cuda.OutOfMemoryError is the same class.
    exc = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.delattr(torch, "OutOfMemoryError")
    assert is_oom(exc)
    monkeypatch.delattr(torch, "AcceleratorError")  # torch < 2.8: message only
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


# -- through the execute layer: a max-batch search reads each of them as over the limit --------------------------

class FailingAbove:
    """An executor whose worker raises `exc` above `boundary`, classified as the worker's main() does."""

    def __init__(self, boundary: int, exc: BaseException):
        self.boundary, self.exc, self.batches = boundary, exc, []

    def __call__(self, on_start=None, on_phase=None, **kw):  # stands in for LocalExecutor(...)
        return self

    def run(self, jobs):
        for job in jobs:
            b = job.config.batch
            self.batches.append(b)
            if b <= self.boundary:
                rank = {"rank": 0, "status": "ok", "metrics": {"step_times_ms": [1.0], "step_time_ms_median": 1.0}}
                code = 0
            else:
                oom = is_oom(self.exc)
                rank = {"rank": 0, "status": "oom" if oom else "error",
                        "error": {"type": type(self.exc).__name__, "message": str(self.exc), "phase": "timed"}}
                code = EXIT_OOM if oom else EXIT_ERROR
            rank["env"] = {}
            yield X.JobResult(job=job, ranks=[rank], exit_code=code, started_at="t0", finished_at="t1",
                              wall_time_s=0.1)


MB_SWEEP = tiny_toml('name = "mb"', batch="max") + "[max_batch]\nstart = 2\ngranularity = 1\nlimit = 64\n"


def _search(tmp_path, monkeypatch, exc):
    fake = FailingAbove(boundary=11, exc=exc)
    monkeypatch.setattr(launch, "LocalExecutor", fake)
    f = tmp_path / "mb.toml"
    f.write_text(MB_SWEEP)
    out = run_sweep(S.expand(S.load(f)), ExecOptions(store=str(tmp_path / "mb.jsonl")))
    (outcome,) = out.outcomes
    return outcome.record, fake.batches


@pytest.mark.parametrize("name", ["cuBLAS handle", "CUDA runtime, by code", "NCCL, cuda failure", "cuBLAS alloc"])
def test_a_max_batch_search_reads_each_gpu_oom_as_over_the_limit(tmp_path, monkeypatch, name):
    rec, batches = _search(tmp_path, monkeypatch, OOMS[name])
    assert (rec.status, rec.max_batch, rec.first_oom_batch) == ("ok", 11, 12)
    assert batches == [2, 4, 8, 16, 12, 10, 11]


def test_a_max_batch_search_stops_on_an_unrelated_cuda_error(tmp_path, monkeypatch):
    rec, batches = _search(tmp_path, monkeypatch, NOT_OOMS["illegal access"])
    assert rec.status == "error" and batches == [2, 4, 8, 16] and "illegal memory access" in rec.error["message"]
