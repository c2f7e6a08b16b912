"""Fused linear + cross-entropy (ovprof/kernels/fused_ce.py): chunked and triton against eager, and their memory.

The triton tests run the real kernels under triton's CPU interpreter. TRITON_INTERPRET=1 has to be in the
environment before the process first imports triton (triton.language jits its own helpers, tl.sum and
tl.max, at import, in the mode of that moment), and other test modules import triton early through
deepspeed's dependencies. So `test_interpreter_suite_in_a_subprocess` runs this file again in a fresh
interpreter with TRITON_INTERPRET=1; there the `interpret` tests run, here they skip and say where they ran.
Shapes are small and deliberately not multiples of the block sizes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from ovprof.kernels import fused_ce
from ovprof.kernels.fused_ce import IGNORE_INDEX, linear_cross_entropy
from ovprof.models.losses import caption_loss

# (N, D, V): N, D, V off the block sizes (16, 32, 16) used below, one single-block case, one tiny vocab.
SHAPES = [(37, 45, 101), (64, 32, 256), (5, 8, 7), (70, 20, 500)]
SMALL_BLOCKS = (16, 32, 16)
# Max |a - b| / max |b| over a gradient, per input dtype. fp32: summation order only. bf16: eager rounds
# logits and dlogits to bf16 (~2^-8 relative); triton keeps logits in fp32, so it differs from eager by that much.
# fp16 (10-bit mantissa) sits between the two.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
LOSS_ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def _interpreting() -> bool:
    """This process imported triton with TRITON_INTERPRET=1 (so the kernels can run on CPU tensors here)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton.language as tl
    except ImportError:
        return False
    return type(tl.sum).__name__ == "InterpretedFunction"


@pytest.fixture
def interpret():
    if not _interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported: runs in test_interpreter_suite_in_a_subprocess")


def _inputs(N, D, V, dtype, seed, ignore_every=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) / D**0.5 * 3).to(dtype)  # logits of order 3: a peaked softmax
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = IGNORE_INDEX
    return h, w, t


