"""The Transformer decoder: newly initialised, it generates the target from the memory H'.

Follows the decoder of Vaswani et al. 2017 (sec. 3.1) as used in Xiao & Zhu, Foundations of LLMs,
sec. 1.4: each layer has causal self-attention over the target tokens so far, cross-attention
over the adapter output H', and a feed-forward network. The output projection is tied to the
input embedding (Press & Wolf 2017). Its width, depth and head count are its own, independent of
BERT's. Left out: relative positions and any pre-training; the decoder starts from random weights.

Shape legend: B batch, T target length, S source length, C width, F intermediate size, V vocab.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minibert.attention import CrossAttention, KVCache, SelfAttention, causal_mask, reference_attention
from minibert.bert import check_sizes, init_weights


@dataclass(frozen=True)
class DecoderConfig:
    # The sizes have no defaults here: train.py's flags are the one place that sets them.
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 0

    def __post_init__(self):
        check_sizes(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class Memory:
    """H' as the decoder's cross-attention reads it, computed once per source (`read_memory`).

    kv: per layer, the cross-attention keys and values, (B, H, S, D) each.
    mask: (B, 1, 1, S) bool, the real source positions; None when no source has padding, so
        cross-attention then needs no mask at all.
    """
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor | None

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`, e.g. the unfinished sentences, or K beams of each source."""
        self.kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv]
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)


@dataclass
class DecoderCache:
    """Everything incremental decoding keeps between steps, passed in and returned: the memory,
    and per layer the self-attention keys and values, growing by one position a step."""
    memory: Memory
    self_kv: list[KVCache]

    @property
    def length(self) -> int:
        return self.self_kv[0].length

    def reorder(self, index: torch.Tensor, memory: bool = True) -> None:
        """Keep batch rows `index`: the parent beam of each survivor, or the unfinished rows.
        memory=False leaves H' alone, for when every row keeps its source (a beam's parent is
        always a beam of the same sentence): that saves copying its keys and values each step."""
        for kv in self.self_kv:
            kv.reorder(index)
        if memory:
            self.memory.reorder(index)


class DecoderLayer(nn.Module):
    """Pre-LN layer: x += SelfAttn(LN(x)); x += CrossAttn(LN(x), H'); x += FFN(LN(x)).

    Pre-LN (Xiong et al. 2020) rather than BERT's post-LN: a freshly initialised decoder then
    trains stably at a high learning rate with a short warm-up, which matters on a CPU budget.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c, h, eps, p = config.hidden_size, config.num_attention_heads, config.layer_norm_eps, config.dropout
        self.attention_norm = nn.LayerNorm(c, eps=eps)
        self.attention = SelfAttention(c, h, dropout=p)
        self.cross_attention_norm = nn.LayerNorm(c, eps=eps)
        self.cross_attention = CrossAttention(c, h, dropout=p)
        self.ffn_norm = nn.LayerNorm(c, eps=eps)
        self.intermediate = nn.Linear(c, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, c)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None, cache: KVCache | None = None, real: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (B, T, C), and the cross-attention probabilities on the reference path.
        With real (B, T) bool, x holds only those tokens, packed (N, C) -> (N, C)."""
        h, _ = self.attention(self.attention_norm(x), self_mask, cache=cache, real=real)
        x = x + self.dropout(h)  # (B, T, C)
        # The only place the decoder sees the source: queries from the target, keys/values from H'.
        h, probs = self.cross_attention(self.cross_attention_norm(x), memory_kv, memory_mask, real=real)
        x = x + self.dropout(h)  # (B, T, C)
        h = self.output(F.gelu(self.intermediate(self.ffn_norm(x))))  # (B, T, F) -> (B, T, C)
        return x + self.dropout(h), probs


class TransformerDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(init_weights)  # BERT's initialisation, see bert.py

    def read_memory(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> Memory:
        """Every layer's cross-attention keys and values of H' (B, S, C), with its mask (B, 1, 1, S)."""
        kv = [layer.cross_attention.project_memory(memory) for layer in self.layers]
        # No source padded: cross-attention needs no mask (saves a few small ops a layer and step).
        return Memory(kv, None if memory_mask.all() else memory_mask)

    def run_layers(self, tokens: torch.Tensor, start: int, self_mask: torch.Tensor | None, memory: Memory,
                   self_kv: list[KVCache] | None = None, real: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, list]:
        """The body shared by the teacher-forced pass and the decoding step: tokens (B, T) at
        positions start.. -> the final, normalised hidden states (B, T, C), and each layer's
        cross-attention probabilities (reference path only). With real (B, T) bool, only those
        positions are computed and returned, packed (N, C)."""
        t = tokens.size(1)
        if start + t > self.config.max_position_embeddings:
            raise ValueError(f"target length {start + t} exceeds the decoder's "
                             f"max_position_embeddings {self.config.max_position_embeddings}")
        positions = self.position_embeddings.weight[start:start + t]  # (T, C): rows start..start+T-1
        x = self.dropout(self.word_embeddings(tokens) + positions)  # (B, T, C)
        x = x[real] if real is not None else x  # (N, C) when packed
        all_probs = []
        for i, layer in enumerate(self.layers):
            cache = self_kv[i] if self_kv is not None else None
            x, probs = layer(x, self_mask, memory.kv[i], memory.mask, cache=cache, real=real)
            all_probs.append(probs)
        return self.final_norm(x), all_probs

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the next token: h (..., C) -> (..., V). The output projection is tied to the
        input embedding, so the logit of token v is the dot product with v's embedding."""
        return F.linear(h, self.word_embeddings.weight)

    def hidden(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
               real: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced pass up to the output layer. tgt_in (B, T) int64 target tokens so far
        ([BOS] y_1 ...), memory H' (B, S, C), memory_mask (B, 1, 1, S) bool -> hidden states
        (B, T, C). real (B, T) bool, a prefix of each row: compute only those positions and
        return them packed, (N, C); training passes the positions it scores (model.py)."""
        t = tgt_in.size(1)
        # Targets are right-padded, so the causal mask alone already keeps every real query
        # away from padding keys (they all lie in its future); padded queries are not scored.
        self_mask = causal_mask(t, t, device=tgt_in.device)  # (T, T)
        h, _ = self.run_layers(tgt_in, 0, self_mask, self.read_memory(memory, memory_mask), real=real)
        return h

    def forward(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for the next token at every position (see `hidden`)."""
        return self.project(self.hidden(tgt_in, memory, memory_mask))

    def cross_attention_probs(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                              ) -> list[torch.Tensor]:
        """Each layer's cross-attention probabilities (B, H, T, S) in a teacher-forced pass, for pictures."""
        t = tgt_in.size(1)
        with reference_attention(self):
            _, probs = self.run_layers(tgt_in, 0, causal_mask(t, t, device=tgt_in.device),
                                       self.read_memory(memory, memory_mask))
        return probs

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor, max_len: int) -> DecoderCache:
        """A fresh cache for decoding up to max_len tokens from memory H' (B, S, C)."""
        b, cfg = memory.size(0), self.config
        self_kv = [KVCache(b, cfg.num_attention_heads, max_len, cfg.head_size, memory.device, memory.dtype)
                   for _ in self.layers]
        return DecoderCache(self.read_memory(memory, memory_mask), self_kv)

    def step(self, tokens: torch.Tensor, cache: DecoderCache) -> tuple[torch.Tensor, DecoderCache]:
        """Decode the next tokens (B, T) (usually T = 1) after those already in the cache.
        Returns logits (B, T, V) and the cache, now T positions longer."""
        start, t = cache.length, tokens.size(1)
        # One new token may see every cached one, so the usual step needs no self-attention mask.
        # Each mask skipped saves a handful of small tensor ops per layer, and at batch 1 those
        # cost as much as the matmuls (benchmarks/generate.py).
        self_mask = causal_mask(t, start + t, device=tokens.device) if t > 1 else None  # (T, S_self)
        h, _ = self.run_layers(tokens, start, self_mask, cache.memory, cache.self_kv)
        return self.project(h), cache
