"""Triton kernel bodies of the fused linear + cross-entropy, left undecorated on purpose.

    python -c "from ovprof.kernels.fused_ce import triton_kernels; print(triton_kernels())"

`triton.jit` decides at decoration time whether a kernel is compiled for the GPU
or run by the CPU interpreter (TRITON_INTERPRET=1 is read then, not at launch).
Decorating here, at import, would freeze that choice for the whole process, so
`ovprof.kernels.fused_ce.triton_kernels()` wraps these functions when first
needed, once per mode. Each kernel is self-contained (no @jit helpers), so the
wrapping stays a plain `triton.jit(fn)`.

Shapes: hidden h (N, D), head weight w (V, D), targets t (N,), all row-major
with unit stride in D. Logits are never stored: a (BLOCK_N, BLOCK_V) tile lives
in registers while it is used, and is recomputed in the backward.
"""

import triton.language as tl


def linear_ce_fwd(h_ptr, w_ptr, t_ptr, lse_ptr, tgt_ptr,
                  N, V, D, stride_h, stride_w, v_per_split, ignore_index,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Program (row block, vocab split): the split's logsumexp and target logit for each row.

    lse_ptr, tgt_ptr: (SPLIT, N) fp32. The caller combines splits (logsumexp and sum
    over SPLIT), which lets a small N still fill the GPU. Online softmax over
    V-blocks: running max m and running sum s of exp(logit - m), both fp32.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t_logit = tl.zeros((BLOCK_N,), tl.float32)
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            h = tl.load(h_ptr + rows64[:, None] * stride_h + ds[None, :], mask=row_ok[:, None] & d_ok[None, :],
                        other=0.0)  # (BLOCK_N, BLOCK_D)
            w = tl.load(w_ptr + cols64[:, None] * stride_w + ds[None, :], mask=col_ok[:, None] & d_ok[None, :],
                        other=0.0)  # (BLOCK_V, BLOCK_D)
            if UPCAST:  # the interpreter's tl.dot mishandles bf16 (numpy sees uint16); fp32 products are exact
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)  # (BLOCK_N, BLOCK_V) fp32
        logits = tl.where(col_ok[None, :], acc, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))  # finite: every split owns >= 1 column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
        t_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], acc, 0.0), axis=1)
    lse = m + tl.log(s)
    tl.store(lse_ptr + pid_s * N + rows, lse, mask=row_ok)
    tl.store(tgt_ptr + pid_s * N + rows, t_logit, mask=row_ok)


def linear_ce_bwd(h_ptr, w_ptr, t_ptr, lse_ptr, scale_ptr, dh_ptr, dw_ptr,
                  N, V, D, stride_h, stride_w, ignore_index, v_offset,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Program (row block, vocab block): recompute the logits tile, turn it into dlogits, scatter both grads.

    dlogits = (softmax - onehot(target)) * scale on non-ignored rows, 0 elsewhere,
    with scale = dloss / n_valid read from scale_ptr (no host sync). Then for each
    D-block: dh[rows] += dlogits @ w[cols] and dw[cols] += dlogits^T @ h[rows],
    accumulated with fp32 atomics into dh_ptr (N, D) and dw_ptr (V, D), both
    contiguous fp32. The logits are computed once here, as in Cut Cross-Entropy
    (Wijmans et al., 2024); the price is atomic traffic, not a second recompute.

    The caller may launch it once per vocabulary window: w_ptr and dw_ptr then
    point at the window's first row, V is the window's width, and v_offset its
    first column in the whole vocabulary (targets are whole-vocabulary ids).
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    cols64 = cols.to(tl.int64)
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (tgt != ignore_index)
    if tl.sum(valid.to(tl.int32), axis=0) > 0:  # a block of padding rows contributes nothing: skip its matmuls
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        scale = tl.load(scale_ptr)
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            h = tl.load(h_ptr + rows64[:, None] * stride_h + ds[None, :], mask=row_ok[:, None] & d_ok[None, :],
                        other=0.0)
            w = tl.load(w_ptr + cols64[:, None] * stride_w + ds[None, :], mask=col_ok[:, None] & d_ok[None, :],
                        other=0.0)
            if UPCAST:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
        p = tl.exp(acc - lse[:, None])  # softmax tile, fp32
        p = tl.where(cols[None, :] + v_offset == tgt[:, None], p - 1.0, p)
        p = tl.where(valid[:, None] & col_ok[None, :], p * scale, 0.0)  # dlogits (BLOCK_N, BLOCK_V)
        if UPCAST:
            dl = p
        else:  # tensor cores take the input dtype, as eager's backward does (its dlogits are in the model dtype)
            dl = p.to(h_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            h = tl.load(h_ptr + rows64[:, None] * stride_h + ds[None, :], mask=row_ok[:, None] & d_ok[None, :],
                        other=0.0)
            w = tl.load(w_ptr + cols64[:, None] * stride_w + ds[None, :], mask=col_ok[:, None] & d_ok[None, :],
                        other=0.0)
            if UPCAST:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            dh = tl.dot(dl, w, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D) fp32
            dw = tl.dot(tl.trans(dl), h, input_precision=PRECISION)  # (BLOCK_V, BLOCK_D) fp32
            tl.atomic_add(dh_ptr + rows64[:, None] * D + ds[None, :], dh, mask=row_ok[:, None] & d_ok[None, :],
                          sem="relaxed")
            tl.atomic_add(dw_ptr + cols64[:, None] * D + ds[None, :], dw, mask=col_ok[:, None] & d_ok[None, :],
                          sem="relaxed")
