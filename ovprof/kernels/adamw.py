"""AdamW with Adam's first moment stored in bf16 (OpenVision 2's optimizer state), one tensor at a time.

    from ovprof.kernels.adamw import AdamWBf16Moment
    opt = AdamWBf16Moment(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2)

OpenVision 2 trains with optax's adamw(mu_dtype=bfloat16): the first moment is
updated and used in fp32, then stored in bf16; the second moment stays fp32.
This is that rule on torch's for-loop AdamW (torch.optim.AdamW(foreach=False)
computes the same update: decoupled weight decay, bias corrections, eps added
to sqrt(v) / sqrt(bc2)). torch's own AdamW cannot hold a bf16 moment beside
fp32 parameters (lerp_ wants one dtype).

State per parameter of n elements: exp_avg 2n bytes (bf16), exp_avg_sq 4n,
step (a 4-byte tensor, as torch's): 2n less than torch's AdamW.
Temporaries of one tensor's step, all freed before the next tensor: the fp32
first moment (4n), sqrt(v) and sqrt(v) / sqrt(bc2) (4n each): 12n at the
division (ovprof/estimate/zero.py, `adamw_temporaries_bytes`).
"""

from __future__ import annotations

import math

import torch


class AdamWBf16Moment(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                p.mul_(1 - lr * wd)
                m = state["exp_avg"].to(grad.dtype)  # fp32 for the update, as optax computes mu before the cast
                m.lerp_(grad, 1 - beta1)
                state["exp_avg"].copy_(m)
                v = state["exp_avg_sq"]
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
                denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bc1)
                del m, denom  # nothing of this tensor's step outlives it
        return loss
