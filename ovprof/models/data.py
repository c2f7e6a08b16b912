"""Synthetic batches made on the run's device from a seed: no disk, no decode, no tokenizer.

    python -c "from ovprof.config import RunConfig; from ovprof.models.data import make_batch; print({k: v.shape for k, v in make_batch(RunConfig(), 'cpu').items()})"

Images are standard-normal pixels in the model dtype; captions are uniform
random token ids of full length (no padding), so every caption position is a
prediction target. Lengths follow the papers: 128-token synthetic captions,
80-token text-encoder inputs; both configurable.
"""

from __future__ import annotations

import torch

from ovprof.config import RunConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_batch(cfg: RunConfig, device: str | torch.device, *, rank: int = 0) -> dict[str, torch.Tensor]:
    c = cfg.resolved()
    g = torch.Generator(device="cpu").manual_seed(c.seed * 1_000_003 + rank)
    B = c.batch

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, c.vocab_size, (B, n), generator=g).to(device)

    batch = {"images": torch.randn(B, 3, c.res, c.res, generator=g).to(device=device, dtype=DTYPES[c.precision])}
    if c.objective == "caption":
        batch["caption"] = tokens(c.caption_len)  # synthetic caption, decoder target
    elif c.objective == "clip":
        batch["text"] = tokens(c.text_len)
    else:  # openvision: alt-text and a short synthetic caption for the text encoder, the long caption for the decoder
        batch["alt_text"] = tokens(c.text_len)
        batch["short_caption"] = tokens(c.text_len)
        batch["caption"] = tokens(c.caption_len)
    return batch
