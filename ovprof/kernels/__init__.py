"""Kernels, each beside its plain-PyTorch reference. Importing this package does not import triton.

    python -c "from ovprof.kernels import linear_cross_entropy; help(linear_cross_entropy)"
"""

from ovprof.kernels.fused_ce import IMPLS, linear_cross_entropy, reference_linear_ce

__all__ = ["IMPLS", "linear_cross_entropy", "reference_linear_ce"]
