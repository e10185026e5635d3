"""The BERT encoder, laid out exactly as the official checkpoints expect it.

Follows Devlin et al. 2019 and google-research/bert `modeling.py`: word + position + token-type
embeddings, then N post-LN Transformer layers (Xiao & Zhu, Foundations of LLMs, sec. 1.4: the
pre-trained encoder that gives H). Config keys are the official `config.json` names, so a
checkpoint's config loads as it is. Left out: the MLM/NSP pre-training heads (we only encode) and
relative position embeddings (no official BERT uses them).

Shape legend: B batch, S source length, C width (hidden_size), F intermediate size.
"""

from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from minibert.attention import SelfAttention, padding_mask, to_grid

# The activations BERT configs name. "gelu" is the exact erf form (BERT's own); the tanh
# approximation goes by three names in the wild, and all of them compute the same function.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_fast": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


def check_sizes(config, *names: str) -> None:
    """Every named field of a config must be a positive integer (a config.json may say anything),
    and the attention heads must split hidden_size evenly."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(f"hidden_size {config.hidden_size} is not divisible by "
                         f"num_attention_heads {config.num_attention_heads}")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        check_sizes(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Read an official config.json dict; keys this model does not use are ignored."""
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {d['position_embedding_type']!r} is not "
                             "supported, only 'absolute'")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def init_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm. A loaded
    checkpoint overwrites it; an encoder trained from scratch starts from it."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # BERT normalises the summed embeddings, with the config's epsilon (1e-12 for BERT itself).
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (S,)
        x = (self.word_embeddings(input_ids)  # (B, S, C)
             + self.position_embeddings(positions)  # (S, C), broadcast over B
             + self.token_type_embeddings(token_type_ids))  # (B, S, C)
        return self.dropout(self.LayerNorm(x))


class BertLayer(nn.Module):
    """One post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), as in the original Transformer."""

    def __init__(self, config: BertConfig):
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.attention = SelfAttention(c, config.num_attention_heads, config.attention_probs_dropout_prob)
        self.attention_norm = nn.LayerNorm(c, eps=eps)
        self.intermediate = nn.Linear(c, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, c)
        self.output_norm = nn.LayerNorm(c, eps=eps)
        self.act = ACTIVATIONS[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x (N, C): the N real tokens of the batch, packed; real (B, S) bool marks where they sit
        and mask (B, 1, 1, S) is the same as a key mask."""
        # Only the attention scores need the (B, S) grid, to know which tokens share a sentence;
        # every matmul, projections included, works on the real tokens alone (see attention.py).
        h, _ = self.attention(x, mask, real=real)  # (N, C)
        # Post-LN: the residual sum is normalised after each sublayer (BERT, not pre-LN GPT-2).
        x = self.attention_norm(x + self.dropout(h))  # (N, C)
        h = self.output(self.act(self.intermediate(x)))  # (N, F) -> (N, C)
        return self.output_norm(x + self.dropout(h))  # (N, C)


class BertModel(nn.Module):
    """The BERT encoder. `forward` gives the last hidden states H; `pool` gives BERT's pooler."""

    def __init__(self, config: BertConfig, pooler: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        # The pooler (tanh(W h_[CLS])) was trained for next-sentence prediction; a translator
        # does not need it, so it is built only when asked for.
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.apply(init_weights)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, stop: int | None = None) -> torch.Tensor:
        """input_ids (B, S) int64 -> last hidden states H (B, S, C), zeros at padding positions.

        mask: the real tokens as a key mask, padding_mask(input_ids, pad_id) (B, 1, 1, S) bool;
        None means every token is real, as in BERT's own code. (Hugging Face's attention_mask of
        1s and 0s is padding_mask(attention_mask, 0).) token_type_ids (B, S): segment ids, None
        means all zeros. stop: run only layers 0..stop-1 and return their output (a frozen
        bottom whose output is computed once; `run_layers` continues from it).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, S), got shape {tuple(input_ids.shape)}")
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds "
                             f"max_position_embeddings {self.config.max_position_embeddings}")
        if mask is None:
            mask = padding_mask(torch.ones_like(input_ids), 0)  # (B, 1, 1, S), all True
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.run_layers(self.embeddings(input_ids, token_type_ids), mask, 0, stop)  # (B, S, C)

    def run_layers(self, x: torch.Tensor, mask: torch.Tensor, start: int = 0, stop: int | None = None,
                   ) -> torch.Tensor:
        """Layers start..stop-1 on x (B, S, C), the output of the layers below -> (B, S, C)."""
        layers = self.layers[start:stop]
        if len(layers) == 0:  # e.g. a frozen encoder's cached output: nothing left to run
            return x
        # Pack the real tokens: the dense layers, most of the work, then skip the padding
        # (a quarter of the tokens in a typical length-sorted batch).
        real = mask[:, 0, 0]  # (B, S): the key mask read as the batch's layout
        x = x[real]  # (N, C)
        for layer in layers:
            x = layer(x, mask, real)  # (N, C)
        return to_grid(x, real)  # (B, S, C), zeros at padding

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooled output tanh(W h_[CLS] + b): hidden (B, S, C) -> (B, C)."""
        if self.pooler is None:
            raise ValueError("this BertModel was built without a pooler")
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, C)
