"""Tests for GPU name matching and the peak TFLOP/s lookup."""

from __future__ import annotations

import pytest

from ovprof.measure.hardware import PEAK_TFLOPS, PRECISIONS, match_gpu, peak_tflops


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm5"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("Tesla V100-SXM2-32GB", "v100-sxm2"),
    ("Tesla V100-PCIE-16GB", "v100-pcie"),
    ("  nvidia h100 80gb hbm3 ", "h100-sxm5"),  # case and whitespace do not matter
    ("h100-sxm5", "h100-sxm5"),                 # a table key is accepted as is
])
def test_known_names(name, key):
    assert match_gpu(name) == key


@pytest.mark.parametrize("name", [
    "",
    "cpu",
    "NVIDIA H100",                      # form factor unknown: SXM5, PCIe and NVL peaks differ
    "NVIDIA H200 NVL",                  # not the SXM part
    "NVIDIA H800",
    "NVIDIA A10G",                      # AWS variant, different clocks
    "NVIDIA A100-SXM4-80GB MIG 1g.10gb",  # a MIG slice has a fraction of the SMs
    "NVIDIA L40",
    "NVIDIA GeForce RTX 4090 D",
    "NVIDIA GeForce RTX 4080",
    "NVIDIA GH200 480GB",
    "AMD Instinct MI300X",
    "Tesla V100S-PCIE-32GB",
])
def test_unknown_names_are_not_guessed(name):
    assert match_gpu(name) is None


def test_table_is_consistent():
    for key, table in PEAK_TFLOPS.items():
        assert set(table) <= set(PRECISIONS), key
        assert all(value > 0 for value in table.values()), key
        # Tensor cores never lose to CUDA cores; TF32 runs at half the BF16 rate
        # (within 2%: the L40S datasheet rounds TF32 to 183 against 362.05 BF16).
        if "bf16" in table:
            assert table["bf16"] == table["fp16"] > table["fp32"], key
        if "tf32" in table:
            assert table["tf32"] == pytest.approx(table["bf16"] / 2, rel=0.02), key


def test_peak_values_dense():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (989.4, None)
    assert peak_tflops("NVIDIA H200", "bf16") == (989.4, None)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp16") == (312.0, None)
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == (756.5, None)


def test_fp32_uses_tf32_only_when_allowed():
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp32") == (19.5, None)
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp32", allow_tf32=True) == (156.0, None)
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "tf32") == (156.0, None)
    # Volta has no TF32: allowing it changes nothing.
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp32", allow_tf32=True) == (15.7, None)


@pytest.mark.parametrize("gpu, precision, fragment", [
    (None, "bf16", "no GPU"),
    ("cpu", "bf16", "no GPU"),
    ("CPU", "fp32", "no GPU"),
    ("NVIDIA H100", "bf16", "not in the peak"),
    ("NVIDIA H100 80GB HBM3", "int8", "unknown precision"),
    ("Tesla V100-SXM2-16GB", "bf16", "no bf16"),
    ("Tesla V100-SXM2-16GB", "tf32", "no tf32"),
])
def test_none_with_reason(gpu, precision, fragment):
    value, reason = peak_tflops(gpu, precision)
    assert value is None
    assert reason and fragment in reason
