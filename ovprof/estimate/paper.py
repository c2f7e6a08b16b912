"""The paper's efficiency table, predicted at full scale: OpenVision vs OpenVision 2, per device.

    ovprof estimate --paper

Setting (from ../shared/reference/openvision.md): TPU v4-64 = 32 chips of 32 GiB;
global batch 2k/4k/8k (L/14@224) and 512/1k (SoViT-400M/14@384), so 64/128/256
and 16/32 images per chip. We model it as ZeRO 3 over 32 ranks (the JAX code
shards parameters and optimizer state across chips), bf16, activation
checkpointing on, CUDA-style fused attention, OpenVision 2 keeping 35% of the
visual tokens. These are estimates for PyTorch + DeepSpeed, not TPU measurements.
"""

from __future__ import annotations

import dataclasses

from ovprof import objectives
from ovprof.config import RunConfig

CHIPS = 32
PAPER_MEMORY_GB = {  # (encoder, global batch) -> (OpenVision, OpenVision 2); None = OOM, "-" = not run
    ("vit-l14", 2048): (24.5, 13.8), ("vit-l14", 4096): (None, 22.1), ("vit-l14", 8192): ("-", 28.4),
    ("vit-so400m14", 512): (27.4, 14.5), ("vit-so400m14", 1024): (None, 28.8),
}
PAPER_MAX_GLOBAL_BATCH = {"vit-l14": (2048, 8192), "vit-so400m14": (512, 1024)}
RES = {"vit-l14": 224, "vit-so400m14": 384}


def paper_config(encoder: str, objective: str, per_device_batch: int) -> RunConfig:
    return RunConfig(objective=objective, encoder=encoder, res=RES[encoder], batch=per_device_batch,
                     mask_ratio=objectives.get(objective).paper_mask_ratio, precision="bf16", zero=3,
                     world_size=CHIPS, checkpointing=True, checkpointing_text=False)  # ViT only, as the paper


def paper_table(method: str = "analytic", devices_gib=(32, 80)) -> list[dict]:
    from ovprof.estimate import estimate, max_batch

    rows = []
    for (encoder, global_batch), (paper_ov, paper_ov2) in PAPER_MEMORY_GB.items():
        per = global_batch // CHIPS
        ov = estimate(paper_config(encoder, "openvision", per), method).peak_bytes
        ov2 = estimate(paper_config(encoder, "caption", per), method).peak_bytes
        rows.append({
            "kind": "memory", "encoder": encoder, "res": RES[encoder], "global_batch": global_batch,
            "per_device_batch": per, "est_openvision_gib": ov / 2**30, "est_caption_gib": ov2 / 2**30,
            "est_memory_ratio_x": ov / ov2,
            "paper_openvision_gb": paper_ov, "paper_caption_gb": paper_ov2,
            "paper_memory_ratio_x": (paper_ov / paper_ov2) if isinstance(paper_ov, float) and paper_ov2 else None,
        })
    for encoder, (p_ov, p_ov2) in PAPER_MAX_GLOBAL_BATCH.items():
        for gib in devices_gib:
            b_ov, _ = max_batch(paper_config(encoder, "openvision", 1), int(gib * 2**30), "analytic")
            b_ov2, _ = max_batch(paper_config(encoder, "caption", 1), int(gib * 2**30), "analytic")
            rows.append({
                "kind": "max_batch", "encoder": encoder, "res": RES[encoder], "device_gib": gib,
                "est_max_batch_openvision": b_ov, "est_max_batch_caption": b_ov2,
                "est_max_global_batch_openvision": b_ov * CHIPS, "est_max_global_batch_caption": b_ov2 * CHIPS,
                "est_max_batch_ratio_x": (b_ov2 / b_ov) if b_ov else None,
                "paper_max_global_batch_openvision": p_ov, "paper_max_global_batch_caption": p_ov2,
                "paper_max_batch_ratio_x": p_ov2 / p_ov,
            })
    return rows


def with_batch(cfg: RunConfig, batch: int) -> RunConfig:
    return dataclasses.replace(cfg, batch=batch)