def _run(h, w, t, **kw):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, t, **kw)
    loss.backward()
    return loss, h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _check_against_eager(h, w, t, **kw):
    loss, dh, dw = _run(h, w, t, **kw)
    ref_loss, ref_dh, ref_dw = _run(h, w, t, impl="eager")
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert dh.dtype == h.dtype and dw.dtype == w.dtype
    assert abs(loss.item() - ref_loss.item()) <= LOSS_ATOL[h.dtype] * max(1.0, abs(ref_loss.item()))
    assert _rel(dh, ref_dh) <= TOL[h.dtype], _rel(dh, ref_dh)
    assert _rel(dw, ref_dw) <= TOL[w.dtype], _rel(dw, ref_dw)
    # ignored rows get exactly zero gradient, as in eager
    assert (dh[t == IGNORE_INDEX] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_chunked_matches_eager(shape, dtype):
    N, D, V = shape
    h, w, t = _inputs(N, D, V, dtype, seed=sum(shape))
    # several row chunks and vocabulary windows, each with a ragged last one
    _check_against_eager(h, w, t, impl="chunked", chunk_rows=max(1, N // 3), window_cols=max(1, V // 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_eager(shape, dtype, interpret):
    N, D, V = shape
    h, w, t = _inputs(N, D, V, dtype, seed=1 + sum(shape))
    _check_against_eager(h, w, t, impl="triton", blocks=SMALL_BLOCKS)


@pytest.mark.parametrize("window_cols", [16, 40], ids=["block-multiple", "ragged"])
def test_triton_bf16_backward_in_vocabulary_windows(window_cols, interpret):
    """A bf16 head accumulates dW in fp32 one vocabulary window at a time; targets in every window."""
    h, w, t = _inputs(70, 20, 500, torch.bfloat16, seed=17)
    _check_against_eager(h, w, t, impl="triton", blocks=SMALL_BLOCKS, window_cols=window_cols)


@pytest.mark.parametrize("split", [2, 3])
def test_triton_vocab_splits_combine_to_the_same_loss(split, interpret):
    """The forward's vocabulary splits (used on GPUs to fill the SMs) merge by logsumexp."""
    h, w, t = _inputs(37, 45, 101, torch.float32, seed=7)
    _check_against_eager(h, w, t, impl="triton", blocks=SMALL_BLOCKS, split=split)


def test_triton_keeps_bf16_logits_in_fp32(interpret):
    """In bf16 the triton loss is within fp32 rounding of an fp64 computation from the same bf16 inputs;
    eager (logits rounded to bf16) is not. Gradients: within bf16 output rounding."""
    h, w, t = _inputs(200, 64, 3000, torch.bfloat16, seed=16)
    exact = _run(h.double(), w.double(), t, impl="eager")
    loss, dh, dw = _run(h, w, t, impl="triton", blocks=(64, 256, 64))
    eager_loss = _run(h, w, t, impl="eager")[0]
    assert abs(loss.item() - exact[0].item()) < 1e-5 * exact[0].item()
    assert abs(eager_loss.item() - exact[0].item()) > 10 * abs(loss.item() - exact[0].item())
    assert _rel(dh, exact[1]) < 2**-7 and _rel(dw, exact[2]) < 2**-7


def test_triton_default_interpreter_blocks(interpret):
    """The block sizes a real run uses under TRITON_INTERPRET=1 (one block covers these rows and columns)."""
    h, w, t = _inputs(70, 40, 3000, torch.float32, seed=8)
    _check_against_eager(h, w, t, impl="triton")


def test_default_chunk_rows_splits_a_big_vocabulary(monkeypatch):
    """Default chunking: rows per chunk from CHUNK_BYTES; force several chunks with a small budget."""
    monkeypatch.setattr(fused_ce, "CHUNK_BYTES", 4 * 500 * 7)  # 7 rows of a 500-word vocabulary
    assert fused_ce.default_chunk_rows(500, fused_ce.CHUNK_BYTES) == 7
    assert fused_ce.default_chunk_rows(32000) == 262  # 32 MiB of fp32 logits
    h, w, t = _inputs(40, 16, 500, torch.float32, seed=9)
    _check_against_eager(h, w, t, impl="chunked", chunk_rows=fused_ce.default_chunk_rows(500, fused_ce.CHUNK_BYTES))


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_padding_heavy_blocks(impl, request):
    """Caption padding: a row block with no target (skipped by the triton backward) and one with a single one."""
    if impl == "triton":
        request.getfixturevalue("interpret")
    h, w, t = _inputs(40, 24, 90, torch.float32, seed=15, ignore_every=0)
    t[:32] = IGNORE_INDEX
    t[20] = 5
    kw = {"blocks": SMALL_BLOCKS} if impl == "triton" else {"chunk_rows": 16}
    _check_against_eager(h, w, t, impl=impl, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_all_rows_ignored_gives_zero_loss_and_zero_grads_not_nan(impl, dtype, request):
    if impl == "triton":
        request.getfixturevalue("interpret")
    h, w, t = _inputs(19, 24, 50, dtype, seed=10, ignore_every=0)
    t[:] = IGNORE_INDEX
    kw = {"blocks": SMALL_BLOCKS} if impl == "triton" else {"chunk_rows": 8}
    loss, dh, dw = _run(h, w, t, impl=impl, **kw)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert torch.equal(dh, torch.zeros_like(dh)) and torch.equal(dw, torch.zeros_like(dw))


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_caption_loss_dispatches_and_accepts_a_strided_3d_hidden(impl, request):
    """The decoder hands caption_loss x[:, K:], a non-contiguous (B, L-1, D) view; grads flow back into x."""
    if impl == "triton":
        request.getfixturevalue("interpret")
    g = torch.Generator().manual_seed(11)
    B, K, L, D, V = 3, 4, 9, 20, 300
    x = torch.randn(B, K + L, D, generator=g)
    w = torch.randn(V, D, generator=g) * 0.3
    t = torch.randint(0, V, (B, L), generator=g)
    t[0, -3:] = IGNORE_INDEX
    grads = {}
    for name in ("eager", impl):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = caption_loss(xx[:, K:], ww, t, name)
        loss.backward()
        grads[name] = (loss.item(), xx.grad, ww.grad)
    assert grads[impl][0] == pytest.approx(grads["eager"][0], rel=1e-5)
    assert _rel(grads[impl][1], grads["eager"][1]) < 2e-5
    assert (grads[impl][1][:, :K] == 0).all()
    assert _rel(grads[impl][2], grads["eager"][2]) < 2e-5


def test_triton_without_gpu_or_interpreter_is_one_clear_line(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # in the interpreter subprocess too: checked first
    h, w, t = _inputs(8, 16, 32, torch.float32, seed=12)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error is for CPU tensors without the interpreter")
    with pytest.raises(RuntimeError) as e:
        linear_cross_entropy(h, w, t, impl="triton")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("loss_impl=triton needs a CUDA GPU or TRITON_INTERPRET=1")


def test_loss_impl_is_a_sweepable_config_field():
    from ovprof.config import ConfigError, RunConfig

    ids = {RunConfig(loss_impl=i).run_id for i in ("eager", "chunked", "triton")}
    assert len(ids) == 3  # each implementation is its own measured point
    with pytest.raises(ConfigError, match="loss_impl"):
        RunConfig(loss_impl="fused")


def test_caption_model_with_chunked_loss_trains_like_eager():
    """Same seed, same batch: the whole caption model's loss and every gradient agree with eager."""
    from ovprof.config import RunConfig
    from ovprof.objectives import build_model, make_batch

    out = {}
    for impl in ("eager", "chunked"):
        cfg = RunConfig(objective="caption", batch=3, vocab_size=500, caption_len=12, loss_impl=impl)
        torch.manual_seed(0)
        model = build_model(cfg)
        loss = model(**make_batch(cfg, "cpu"))
        loss.backward()
        out[impl] = (loss.item(), {n: p.grad for n, p in model.named_parameters()})
    assert out["chunked"][0] == pytest.approx(out["eager"][0], rel=1e-5)
    for name, g in out["eager"][1].items():
        assert _rel(out["chunked"][1][name], g) < 1e-4, name


# ---- memory ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_fused_paths_never_hold_the_full_logits(impl, request):
    """Eager's peak above its inputs is several N x V fp32 tensors; chunked/triton stay under half of one."""
    if impl == "triton":
        request.getfixturevalue("interpret")
    from ovprof.kernels.ce_memory import loss_peak_bytes

    N, D, V = 512, 16, 4096
    logits_bytes = N * V * 4  # 8 MiB
    eager = loss_peak_bytes("eager", N, D, V)
    kw = {"chunk_rows": 64, "window_cols": 512} if impl == "chunked" else {}
    fused = loss_peak_bytes(impl, N, D, V, **kw)
    assert eager["base_bytes"] == fused["base_bytes"]
    assert eager["extra_bytes"] >= 2 * logits_bytes  # the measurement sees eager's logits at all
    assert fused["extra_bytes"] < logits_bytes / 2, (fused["extra_bytes"], logits_bytes)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_bf16_head_gradient_needs_no_full_fp32_copy(impl, request):
    """With a bf16 head, dW is summed in fp32 a vocabulary window at a time: the loss's extra bytes stay under
    the bf16 gradient plus half a V x D fp32 buffer (a whole-vocabulary fp32 accumulator would be all of one)."""
    if impl == "triton":
        request.getfixturevalue("interpret")
    from ovprof.kernels.ce_memory import loss_peak_bytes

    N, D, V = 64, 256, 4096
    kw = {"window_cols": 512, **({"chunk_rows": 16} if impl == "chunked" else {"blocks": (64, 256, 64)})}
    fused = loss_peak_bytes(impl, N, D, V, torch.bfloat16, **kw)
    dw_bf16, dw_fp32 = V * D * 2, V * D * 4
    assert dw_bf16 <= fused["extra_bytes"] < dw_bf16 + dw_fp32 / 2, (fused["extra_bytes"], dw_bf16, dw_fp32)


# ---- GPU -----------------------------------------------------------------------------------------------------------
def test_kernels_compile_for_hopper_without_a_gpu():
    """Lower both kernels to a cubin for sm_90 with the ptxas bundled in the triton wheel (no GPU needed)."""
    triton = pytest.importorskip("triton")
    if _interpreting():
        pytest.skip("triton.jit returns interpreted functions in this process; compiled in the parent")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no offline compile API")
    from ovprof.kernels import _triton_ce as src

    common = {"N": "i32", "V": "i32", "D": "i32", "stride_h": "i32", "stride_w": "i32"}
    for dt, prec in (("fp32", "ieee"), ("bf16", "tf32")):
        const = dict(zip(("BLOCK_N", "BLOCK_V", "BLOCK_D"), fused_ce.GPU_BLOCKS), UPCAST=False, PRECISION=prec)
        sigs = {
            src.linear_ce_fwd: {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "t_ptr": "*i64", "lse_ptr": "*fp32",
                                "tgt_ptr": "*fp32", **common, "v_per_split": "i32", "ignore_index": "i32"},
            src.linear_ce_bwd: {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "t_ptr": "*i64", "lse_ptr": "*fp32",
                                "scale_ptr": "*fp32", "dh_ptr": "*fp32", "dw_ptr": "*fp32", **common,
                                "ignore_index": "i32", "v_offset": "i32"},
        }
        for fn, sig in sigs.items():
            sig = {**sig, **{k: "constexpr" for k in const}}
            names = list(sig)
            try:
                k = triton.compile(ASTSource(triton.jit(fn), sig, constexprs={(names.index(n),): v
                                                                             for n, v in const.items()}),
                                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
            except (RuntimeError, FileNotFoundError) as e:
                if "ptxas" in str(e).lower():
                    pytest.skip(f"no ptxas: {e}")
                raise
            assert k.asm["cubin"], (fn.__name__, dt)
            assert k.metadata.shared <= 227 * 1024, (fn.__name__, dt, k.metadata.shared)  # H100 per-block limit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_triton_compiled_on_gpu_matches_eager(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for N, D, V in [(37, 45, 101), (2528, 768, 32000)]:
        h, w, t = (x.cuda() for x in _inputs(N, D, V, dtype, seed=14))
        _check_against_eager(h, w, t, impl="triton")


# ---- the interpreter run ---------------------------------------------------------------------------------------------
def test_interpreter_suite_in_a_subprocess():
    """Run this file with TRITON_INTERPRET=1 from the start; every `interpret` test must pass there, none skip."""
    pytest.importorskip("triton")
    if _interpreting():
        pytest.skip("this is the subprocess")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider",
                           "-k", "triton or ignored or padding or dispatches or never_hold or fp32_copy"],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "needs TRITON_INTERPRET=1" not in out, out[-6000:]  # the interpreter tests really ran
    passed = int(re.search(r"(\d+) passed", out).group(1))
    assert passed >= 20, out[-3000:]
