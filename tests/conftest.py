"""Shared test helpers: tiny models with odd, distinct sizes, and the downloaded checkpoint.

Sizes are chosen so that a wrong transpose or a swapped dimension cannot pass: encoder width 24
with 3 heads (D = 8), FFN 40, source vocab 37; decoder width 30 with 5 heads (D = 6), FFN 44,
target vocab 41. Tests that need the MiniLM checkpoint are marked `download`; they skip when it
is absent, except under CI (CI=true), where the checkpoint is fetched first and absence fails.
"""

import os
from pathlib import Path

import pytest
import torch

from minibert.adapter import make_adapter
from minibert.bert import BertConfig, BertModel
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.download import minilm_path
from minibert.model import Seq2Seq

FIXTURES = Path(__file__).parent / "fixtures"
SRC_VOCAB, TGT_VOCAB = 37, 41
PAD, BOS, EOS = 0, 1, 2  # target specials; the source pad id is also 0


def tiny_bert(seed: int = 0, **overrides) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(**{**dict(vocab_size=SRC_VOCAB, hidden_size=24, num_hidden_layers=2,
                                  num_attention_heads=3, intermediate_size=40, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), **overrides})
    model = BertModel(config)
    # Random (not 1/0) LayerNorm parameters and biases, so mis-wiring them shows up.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_translator(adapter: str = "linear", seed: int = 0, dec_width: int = 30, dec_heads: int = 5) -> Seq2Seq:
    encoder = tiny_bert(seed)
    torch.manual_seed(seed + 1)
    decoder = TransformerDecoder(DecoderConfig(vocab_size=TGT_VOCAB, hidden_size=dec_width, num_hidden_layers=2,
                                               num_attention_heads=dec_heads, intermediate_size=44,
                                               max_position_embeddings=48, dropout=0.0))
    # Larger weights than the 0.02 init, so that the logits actually depend on the input.
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model = Seq2Seq(encoder, make_adapter(adapter, 24, dec_width), decoder)
    return model.eval()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    if not (path / "model.safetensors").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"MiniLM checkpoint missing at {path}; CI must run `python -m minibert.download` first")
        pytest.skip(f"MiniLM checkpoint not downloaded ({path}); run `python -m minibert.download`")
    return path
