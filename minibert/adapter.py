"""The adapter: the bridge from BERT's output H to the memory H' that the decoder reads.

Why it exists (Xiao & Zhu, Foundations of LLMs, sec. 1.4): BERT's representations were shaped by
masked-language-model pre-training, and a freshly initialised decoder has to learn to read them
through its cross-attention. A small trainable map between the two lets the decoder ask for the
features it needs while the encoder stays fixed, and it is required when the widths differ
(BERT-base is 768 wide, a small decoder may be 256). Kinds: `none` (identity), `linear` (one
projection) and `mlp` (two layers with LayerNorm). Left out: bottleneck adapters inside BERT.

Shape legend: B batch, S source length, C encoder width, C' decoder width.
"""

import torch
import torch.nn as nn

ADAPTER_KINDS = ("none", "linear", "mlp")


class MLPAdapter(nn.Module):
    """H' = LayerNorm(W2 GELU(W1 H)): a small non-linear re-encoding of BERT's features."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.intermediate = nn.Linear(d_in, 2 * d_out)
        self.output = nn.Linear(2 * d_out, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.intermediate(h))  # (B, S, 2C')
        return self.norm(self.output(x))  # (B, S, C')


def make_adapter(kind: str, d_in: int, d_out: int) -> nn.Module:
    """The adapter of the given kind, mapping (B, S, d_in) to (B, S, d_out)."""
    if kind == "none":
        if d_in != d_out:
            raise ValueError(f"adapter 'none' passes H through unchanged, so the encoder width "
                             f"({d_in}) must equal the decoder width ({d_out}); use 'linear' or "
                             f"'mlp', or set the decoder width to {d_in}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        return MLPAdapter(d_in, d_out)
    raise ValueError(f"unknown adapter kind {kind!r}, expected one of {ADAPTER_KINDS}")
