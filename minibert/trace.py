"""Follow one sentence through the translator, printing each stage in the textbook's notation.

    python -m minibert.trace "The man sees the dog."                          # a random tiny model
    python -m minibert.trace --checkpoint runs/toy "The man sees the dog."    # a trained run folder

The stages of Xiao & Zhu, Foundations of LLMs, ch. 1: the source text x, its WordPiece ids, BERT's
H, the adapter's H', then each decoder step: its input (the target tokens so far, never H'), the
most likely next tokens, and the one greedy search picks, with the real shapes at every stage.
Without --checkpoint the model is random and tiny, and its tokenizers are trained on the toy set,
so the steps show the mechanics but not a translation. Plumbing for the reader; left out: beam search.
"""

import argparse
import sys
from pathlib import Path

import torch

from minibert.checkpoint import build_translator, load_translator, translator_config
from minibert.bert import BertConfig
from minibert.decoder import DecoderConfig
from minibert.files import CheckpointError, DataError, read_lines
from minibert.tokenizer import train_source_tokenizer, train_target_tokenizer

TOY = Path(__file__).parent.parent / "data"


def tiny_random_translator(seed: int = 0):
    """(model, source tokenizer, target tokenizer): a 2-layer, 64-wide BERT and decoder, random."""
    torch.manual_seed(seed)
    src_tok = train_source_tokenizer(read_lines(TOY / "train.en"), 400)
    tgt_tok = train_target_tokenizer(read_lines(TOY / "train.de"), 400)
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    encoder = BertConfig(vocab_size=src_tok.get_vocab_size(), **sizes)
    decoder = DecoderConfig(vocab_size=tgt_tok.get_vocab_size(), max_position_embeddings=64, **sizes)
    return build_translator(translator_config(encoder, "mlp", decoder)).eval(), src_tok, tgt_tok


def shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def values(t: torch.Tensor, n: int = 4) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in t[:n].tolist()) + ", ...]"


@torch.no_grad()
def trace(model, src_tok, tgt_tok, sentence: str, max_steps: int = 12, top: int = 3) -> None:
    enc = src_tok.encode(sentence)
    src_ids = torch.tensor([enc.ids])  # (B, S) = (1, S)
    print(f"x       {sentence!r}")
    print(f"pieces  {' '.join(enc.tokens)}")
    print(f"ids     src_ids {shape(src_ids)} = {enc.ids}")
    cfg = model.encoder.config
    h = model.encoder(src_ids)  # (1, S, C_enc)
    print(f"H       BERT(x), {cfg.num_hidden_layers} layers, width {cfg.hidden_size}: H {shape(h)}, "
          f"H[0, 0] = {values(h[0, 0])}")
    memory, memory_mask = model.encode(src_ids)  # (1, S, C_dec), (1, 1, 1, S)
    print(f"H'      Adapter(H), {type(model.adapter).__name__}: H' {shape(memory)}, H'[0, 0] = {values(memory[0, 0])}")
    cache = model.decoder.start(memory, memory_mask, max_len=max_steps + 1)
    k, _ = cache.memory.kv[0]
    print(f"memory  each of {len(cache.memory.kv)} decoder layers projects H' once to keys and values {shape(k)}"
          f" (B, heads, S, head size)")
    bos, eos = tgt_tok.token_to_id("[BOS]"), tgt_tok.token_to_id("[EOS]")
    ys = [bos]
    for t in range(1, max_steps + 1):
        token = torch.tensor([[ys[-1]]])  # (1, 1): only the newest token; the rest is in the cache
        logits, cache = model.decoder.step(token, cache)  # (1, 1, V)
        probs = logits[0, -1].float().softmax(-1)  # (V,)
        p, ids = probs.topk(top)
        prefix = " ".join(tgt_tok.id_to_token(i) for i in ys)
        options = ", ".join(f"{tgt_tok.id_to_token(i)} {q:.3f}" for i, q in zip(ids.tolist(), p.tolist()))
        print(f"step {t:<2} y_<{t} = {prefix}  ->  logits {shape(logits)}, top: {options}")
        ys.append(ids[0].item())
        if ys[-1] == eos:
            break
    print(f"y       {tgt_tok.decode(ys[1:])!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sentence", help="one source sentence")
    parser.add_argument("--checkpoint", help="run folder written by train.py (default: a random tiny model)")
    parser.add_argument("--max-steps", type=int, default=12, help="decoder steps at most")
    args = parser.parse_args(argv)
    if args.max_steps < 1:
        parser.error(f"argument --max-steps: must be at least 1, got {args.max_steps}")
    if args.checkpoint:
        model, src_tok, tgt_tok = load_translator(args.checkpoint)
    else:
        model, src_tok, tgt_tok = tiny_random_translator()
    max_steps = min(args.max_steps, model.decoder.config.max_position_embeddings - 1)
    trace(model, src_tok, tgt_tok, args.sentence, max_steps)


if __name__ == "__main__":
    try:
        main()
    except (DataError, CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
