"""Peak dense matmul throughput per GPU and precision, the denominator of MFU.

    peak_tflops("NVIDIA H100 80GB HBM3", "bf16")  # (989.4, None)

All figures are dense, without sparsity: datasheets headline 2:4-sparse numbers,
which are exactly twice the dense ones and never apply to training. Where a
datasheet gives only the sparse figure it is halved here. Precision keys:

- "bf16", "fp16": tensor-core matmul with FP32 accumulate (what torch uses).
- "tf32": tensor-core matmul on FP32 inputs (Ampere and newer).
- "fp32": plain FP32 on CUDA cores, no tensor cores. torch runs FP32 matmuls
  this way unless TF32 is allowed (`torch.backends.cuda.matmul.allow_tf32`), so
  `peak_tflops(..., "fp32", allow_tf32=True)` returns the tf32 figure instead.

Unknown GPUs get None and a reason, never a nearest match: a wrong peak would
silently mis-state every MFU computed from it.
"""

from __future__ import annotations

import re

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column).
    # dense, without sparsity: BF16/FP16 312, TF32 156, FP32 19.5.
    "a100-sxm4-80gb": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    # NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM column).
    # dense, without sparsity: same clocks, SM count and peaks as the 80GB part.
    "a100-sxm4-40gb": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    # NVIDIA A100 Tensor Core GPU datasheet (A100 40GB/80GB PCIe columns).
    # dense, without sparsity: the datasheet lists the same peaks as SXM; PCIe
    # parts reach them less often because of the lower power limit.
    "a100-pcie": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column: BF16/FP16 1,979, TF32
    # 989 with sparsity; FP32 67) and the NVIDIA H100 Tensor Core GPU Architecture
    # whitepaper's exact dense values: dense, without sparsity, BF16/FP16 989.4,
    # TF32 494.7, FP32 66.9.
    "h100-sxm5": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    # NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe column: BF16/FP16 1,513, TF32
    # 756 with sparsity; FP32 51), halved: dense, without sparsity.
    "h100-pcie": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0},
    # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column, per GPU: BF16/FP16
    # 1,671, TF32 835 with sparsity; FP32 60), halved: dense, without sparsity.
    "h100-nvl": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column: BF16/FP16 1,979, TF32
    # 989 with sparsity; FP32 67); same GH100 compute and clocks as H100 SXM5, so
    # the Hopper whitepaper's exact dense values apply: dense, without sparsity.
    "h200-sxm": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    # NVIDIA L4 Tensor Core GPU datasheet (BF16/FP16 242, TF32 120 with sparsity;
    # FP32 30.3), halved: dense, without sparsity.
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    # NVIDIA L40S GPU datasheet, which lists dense and sparse figures.
    # dense, without sparsity: BF16/FP16 362.05, TF32 183, FP32 91.6.
    "l40s": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    # NVIDIA A10 Tensor Core GPU datasheet, which lists dense and sparse figures.
    # dense, without sparsity: BF16/FP16 125, TF32 62.5, FP32 31.2.
    "a10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    # NVIDIA Ada GPU Architecture whitepaper (GeForce RTX 4090 column).
    # dense, without sparsity: FP16/BF16 with FP32 accumulate 165.2 (GeForce runs
    # FP32 accumulate at half the FP16-accumulate rate of 330.3), TF32 82.6, FP32 82.6.
    "rtx-4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    # NVIDIA Tesla V100 GPU datasheet (V100 SXM2 column); Volta has no sparsity.
    # dense, without sparsity: FP16 tensor 125, FP32 15.7. No BF16, no TF32.
    "v100-sxm2": {"fp16": 125.0, "fp32": 15.7},
    # NVIDIA Tesla V100 GPU datasheet (V100 PCIe column); Volta has no sparsity.
    # dense, without sparsity: FP16 tensor 112, FP32 14. No BF16, no TF32.
    "v100-pcie": {"fp16": 112.0, "fp32": 14.0},
}

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")

# Full matches against the normalised device name (upper case, "-"/"_" as spaces,
# "NVIDIA "/"TESLA " prefixes dropped). Full matches keep "A10" from claiming
# "A100"/"A10G", "L40S" from "L40", "H200" from "H200 NVL" and any GPU from its
# MIG slices ("... MIG 1g.10gb"), whose peaks differ.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"A100 SXM4 80GB", "a100-sxm4-80gb"),
    (r"A100 SXM4 40GB", "a100-sxm4-40gb"),
    (r"A100 PCIE (40|80)GB|A100 (40|80)GB PCIE", "a100-pcie"),
    (r"H100 80GB HBM3", "h100-sxm5"),
    (r"H100 PCIE", "h100-pcie"),
    (r"H100 NVL", "h100-nvl"),
    (r"H200", "h200-sxm"),
    (r"L4", "l4"),
    (r"L40S", "l40s"),
    (r"A10", "a10"),
    (r"GEFORCE RTX 4090", "rtx-4090"),
    (r"V100 SXM2 (16|32)GB", "v100-sxm2"),
    (r"V100 PCIE (16|32)GB", "v100-pcie"),
)


def _normalise(name: str) -> str:
    text = re.sub(r"[-_\s]+", " ", name.strip().upper())
    for prefix in ("NVIDIA ", "TESLA "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def match_gpu(name: str) -> str | None:
    """PEAK_TFLOPS key for a torch/NVML device name (or a key itself); None if unknown."""
    if not name:
        return None
    if name.strip().lower() in PEAK_TFLOPS:
        return name.strip().lower()
    normalised = _normalise(name)
    for pattern, key in _NAME_PATTERNS:
        if re.fullmatch(pattern, normalised):
            return key
    return None


def peak_tflops(gpu_name: str | None, precision: str, *,
                allow_tf32: bool = False) -> tuple[float | None, str | None]:
    """(peak dense TFLOP/s, None), or (None, why not) for CPU, unknown GPUs and precisions."""
    if precision not in PRECISIONS:
        return None, f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})"
    if not gpu_name or gpu_name.strip().lower() == "cpu":
        return None, "no GPU: peak TFLOP/s is only tabulated for NVIDIA GPUs"
    key = match_gpu(gpu_name)
    if key is None:
        return None, f"GPU {gpu_name!r} is not in the peak TFLOP/s table"
    table = PEAK_TFLOPS[key]
    wanted = "tf32" if precision == "fp32" and allow_tf32 else precision
    if wanted == "tf32" and "tf32" not in table and precision == "fp32":
        # Pre-Ampere GPUs have no TF32; allowing it leaves FP32 on CUDA cores.
        wanted = "fp32"
    if wanted not in table:
        return None, f"{key} has no {wanted} tensor-core peak (not supported in hardware)"
    return table[wanted], None
