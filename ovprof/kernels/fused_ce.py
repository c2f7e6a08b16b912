"""Caption head + cross-entropy without the (N, V) logits: a chunked PyTorch version and a fused Triton kernel.

    python -m ovprof.kernels.ce_memory --rows 2528 --width 768 --vocab 32000 --impls eager,chunked
    TRITON_INTERPRET=1 python -m ovprof.kernels.ce_memory --rows 2528 --width 768 --impls triton  # kernels on CPU

loss = mean over rows with target != ignore_index of  logsumexp(h_i W^T) - (h_i W^T)[t_i],
for hidden h (N, D) and a bias-free head W (V, D). Three implementations:

- `reference_linear_ce`: what `caption_loss(impl="eager")` does, the ground truth:
  logits (N, V) in the input dtype, upcast to fp32, F.cross_entropy.
- `chunked`: the same arithmetic in a custom autograd.Function that saves only
  h, W, targets and the per-row logsumexp (N,). The forward goes `chunk_rows`
  rows at a time; the backward recomputes the logits in vocabulary windows of
  `window_cols` columns over all rows, so each window's rows of dW are final
  at once and only dh (N, D) accumulates. At most one chunk's or one window's
  logits (<= CHUNK_BYTES in fp32) are alive at a time. Runs anywhere PyTorch runs.
- `triton`: one forward kernel (online softmax over V-blocks, target logit picked
  on the way) and one backward kernel (recompute a logits tile, dlogits, fp32
  atomic accumulation of dh and dW). Logits exist only as register tiles. Needs
  a CUDA GPU, or TRITON_INTERPRET=1 to run the same kernels on CPU tensors.

All three return an fp32 scalar; gradients come back in the dtypes of h and W.
Unlike F.cross_entropy (NaN), chunked and triton return 0 with zero gradients
when every row is ignored (a fully padded micro-batch must not poison a step).
Numerics: chunked rounds logits to the input dtype as eager does; triton keeps
them in fp32 (bf16 products are exact in fp32), so in bf16 it is the closer of
the two to an fp64 computation.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
IMPLS = ("eager", "chunked", "triton")
# Rows per chunk are chosen so one chunk's fp32 logits stay under this: 32 MiB is 262 rows at V = 32000.
CHUNK_BYTES = 32 * 2**20
# triton with a bf16/fp16 head: dW is accumulated in fp32 one vocabulary window of at most this many bytes at a
# time (a whole-vocabulary fp32 buffer would be 2x the gradient: 98 MB at V = 32000, D = 768).
DW_WINDOW_BYTES = 16 * 2**20
# (BLOCK_N, BLOCK_V, BLOCK_D). GPU: a (64, 128) fp32 tile is 32 registers a thread at 8 warps (not tuned on
# a GPU yet). The interpreter runs one program at a time in numpy: per-op overhead dominates, so it takes the
# biggest tile triton allows (2^20 elements): ~9 GFLOP/s vs 0.03 with GPU_BLOCKS (N 512, D 768, V 8192).
GPU_BLOCKS = (64, 128, 64)
INTERPRET_BLOCKS = (512, 2048, 256)
TRITON_CPU_MESSAGE = ("loss_impl=triton needs a CUDA GPU or TRITON_INTERPRET=1 (runs the kernel on CPU, slowly); "
                      "on this machine use loss_impl=chunked")


# ---- reference ---------------------------------------------------------------------------------------------------
def reference_linear_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Eager: logits (N, V) in the input dtype, upcast to fp32, F.cross_entropy (NaN if every row is ignored)."""
    logits = hidden @ weight.t()  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


