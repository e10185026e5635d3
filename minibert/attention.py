"""Multi-head attention, the one building block shared by every part of minibert.

Implements scaled dot-product attention (Vaswani et al. 2017, eq. 1) and its multi-head form
(section 3.2.2) in the two roles of Xiao & Zhu, Foundations of LLMs, ch. 1: self-attention (BERT's
and the decoder's causal one) and the decoder's cross-attention over the adapter output H'. The
fused path calls PyTorch's `scaled_dot_product_attention`; the reference path writes the softmax
out for reading and returns the attention probabilities for pictures. Left out: relative
positions and sparse patterns.

Shape legend: B batch, T target (query) length, S source (key) length, H heads, D head size,
C width (C = H * D), N real tokens of a padded batch, packed.
Mask convention: boolean, True = may attend, broadcastable to (B, H, T, S). Every mask is built by
`padding_mask` (B, 1, 1, S) or `causal_mask` (T, S), and None means "attend to every key".
"""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# masks: the two helpers that build every mask in minibert


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Keys that are real tokens. ids (B, S) -> (B, 1, 1, S) bool, True = may attend.
    (Hugging Face's attention_mask of 1s and 0s becomes padding_mask(attention_mask, 0).)"""
    return (ids != pad_id)[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(t: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    """Query i may attend key j when j is not in its future. Returns (T, S) bool.

    With a KV cache the T queries are the *last* T of the S positions, so the mask is
    right-aligned: query i sits at absolute position s - t + i.

            keys  0 1 2 3 4          (s = 5, t = 2: two new queries after three cached keys)
        query 0   1 1 1 1 0          position 3 sees keys 0..3
        query 1   1 1 1 1 1          position 4 sees keys 0..4
    """
    q_pos = torch.arange(s - t, s, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(s, device=device)[None, :]  # (1, S)
    return k_pos <= q_pos  # (T, S)


def to_grid(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Packed rows x (N, F), the real tokens of a padded batch, back onto the (B, T, F) grid
    that real (B, T) bool marks; zeros at the padding. Its inverse is grid[real]."""
    grid = x.new_zeros(*real.shape, x.size(-1))  # (B, T, F)
    grid[real] = x
    return grid


# -----------------------------------------------------------------------------
# the attention function itself: fused and reference paths side by side


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout: float = 0.0, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(D) + mask) v for q (B, H, T, D) and k, v (B, H, S, D).

    Returns the output (B, H, T, D) and, on the reference path only, the probabilities
    (B, H, T, S). A query row whose mask allows no key at all gets zeros, never NaN.
    """
    has_key = None
    if mask is not None:
        # The one place where the bool mask is prepared for both paths. A fully masked row would
        # make softmax divide 0 by 0, so we let it attend everywhere and zero its output below.
        has_key = mask.any(dim=-1, keepdim=True)  # (..., T, 1)
        mask = mask | ~has_key  # (..., T, S)
    if fused:
        # SDPA reads a bool attn_mask with our convention: True = take part in attention.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, D)
        probs = None
    else:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # (B, H, T, S)
        if has_key is not None:
            probs = probs * has_key
        out = F.dropout(probs, dropout, training=dropout > 0) @ v  # (B, H, T, D)
    if has_key is not None:
        out = out * has_key
    return out, probs


@contextmanager
def reference_attention(model: nn.Module):
    """Run every attention module of `model` on the written-out reference path (it also returns
    the probabilities), for pictures and for the tests that compare the two paths."""
    modules = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    for m in modules:
        m.fused = False
    try:
        yield
    finally:
        for m in modules:
            m.fused = True


# -----------------------------------------------------------------------------
# the KV cache of one self-attention layer, for incremental decoding


class KVCache:
    """Keys and values of one self-attention layer, kept between decoding steps.

    The buffers are preallocated at full length (B, H, max_len, D), so a decoding step writes
    one slice instead of concatenating (and copying) the whole history.
    """

    def __init__(self, batch: int, n_heads: int, max_len: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.k = torch.zeros(batch, n_heads, max_len, head_size, device=device, dtype=dtype)  # (B, H, L, D)
        self.v = torch.zeros_like(self.k)  # (B, H, L, D)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the cached ones; return all keys and values so far."""
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions, step needs {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, H, S, D) each

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search: the beam each survivor came from). Only the
        positions written so far are copied, not the whole preallocated length."""
        if index.numel() != self.k.size(0):  # a different batch size: new buffers
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            return
        n = self.length
        self.k[:, :, :n] = self.k[:, :, :n].index_select(0, index)
        self.v[:, :, :n] = self.v[:, :, :n].index_select(0, index)


# -----------------------------------------------------------------------------
# the two modules: self-attention and cross-attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, n_heads, c // n_heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(y: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, C), or the real tokens only, (N, C), when packed."""
    y = y.transpose(1, 2)  # (B, T, H, D)
    y = y[real] if real is not None else y  # (N, H, D) when packed
    return y.flatten(-2)  # (B, T, C) or (N, C)


class SelfAttention(nn.Module):
    """Queries, keys and values all from x, projected by one fused matmul (`qkv`).

    real (B, T) bool, when given: x holds just the real tokens of a padded batch, packed as (N, C),
    and so does the output. The projections then skip the padding; only the attention itself,
    which must know which tokens share a sentence, runs on the (B, T) grid. BERT and the
    decoder's training pass work this way.
    """

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout  # n_heads divides width (the configs check)
        self.fused = True  # False: the written-out softmax (see reference_attention)
        self.qkv = nn.Linear(width, 3 * width)
        self.output = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None,
                real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) or packed (N, C) -> the same shape, and the probabilities on the reference
        path. With a `cache`, the new keys and values are appended to it and the queries attend
        to everything cached."""
        qkv = self.qkv(x)  # (B, T, 3C), or (N, 3C) when packed
        qkv = to_grid(qkv, real) if real is not None else qkv  # (B, T, 3C)
        q, k, v = (split_heads(z, self.n_heads) for z in qkv.chunk(3, dim=-1))  # (B, H, T, D) each
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, S, D) each, S = cached + T
        y, probs = attend(q, k, v, mask, self.dropout if self.training else 0.0, self.fused)  # (B, H, T, D)
        return self.output(merge_heads(y, real)), probs


class CrossAttention(nn.Module):
    """Queries from the decoder stream x (`query`); keys and values from the memory H' (`kv`),
    projected once per source by `project_memory` and reused at every step and layer call."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.output = nn.Linear(width, width)
        self.n_heads, self.dropout = n_heads, dropout  # n_heads divides width (the configs check)
        self.fused = True  # False: the written-out softmax (see reference_attention)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of memory H' (B, S, C): two (B, H, S, D) tensors."""
        k, v = self.kv(memory).chunk(2, dim=-1)  # (B, S, C) each
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) or packed (N, C, with real as for SelfAttention) -> the same shape, and
        the probabilities (B, H, T, S) over the memory on the reference path."""
        q = self.query(x)  # (B, T, C), or (N, C) when packed
        q = split_heads(to_grid(q, real) if real is not None else q, self.n_heads)  # (B, H, T, D)
        k, v = memory_kv  # (B, H, S, D) each
        y, probs = attend(q, k, v, mask, self.dropout if self.training else 0.0, self.fused)  # (B, H, T, D)
        return self.output(merge_heads(y, real)), probs
