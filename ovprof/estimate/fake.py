"""Execute the real model's training step on fake tensors and record its memory profile.

    from ovprof.config import RunConfig
    from ovprof.estimate.fake import model_step
    model_step(RunConfig(encoder="vit-l14", batch=256, precision="bf16"), attention="flash")

Under torch's FakeTensorMode every operator runs its shape logic only: no
memory is used, so a ViT-L/14 step at batch 4096 profiles on a laptop. The
TensorTracker sees exactly the tensors the real step would allocate. DeepSpeed
cannot run on fake tensors (it reads values, e.g. for overflow checks), so its
buffers are modeled in ovprof/estimate/zero.py; only the model is executed.

Attention: the math kernel materializes the S x S scores, CUDA's flash and
memory-efficient kernels never do. `attention="flash"` swaps in an attention
whose memory is that of a flash kernel (output + fp32 logsumexp, recomputation
in backward) and models a CUDA target; `native` keeps whatever this machine's
PyTorch dispatches to (as in a CPU measurement; torch 2.13 picks its fused CPU
kernel even for the query decoder's boolean mask); `math` forces the math kernel.
"""

from __future__ import annotations

import contextlib
import torch
import torch.nn.functional as F

from ovprof.config import RunConfig
from ovprof.estimate.zero import ModelStep


class _FlashAttention(torch.autograd.Function):
    """Memory stand-in for flash attention: saves q, k, v, out and an fp32 logsumexp (B, H, S)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)  # (B, H, S, Dh)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, S)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        delta = lse.new_empty(lse.shape)  # rowsum(dO * O), fp32
        del delta
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _NoKernel:
    """Stands for a Triton kernel on fake tensors: launching it allocates nothing (its outputs are preallocated)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _fake_triton():
    """loss_impl=triton: keep every torch allocation of the autograd Function, skip the kernel launches."""
    from ovprof.kernels import fused_ce

    saved = fused_ce.triton_kernels, fused_ce._check_triton
    fused_ce.triton_kernels = lambda: (_NoKernel(), _NoKernel())
    fused_ce._check_triton = lambda hidden: False
    try:
        yield
    finally:
        fused_ce.triton_kernels, fused_ce._check_triton = saved


@contextlib.contextmanager
def _attention(kind: str):
    if kind == "native":
        yield
        return
    if kind == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            yield
        return
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        return _FlashAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def model_step(cfg: RunConfig, attention: str = "native") -> ModelStep:
    """Run build + forward + backward of `cfg` on fake tensors under the tensor tracker."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ovprof.measure.memory import TensorTracker
    from ovprof.models.data import DTYPES
    from ovprof.objectives import build_model, make_batch

    c = cfg.resolved()
    if c.loss_impl == "compiled":  # costed as eager: fake tensors do not run inductor (docs/levers.md)
        import dataclasses

        c = dataclasses.replace(c, loss_impl="eager")
    dtype = DTYPES[c.precision]
    triton = _fake_triton() if c.loss_impl == "triton" else contextlib.nullcontext()
    with _attention(attention), triton, FakeTensorMode(allow_non_fake_inputs=True):
        torch.manual_seed(0)
        # DeepSpeed runs the module in the training dtype; build it so (fake tensors cannot be swapped by .to())
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = build_model(c)
        finally:
            torch.set_default_dtype(previous)
        model.train()
        batch = make_batch(c, "cpu")
        params = list(model.parameters())
        with TensorTracker() as tr:
            tr.adopt_existing(parameters=params, inputs=list(batch.values()))
            tr.reset_peak()
            tr.watch_gradients(params)
            base = tr.live_bytes
            with tr.phase("forward"):
                loss = model(**batch)
            activation = tr.live_bytes - base
            # The highest non-gradient bytes while backward runs, before and after the first parameter
            # gradient lands: ZeRO 1/2 allocate their bucket at that moment, so it only adds to the later part.
            no_grad_peak = {False: 0, True: 0}
            first_grad = [False]
            hooks = [p.register_post_accumulate_grad_hook(lambda q: first_grad.__setitem__(0, True))
                     for p in params if p.requires_grad]
            _orig_add = tr._add

            def _add(st, category):
                _orig_add(st, category)
                if tr._phase == "backward":
                    live = tr.live_bytes - tr.by_category["gradients"] - base
                    no_grad_peak[first_grad[0]] = max(no_grad_peak[first_grad[0]], live)

            tr._add = _add
            with tr.phase("backward"):
                loss.backward()
            del loss
            for h in hooks:
                h.remove()
    return ModelStep(
        forward_bytes=tr.phase_peak_bytes.get("forward", base) - base,
        backward_bytes=tr.phase_peak_bytes.get("backward", base) - base,
        backward_no_grad_bytes=max(no_grad_peak.values()),
        backward_no_grad_after_first_grad_bytes=no_grad_peak[True],
        activation_bytes=activation,
        input_bytes=tr.start_breakdown_bytes["inputs"],
        param_count=sum(p.numel() for p in params),
        max_param_numel=max(p.numel() for p in params),
        param_numels=tuple(p.numel() for p in params),  # DeepSpeed hands AdamW model.parameters() in this order
    )
