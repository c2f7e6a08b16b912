"""Text towers: a bidirectional text encoder (CLIP side) and causal caption decoders.

    python -c "from ovprof.models.text import TextEncoder; from ovprof.presets import TEXT_ENCODERS; print(TextEncoder(TEXT_ENCODERS['text-debug'], 32000, 80))"

Two decoders, one per paper:
- `PrefixDecoder` (OpenVision 2): the kept visual tokens, projected by a
  bias-free linear layer, are prepended to the caption embeddings and one causal
  transformer runs over [visual; text]. We follow the released JAX code's prefix
  design rather than cross-attention: it is what the paper measures, and the
  decoder cost then grows with kept tokens + caption tokens, which is exactly
  the lever token masking pulls.
- `QueryDecoder` (OpenVision 1, after CLIPS): prefix = all visual tokens +
  text-encoder states of the alt-text; then learned query tokens, causal among
  themselves and seeing the whole prefix, predict the full synthetic caption.
"""

from __future__ import annotations

import torch
from torch import nn

from ovprof.models.layers import Transformer
from ovprof.presets import TowerSpec


class TextEncoder(nn.Module):
    """Bidirectional; pooled output is the last token's state (OpenVision)."""

    def __init__(self, spec: TowerSpec, vocab_size: int, context: int, *, checkpointing: bool = False):
        super().__init__()
        self.spec = spec
        self.tok_embed = nn.Embedding(vocab_size, spec.width)
        self.pos_embed = nn.Parameter(torch.randn(1, context, spec.width) * 0.01)
        self.trunk = Transformer(spec.width, spec.depth, spec.mlp, spec.heads, checkpointing)

    @property
    def width(self) -> int:
        return self.spec.width

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> (states (B, T, D), pooled (B, D))."""
        x = self.tok_embed(tokens) + self.pos_embed[:, : tokens.shape[1]]
        x = self.trunk(x)
        return x, x[:, -1]


class PrefixDecoder(nn.Module):
    def __init__(self, spec: TowerSpec, visual_width: int, vocab_size: int, caption_len: int, *,
                 checkpointing: bool = False):
        super().__init__()
        self.spec = spec
        self.visual_proj = nn.Linear(visual_width, spec.width, bias=False)
        self.tok_embed = nn.Embedding(vocab_size, spec.width)
        self.pos_embed = nn.Parameter(torch.randn(1, caption_len, spec.width) * 0.01)
        self.trunk = Transformer(spec.width, spec.depth, spec.mlp, spec.heads, checkpointing)
        self.head = nn.Linear(spec.width, vocab_size, bias=False)

    def hidden(self, visual: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        """visual (B, K, Dv), caption (B, L) -> hidden states at the L-1 text positions (B, L-1, D).

        Position i of the output predicts caption token i+1.
        """
        K = visual.shape[1]
        text_in = caption[:, :-1]
        t = self.tok_embed(text_in) + self.pos_embed[:, : text_in.shape[1]]  # (B, L-1, D)
        x = torch.cat([self.visual_proj(visual), t], dim=1)  # (B, K+L-1, D)
        x = self.trunk(x, causal=True)
        return x[:, K:]  # outputs at visual positions are discarded


class QueryDecoder(nn.Module):
    def __init__(self, spec: TowerSpec, visual_width: int, text_width: int, vocab_size: int, caption_len: int, *,
                 checkpointing: bool = False):
        super().__init__()
        self.spec = spec
        self.visual_proj = nn.Linear(visual_width, spec.width, bias=False)
        self.text_proj = nn.Linear(text_width, spec.width, bias=False)
        self.queries = nn.Parameter(torch.randn(1, caption_len, spec.width) * 0.02)
        self.trunk = Transformer(spec.width, spec.depth, spec.mlp, spec.heads, checkpointing)
        self.head = nn.Linear(spec.width, vocab_size, bias=False)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def _mask(self, prefix: int, queries: int, device: torch.device) -> torch.Tensor:
        """Boolean (S, S) mask, True = may attend: prefix sees prefix; queries see prefix and earlier queries."""
        key = (prefix, queries, device)
        if key not in self._mask_cache:
            S = prefix + queries
            m = torch.ones(S, S, dtype=torch.bool, device=device).tril()
            m[:prefix, :prefix] = True
            self._mask_cache = {key: m}
        return self._mask_cache[key]

    def hidden(self, visual: torch.Tensor, alt_text_states: torch.Tensor) -> torch.Tensor:
        """visual (B, N, Dv), alt-text states (B, T, Dt) -> hidden states at the query positions (B, Q, D)."""
        B = visual.shape[0]
        prefix = torch.cat([self.visual_proj(visual), self.text_proj(alt_text_states)], dim=1)  # (B, N+T, D)
        q = self.queries.expand(B, -1, -1).to(prefix.dtype)
        x = torch.cat([prefix, q], dim=1)  # (B, N+T+Q, D)
        x = self.trunk(x, mask=self._mask(prefix.shape[1], q.shape[1], x.device))
        return x[:, prefix.shape[1]:]
