"""The same inputs and the same model shapes for both sides of the train-step and generation
benchmarks: batch-32 Multi30k pairs (MiniLM WordPiece source, an 8,000-piece BPE target), and a
minibert translator plus a Hugging Face EncoderDecoderModel with the MiniLM encoder and a fresh
3-layer decoder (width 384, 12 heads, FFN 1536)."""

from pathlib import Path

import torch

from minibert.adapter import make_adapter
from minibert.convert import load_pretrained_bert
from minibert.data import pad, read_lines
from minibert.decoder import DecoderConfig, TransformerDecoder
from minibert.download import fetch_minilm
from minibert.model import Seq2Seq
from minibert.tokenizer import load_bert_tokenizer, train_target_tokenizer

MULTI30K = Path(__file__).parent.parent.parent / "shared" / "data" / "multi30k"
DECODER = dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536,
               max_position_embeddings=256)
PAD, BOS, EOS = 0, 1, 2


def batches(n_batches: int, batch_size: int = 32, data: Path = MULTI30K):
    """[(src_ids (B, S), tgt (B, T) = [BOS] y [EOS])] from the first Multi30k training pairs."""
    src_lines, tgt_lines = read_lines(data / "train.en"), read_lines(data / "train.de")
    src_tok = load_bert_tokenizer(fetch_minilm())
    tgt_tok = train_target_tokenizer(tgt_lines, 8000)
    out = []
    for i in range(n_batches):
        rows = range(i * batch_size, (i + 1) * batch_size)
        src = pad([src_tok.encode(src_lines[j]).ids for j in rows], PAD)
        tgt = pad([[BOS] + tgt_tok.encode(tgt_lines[j]).ids + [EOS] for j in rows], PAD)
        out.append((src, tgt))
    return out, tgt_tok.get_vocab_size()


def minibert_model(vocab: int) -> Seq2Seq:
    torch.manual_seed(0)
    encoder = load_pretrained_bert(fetch_minilm(), pooler=False)
    decoder = TransformerDecoder(DecoderConfig(vocab_size=vocab, dropout=0.1, **DECODER))
    # The widths are equal (384), so no adapter, exactly like the Hugging Face model.
    return Seq2Seq(encoder, make_adapter("none", 384, 384), decoder)


def hf_model(transformers, vocab: int):
    torch.manual_seed(0)
    encoder = transformers.BertModel.from_pretrained(fetch_minilm(), attn_implementation="sdpa",
                                                     add_pooling_layer=False)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=DECODER["hidden_size"],
                                     num_hidden_layers=DECODER["num_hidden_layers"],
                                     num_attention_heads=DECODER["num_attention_heads"],
                                     intermediate_size=DECODER["intermediate_size"], is_decoder=True,
                                     add_cross_attention=True, pad_token_id=PAD, bos_token_id=BOS,
                                     eos_token_id=EOS)
    decoder = transformers.BertLMHeadModel(config)
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id, model.config.pad_token_id = BOS, PAD
    model.config.eos_token_id = EOS
    return model