# ---- chunked PyTorch ---------------------------------------------------------------------------------------------
def default_chunk_rows(vocab_size: int, budget_bytes: int = CHUNK_BYTES) -> int:
    return max(1, budget_bytes // (4 * vocab_size))


def default_window_cols(rows: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Vocabulary columns per backward window: a window's fp32 logits (rows x cols) stay under the budget."""
    return max(1, budget_bytes // (4 * max(1, rows)))


class ChunkedLinearCE(torch.autograd.Function):
    """Forward in row chunks, backward in vocabulary windows, logits recomputed; saves h, W, targets, lse (N,)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk_rows: int, window_cols: int | None):
        N = hidden.shape[0]
        valid = targets != ignore_index  # (N,)
        safe_t = targets.masked_fill(~valid, 0)  # ignored rows read column 0, then get weight 0
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        row_loss = torch.empty(N, dtype=torch.float32, device=hidden.device)
        for s in range(0, N, chunk_rows):
            e = min(s + chunk_rows, N)
            logits = (hidden[s:e] @ weight.t()).float()  # (n, V): the only (rows x V) tensor, <= CHUNK_BYTES
            t_logit = logits.gather(1, safe_t[s:e, None]).squeeze(1)
            m = logits.amax(dim=1)
            lse[s:e] = logits.sub_(m[:, None]).exp_().sum(dim=1).log_().add_(m)  # in place: no second chunk
            row_loss[s:e] = lse[s:e] - t_logit
            del logits
        n_valid = valid.sum()
        loss = row_loss.masked_fill_(~valid, 0.0).sum() / n_valid.clamp(min=1)
        ctx.save_for_backward(hidden, weight, safe_t, valid, lse, n_valid)
        ctx.window_cols = window_cols
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, safe_t, valid, lse, n_valid = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, V = hidden.shape[0], weight.shape[0]
        scale = grad_loss.float() / n_valid.clamp(min=1)  # 0-dim, stays on the device
        w_row = (valid.float() * scale)[:, None]  # (N, 1) dloss/dlogit per row, 0 on ignored rows
        h32 = hidden.float() if need_w else None  # (N, D) for dW: hidden itself when fp32
        dh32 = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        dw = torch.empty_like(weight) if need_w else None
        # Vocabulary windows of all N rows: each window's dW rows are final at once (no V x D fp32 accumulator,
        # which in bf16 would be 2x the gradient), and only dh (N x D) accumulates across windows.
        cols = ctx.window_cols or default_window_cols(N)
        for v0 in range(0, V, cols):
            v1 = min(v0 + cols, V)
            w_win = weight[v0:v1]
            p = (hidden @ w_win.t()).float()  # (N, window) logits again
            p.sub_(lse[:, None]).exp_()  # softmax
            # minus one-hot on the rows whose target falls in this window (static shapes: no nonzero())
            here = (valid & (safe_t >= v0) & (safe_t < v1)).float()
            p.scatter_add_(1, (safe_t - v0).clamp_(0, v1 - v0 - 1)[:, None], -here[:, None])
            p.mul_(w_row)  # dlogits (N, window) fp32
            if need_h:
                dh32.addmm_(p, w_win.float())
            if need_w:  # fp32 sum over all rows, rounded once into the gradient's dtype
                if dw.dtype == torch.float32:
                    torch.mm(p.t(), h32, out=dw[v0:v1])
                else:
                    dw[v0:v1] = p.t() @ h32
            del p
        dh = None
        if need_h:
            dh = dh32 if hidden.dtype == torch.float32 else dh32.to(hidden.dtype)
        return dh, dw, None, None, None, None


# ---- Triton --------------------------------------------------------------------------------------------------------
TRITON_MIN_VERSION = "3.4"  # triton.knobs (the interpreter switch) and the kernels' language features; pyproject


def _knobs(triton):
    """triton.knobs, or the one-line error naming the version it needs (older triton has no knobs)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is None:
        raise RuntimeError(f"loss_impl=triton needs triton >= {TRITON_MIN_VERSION} (found "
                           f"{getattr(triton, '__version__', 'unknown')}, which has no triton.knobs); upgrade "
                           "triton or use loss_impl=chunked")
    return knobs


def _interpret_mode() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return bool(_knobs(triton).runtime.interpret)


@functools.cache
def _kernels(interpret: bool):
    import triton

    from ovprof.kernels import _triton_ce as src

    # triton.jit reads TRITON_INTERPRET now; the cache key keeps one wrapping per mode.
    assert bool(_knobs(triton).runtime.interpret) == interpret
    return triton.jit(src.linear_ce_fwd), triton.jit(src.linear_ce_bwd)


def triton_kernels():
    """(forward, backward) kernels for the current mode (compiled or interpreted)."""
    return _kernels(_interpret_mode())


def _check_triton(hidden: torch.Tensor) -> bool:
    """Raise the one-line error if the Triton path cannot run here; return whether it runs interpreted."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise RuntimeError("loss_impl=triton needs the triton package (pip install triton); "
                           "use loss_impl=chunked") from None
    interpret = _interpret_mode()
    if not interpret and not hidden.is_cuda:
        raise RuntimeError(TRITON_CPU_MESSAGE)
    # triton.language's own helpers (tl.sum, tl.max) are jitted when triton is first imported, in the mode of
    # that moment; our kernels call them, so both must agree.
    import triton.language as tl

    lib_interpreted = type(tl.sum).__name__ == "InterpretedFunction"
    if lib_interpreted != interpret:
        raise RuntimeError(f"TRITON_INTERPRET={'1' if interpret else '0'} now, but triton was imported with it "
                           f"{'on' if lib_interpreted else 'off'}: set it before the process imports triton")
    return interpret


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision. fp32 follows torch's own TF32 switch, so triton matches eager's matmul;
    bf16/fp16 ignore it (triton's default, tf32, keeps the compiler on its usual path)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _splits(n_row_blocks: int, n_v_blocks: int, device: torch.device, interpret: bool) -> int:
    """Vocabulary splits so that row blocks x splits fills the GPU about twice; 1 in the interpreter."""
    if interpret or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_v_blocks, -(-2 * sms // n_row_blocks)))


class TritonLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, blocks, split, window_cols: int | None):
        interpret = _check_triton(hidden)
        fwd, _ = triton_kernels()
        hidden = hidden.contiguous()
        weight = weight.contiguous()
        targets = targets.contiguous()
        N, D = hidden.shape
        V = weight.shape[0]
        BN, BV, BD = blocks or (INTERPRET_BLOCKS if interpret else GPU_BLOCKS)
        n_row_blocks, n_v_blocks = -(-N // BN), -(-V // BV)
        S = split or _splits(n_row_blocks, n_v_blocks, hidden.device, interpret)
        # Every split owns a whole number of V-blocks and at least one column.
        v_per_split = -(-n_v_blocks // S) * BV
        S = -(-V // v_per_split)
        lse_part = torch.empty(S, N, dtype=torch.float32, device=hidden.device)
        tgt_part = torch.empty(S, N, dtype=torch.float32, device=hidden.device)
        if N > 0:
            fwd[(n_row_blocks, S)](hidden, weight, targets, lse_part, tgt_part, N, V, D, hidden.stride(0),
                                   weight.stride(0), v_per_split, ignore_index, BLOCK_N=BN, BLOCK_V=BV,
                                   BLOCK_D=BD, UPCAST=interpret, PRECISION=_precision(hidden.dtype), num_warps=8)
        lse = lse_part[0] if S == 1 else torch.logsumexp(lse_part, dim=0)  # (N,)
        t_logit = tgt_part[0] if S == 1 else tgt_part.sum(dim=0)
        valid = targets != ignore_index
        n_valid = valid.sum()
        loss = (lse - t_logit).masked_fill_(~valid, 0.0).sum() / n_valid.clamp(min=1)
        ctx.save_for_backward(hidden, weight, targets, lse, n_valid)
        ctx.ignore_index, ctx.blocks, ctx.interpret = ignore_index, (BN, BV, BD), interpret
        ctx.window_cols = window_cols
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse, n_valid = ctx.saved_tensors
        _, bwd = triton_kernels()
        N, D = hidden.shape
        V = weight.shape[0]
        BN, BV, BD = ctx.blocks
        scale = (grad_loss.float() / n_valid.clamp(min=1)).reshape(1)
        dh32 = torch.zeros(N, D, dtype=torch.float32, device=hidden.device)  # fp32: the gradient itself
        if weight.dtype == torch.float32:  # accumulate straight into the gradient: one launch
            dw = torch.zeros(V, D, dtype=torch.float32, device=weight.device)
            windows, buf = [(0, V)], None
        else:  # fp32 accumulation one vocabulary window at a time: no V x D fp32 buffer beside the gradient
            dw = torch.empty_like(weight)
            cols = ctx.window_cols or max(BV, DW_WINDOW_BYTES // (4 * max(1, D)) // BV * BV)
            windows = [(v0, min(v0 + cols, V)) for v0 in range(0, V, cols)]
            buf = torch.empty(min(cols, V), D, dtype=torch.float32, device=weight.device)
        for v0, v1 in windows:
            acc = dw if buf is None else buf[: v1 - v0].zero_()
            if N > 0:
                bwd[(-(-N // BN), -(-(v1 - v0) // BV))](
                    hidden, weight[v0:v1], targets, lse, scale, dh32, acc, N, v1 - v0, D, hidden.stride(0),
                    weight.stride(0), ctx.ignore_index, v0, BLOCK_N=BN, BLOCK_V=BV, BLOCK_D=BD,
                    UPCAST=ctx.interpret, PRECISION=_precision(hidden.dtype), num_warps=8)
            if buf is not None:
                dw[v0:v1] = acc
        del buf
        dh = dh32 if hidden.dtype == torch.float32 else dh32.to(hidden.dtype)
        return (dh if ctx.needs_input_grad[0] else None, dw if ctx.needs_input_grad[1] else None,
                None, None, None, None, None)


# ---- entry point ---------------------------------------------------------------------------------------------------
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, impl: str = "chunked",
                         ignore_index: int = IGNORE_INDEX, chunk_rows: int | None = None,
                         blocks: tuple[int, int, int] | None = None, split: int | None = None,
                         window_cols: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of hidden (..., D) through a bias-free head weight (V, D) against targets (...).

    impl: eager | chunked | triton. chunk_rows (chunked): rows per chunk, default from CHUNK_BYTES.
    blocks (triton): (BLOCK_N, BLOCK_V, BLOCK_D); split (triton): vocabulary splits of the forward.
    window_cols: vocabulary columns per backward window (chunked: default from CHUNK_BYTES; triton: used only
    for a non-fp32 head, default from DW_WINDOW_BYTES).
    """
    D = hidden.shape[-1]
    h2 = hidden.reshape(-1, D)  # (N, D); a copy only when hidden is a non-contiguous view
    t1 = targets.reshape(-1)
    if h2.shape[0] != t1.shape[0]:
        raise ValueError(f"hidden has {h2.shape[0]} rows but targets has {t1.shape[0]}")
    if weight.shape[-1] != D:
        raise ValueError(f"head weight {tuple(weight.shape)} does not match hidden width {D}")
    if impl == "eager":
        return reference_linear_ce(h2, weight, t1, ignore_index)
    if impl == "chunked":
        rows = chunk_rows or default_chunk_rows(weight.shape[0])
        return ChunkedLinearCE.apply(h2, weight, t1, ignore_index, rows, window_cols)
    if impl == "triton":
        return TritonLinearCE.apply(h2, weight, t1, ignore_index, blocks, split, window_cols)
    raise ValueError(f"unknown loss_impl {impl!r}; one of {', '.join(IMPLS)}")
