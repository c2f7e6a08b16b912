"""Synthetic batches made on the run's device from a seed: no disk, no decode, no tokenizer.

    python -c "from ovprof.config import RunConfig; from ovprof.objectives import make_batch; print({k: v.shape for k, v in make_batch(RunConfig(), 'cpu').items()})"

Images are standard-normal pixels in the model dtype; captions are uniform
random token ids of full length (no padding), so every caption position is a
prediction target. Which token fields a batch has, and how long each is, is
the objective's to say (ovprof/objectives/<name>.py `batch_tokens`); lengths
follow the papers: 128-token synthetic captions, 80-token text-encoder inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def synthetic_batch(*, batch: int, res: int, precision: str, vocab_size: int, seed: int, rank: int,
                    tokens: Sequence[tuple[str, int]], device: str | torch.device) -> dict[str, torch.Tensor]:
    """{"images": (B, 3, res, res), then each (key, length) in `tokens`: (B, length) int64}.

    One CPU generator draws the images first, then the token fields in the order given, so a seed and rank
    name the same tensors on every device.
    """
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + rank)
    out = {"images": torch.randn(batch, 3, res, res, generator=g).to(device=device, dtype=DTYPES[precision])}
    for key, n in tokens:
        out[key] = torch.randint(0, vocab_size, (batch, n), generator=g).to(device)  # (B, n)
    return out
