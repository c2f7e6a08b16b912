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


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH",
                 "cudnn": "CUDNN_ATTENTION"}


def attention_refusal(backend: str, precision: str) -> str | None:
    """Why this machine cannot run scaled_dot_product_attention on `backend` in `precision`, or None if it can.

    A probe, not a table: forward and backward of a tiny attention on the device in the training dtype, in
    each form the towers call it (no mask, causal, boolean mask), under `sdpa_kernel(backend)`. torch's own
    dispatch then decides, as it will in the step. On CPU torch 2.13 runs math and flash (its fused CPU
    kernel); efficient and cudnn are CUDA kernels."""
    if backend == "auto":
        return None
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kernel = getattr(SDPBackend, SDPA_BACKENDS[backend])
    mask = torch.ones(8, 8, dtype=torch.bool, device=device).tril()
    for form, kw in (("unmasked", {}), ("causal", {"is_causal": True}), ("boolean-mask", {"attn_mask": mask})):
        q = torch.randn(2, 2, 8, 64, device=device, dtype=dtype, requires_grad=True)
        try:
            with warnings.catch_warnings(), sdpa_kernel(kernel):
                warnings.simplefilter("ignore")  # torch explains each unusable kernel in a warning; one line here
                F.scaled_dot_product_attention(q, q, q, **kw).sum().backward()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"this machine ({device}, torch {torch.__version__}) has no {backend} kernel for {form} " \
                   f"{precision} attention ({first})"
    return None


def check_attention(backends_by_precision: set[tuple[str, str]], source: str | None = None) -> None:
    """Every (attention, precision) of the points must run here; else one ConfigError naming the first that
    cannot (checked before any worker starts, like the world size)."""
    for backend, precision in sorted(backends_by_precision):
        why = attention_refusal(backend, precision)
        if why:
            raise ConfigError(why, source=source, key="attention", value=backend,
                              hint="attention = auto lets torch choose; math runs everywhere")
