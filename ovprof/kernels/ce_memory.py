"""Peak live tensor bytes of the caption head + cross-entropy alone, per implementation, at given shapes.

    python -m ovprof.kernels.ce_memory --rows 2528 --width 768 --vocab 32000 --impls eager,chunked
    TRITON_INTERPRET=1 python -m ovprof.kernels.ce_memory --rows 2528 --width 768 --vocab 32000 --impls triton

One forward + backward of `linear_cross_entropy` under the TensorTracker (ovprof/measure/memory.py), with
hidden (N, D), head weight (V, D) and targets (N,) alive before it starts (counted in `base`). `extra` is what
the loss adds on top: the number the fused implementations exist to shrink. rows = batch x (caption_len - 1)
for the caption objective. The whole model's figure comes from a real run (`ovprof run --set loss_impl=...`);
this isolates the loss's share of it.
"""

from __future__ import annotations

import argparse
import json

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def loss_peak_bytes(impl: str, rows: int, width: int, vocab: int, dtype: torch.dtype = torch.float32, *,
                    seed: int = 0, **kw) -> dict:
    from ovprof.kernels.fused_ce import linear_cross_entropy
    from ovprof.measure.memory import TensorTracker

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, width, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(vocab, width, generator=g) * width**-0.5).to(dtype).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g)
    with TensorTracker() as tr:
        tr.adopt_existing(parameters=[w], inputs=[h, t])
        tr.reset_peak()
        base = tr.live_bytes
        loss = linear_cross_entropy(h, w, t, impl=impl, **kw)
        loss.backward()
        del loss
    return {"impl": impl, "rows": rows, "width": width, "vocab": vocab, "dtype": str(dtype).removeprefix("torch."),
            "base_bytes": base, "peak_bytes": tr.peak_bytes, "extra_bytes": tr.peak_bytes - base,
            "logits_fp32_bytes": rows * vocab * 4}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True, help="N = batch x (caption_len - 1)")
    ap.add_argument("--width", type=int, required=True, help="D, the decoder width")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--impls", default="eager,chunked,triton")
    args = ap.parse_args(argv)
    for impl in args.impls.split(","):
        print(json.dumps(loss_peak_bytes(impl, args.rows, args.width, args.vocab, DTYPES[args.dtype])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
