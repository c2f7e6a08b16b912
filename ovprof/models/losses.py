"""Losses: caption cross-entropy through the head, CLIP's symmetric InfoNCE, and MAE's masked-patch pixel loss.

    python -c "import ovprof.models.losses as L; help(L.caption_loss)"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def caption_loss(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, impl: str = "eager") -> torch.Tensor:
    """Mean next-token cross-entropy of hidden (B, L, D) through a bias-free head (V, D) against targets (B, L).

    eager: materializes logits (B, L, V) in the model dtype, then upcasts them to
    fp32 for the cross-entropy, as a plain PyTorch training loop does.
    chunked | triton: never hold the whole (B, L, V) logits (ovprof/kernels/fused_ce.py).
    compiled: the eager head + cross-entropy under torch.compile (inductor), the baseline fused kernels are
    judged against; compiled on the first call, once per process and shape.
    """
    if impl == "compiled":
        return _compiled_eager()(hidden, head_weight, targets)
    if impl in ("chunked", "triton"):
        from ovprof.kernels.fused_ce import linear_cross_entropy

        return linear_cross_entropy(hidden, head_weight, targets, impl=impl, ignore_index=IGNORE_INDEX)
    if impl != "eager":
        raise ValueError(f"unknown loss_impl {impl!r}")
    return _eager(hidden, head_weight, targets)


def _eager(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden @ head_weight.t()  # (B, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


_COMPILED = None


def _compiled_eager():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_eager, dynamic=False)
    return _COMPILED


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, with gradient flowing back to this rank's rows (open_clip gather_with_grad)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE. image (B, E), text (B*c, E) with c captions per image (c = 1 or 2).

    Local loss against the global batch: this rank's images against every
    rank's texts and this rank's texts against every rank's images. With c = 2
    (OpenVision) the image is contrasted against both of its captions: the loss
    is the mean of the two B x (global B) problems.
    """
    import torch.distributed as dist

    B = image.shape[0]
    c = text.shape[0] // B
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    all_image, all_text = _gather(image), _gather(text)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(B, device=image.device) + rank * B
    scale = logit_scale.float().exp().clamp(max=100)
    loss = image.new_zeros(())
    world_b = all_image.shape[0]
    for i in range(c):
        # all_text rows are laid out [rank0: cap0 (B), cap1 (B)], [rank1: ...]
        txt_i = all_text.view(world_b // B, c, B, -1)[:, i].reshape(world_b, -1)  # (global B, E)
        local_txt = text[i * B:(i + 1) * B]  # (B, E)
        logits_i2t = scale * image @ txt_i.t()  # (B, global B)
        logits_t2i = scale * local_txt @ all_image.t()  # (B, global B)
        loss = loss + (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
    return loss / c


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """images (B, 3, R, R) -> (B, N, patch^2 x 3), patches in the patch embedding's (row-major) order.

    Pixels a stride-`patch` embedding drops (R not a multiple of the patch) are dropped here too; each patch is
    flattened row, column, channel (MAE's 'nchpwq->nhwpqc').
    """
    B, C, R, _ = images.shape
    h = R // patch
    x = images[:, :, : h * patch, : h * patch].reshape(B, C, h, patch, h, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, h * h, patch * patch * C)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE's loss: mean squared error per patch, averaged over the masked patches only.

    pred, target (B, N, P) with P = patch^2 x 3; masked (B, N), 1 where the patch was dropped. norm_pix: each
    target patch normalised by its own mean and (unbiased) variance, as MAE's norm_pix_loss. Computed in fp32.
    """
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (B, N)
    masked = masked.to(per_patch.dtype)
    return (per_patch * masked).sum() / masked.sum()
