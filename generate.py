"""Translate with a trained run folder.

    python generate.py --checkpoint runs/toy "The man sees the dog."
    python generate.py --checkpoint runs/toy --input sentences.en --output sentences.de --beam 4
    echo "Today the woman reads a book." | python generate.py --checkpoint runs/toy --sample --top-p 0.9

Input: sentences as arguments, else the lines of --input, else standard input; UTF-8 text, one
sentence a line. Output: exactly one line per input line (an empty line gives an empty line);
with --nbest K the K best translations share that line, best first, separated by " ||| ".
--attention PNG draws the cross-attention of the first non-empty sentence.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from minibert.checkpoint import load_translator
from minibert.decoding import translate
from minibert.files import CheckpointError, DataError, decode_lines, read_lines, save_text

# -----------------------------------------------------------------------------
# settings


@dataclass
class GenerateConfig:
    checkpoint: str
    sentences: list[str]
    input: str | None
    output: str | None
    beam: int
    nbest: int
    length_penalty: float
    sample: bool
    temperature: float
    top_k: int
    top_p: float
    seed: int
    max_len: int
    batch_size: int
    device: str
    dtype: str
    attention: str | None


def number(base: type, ok, rule: str):
    """argparse type: a finite `base` number for which ok(value) holds, else `rule` in the error."""
    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if base is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    p = argparse.ArgumentParser(description="Translate sentences with a minibert run folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sentences", nargs="*", help="sentences to translate (else --input, else standard input)")
    p.add_argument("--checkpoint", required=True, help="run folder written by train.py")
    p.add_argument("--input", help="UTF-8 file with one sentence a line")
    p.add_argument("--output", help="write translations here (default: standard output)")
    p.add_argument("--beam", type=number(int, lambda v: v >= 1, "must be at least 1"), default=1,
                   help="beam size; 1 = greedy")
    p.add_argument("--nbest", type=number(int, lambda v: v >= 1, "must be at least 1"), default=1,
                   help="translations per sentence, at most --beam, joined by ' ||| '")
    p.add_argument("--length-penalty", type=number(float, lambda v: v >= 0, "must be at least 0"), default=1.0,
                   help="beam search's GNMT length penalty alpha; 0 = none")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=number(float, lambda v: v > 0, "must be greater than 0"), default=1.0,
                   help="with --sample: divide the logits by this")
    p.add_argument("--top-k", type=number(int, lambda v: v >= 0, "must be at least 0"), default=0,
                   help="with --sample: keep the k most likely tokens; 0 = all")
    p.add_argument("--top-p", type=number(float, lambda v: 0 < v <= 1, "must be in (0, 1]"), default=1.0,
                   help="with --sample: keep the smallest set of tokens reaching this probability")
    p.add_argument("--seed", type=number(int, lambda v: v >= 0, "must be at least 0"), default=0,
                   help="with --sample: random seed")
    p.add_argument("--max-len", type=number(int, lambda v: v >= 2, "must be at least 2"), default=128,
                   help="most target tokens, [BOS] and [EOS] included")
    p.add_argument("--batch-size", type=number(int, lambda v: v >= 1, "must be at least 1"), default=64,
                   help="sentences translated together")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and activations; bfloat16 halves the bytes a decoding step reads")
    p.add_argument("--attention", metavar="PNG", help="save the first sentence's cross-attention heatmap")
    cfg = GenerateConfig(**vars(p.parse_args(argv)))
    if cfg.nbest > cfg.beam:
        p.error(f"argument --nbest: {cfg.nbest} is more than --beam {cfg.beam}")
    if cfg.sample and cfg.beam > 1:
        p.error("--sample and --beam > 1 exclude each other")
    if not cfg.sample and (cfg.temperature, cfg.top_k, cfg.top_p) != (1.0, 0, 1.0):
        p.error("--temperature, --top-k and --top-p apply only with --sample")
    if cfg.beam == 1 and cfg.length_penalty != 1.0:
        p.error("--length-penalty applies only with --beam > 1")
    if cfg.sentences and cfg.input:
        p.error("give sentences as arguments or --input, not both")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda, but torch sees no CUDA GPU (use --device cpu)")
    return cfg


# -----------------------------------------------------------------------------
# main


def read_input(cfg: GenerateConfig) -> list[str]:
    if cfg.sentences:
        return cfg.sentences
    if cfg.input:
        return read_lines(cfg.input)
    return decode_lines(sys.stdin.buffer.read(), "<stdin>")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    model, src_tok, tgt_tok = load_translator(cfg.checkpoint, device=device)
    model.to(getattr(torch, cfg.dtype))
    lines = read_input(cfg)
    too_long = sum(len(e.overflowing) > 0 for e in src_tok.encode_batch(lines))
    if too_long:
        print(f"warning: {too_long} input lines are longer than BERT's {src_tok.truncation['max_length']} "
              "positions and were truncated", file=sys.stderr)

    sampling = {}
    if cfg.sample:
        sampling = dict(sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        generator=torch.Generator(device).manual_seed(cfg.seed))
    results = translate(model, src_tok, tgt_tok, lines, beam=cfg.beam, max_len=cfg.max_len,
                        batch_size=cfg.batch_size, nbest=cfg.nbest, length_penalty=cfg.length_penalty, **sampling)
    text = "".join(" ||| ".join(r) + "\n" for r in results)
    if cfg.output:
        save_text(Path(cfg.output), text)
    else:
        sys.stdout.write(text)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if cfg.attention and first is not None:
        from minibert.plot import plot_attention
        plot_attention(model, src_tok, tgt_tok, lines[first], results[first][0], Path(cfg.attention))


if __name__ == "__main__":
    try:
        main()
    except (DataError, CheckpointError, ImportError, OSError) as e:
        sys.exit(f"error: {e}")
