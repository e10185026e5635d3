"""Translate with a trained run folder.

    python generate.py --checkpoint runs/toy "The man sees the dog."
    python generate.py --checkpoint runs/toy --input sentences.en --output sentences.de --beam 4
    echo "Today the woman reads a book." | python generate.py --checkpoint runs/toy --sample --top-p 0.9

Input: sentences as arguments, else the lines of --input, else standard input; UTF-8 text, one
sentence a line. Output: exactly one line per input line (an empty line gives an empty line);
with --nbest K the K best translations share that line, best first, separated by " ||| ".
--attention PNG draws the cross-attention of the first non-empty sentence.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from minibert.checkpoint import load_translator
from minibert.cli import above, at_least, flag, make_parser, probability
from minibert.decoding import translate
from minibert.files import CheckpointError, DataError, decode_lines, read_lines, save_text

# -----------------------------------------------------------------------------
# settings: every flag is a field of GenerateConfig, with its help text and its check (minibert/cli.py)


@dataclass
class GenerateConfig:
    checkpoint: str = flag(help="run folder written by train.py")
    sentences: list[str] = flag([], "sentences to translate (else --input, else standard input)", positional=True)
    input: str | None = flag(None, "UTF-8 file with one sentence a line")
    output: str | None = flag(None, "write the translations here (default: standard output)")
    beam: int = flag(1, "beam size; 1 = greedy search", at_least(1))
    nbest: int = flag(1, "translations per sentence, at most --beam, joined by ' ||| '", at_least(1))
    length_penalty: float = flag(1.0, "beam search's GNMT length penalty alpha; 0 = none", at_least(0))
    sample: bool = flag(False, "sample instead of searching")
    temperature: float = flag(1.0, "with --sample: divide the logits by this", above(0))
    top_k: int = flag(0, "with --sample: keep the k most likely tokens; 0 = all", at_least(0))
    top_p: float = flag(1.0, "with --sample: keep the smallest set of tokens reaching this probability",
                        probability)
    seed: int = flag(0, "with --sample: random seed", at_least(0))
    max_len: int = flag(128, "most target tokens, [BOS] and [EOS] included", at_least(2))
    batch_size: int = flag(64, "sentences translated together", at_least(1))
    device: str = flag("auto", "auto = cuda when available", choices=("auto", "cpu", "cuda"))
    dtype: str = flag("float32", "weights and activations; bfloat16 halves the bytes a decoding step reads",
                      choices=("float32", "bfloat16"))
    attention: str | None = flag(None, "save the first sentence's cross-attention heatmap to this PNG file")


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    parser = make_parser(GenerateConfig, "Translate sentences with a minibert run folder.")
    cfg = GenerateConfig(**vars(parser.parse_args(argv)))
    if cfg.nbest > cfg.beam:
        parser.error(f"argument --nbest: {cfg.nbest} is more than --beam {cfg.beam}")
    if cfg.sample and cfg.beam > 1:
        parser.error("--sample and --beam > 1 exclude each other")
    if not cfg.sample and (cfg.temperature, cfg.top_k, cfg.top_p) != (1.0, 0, 1.0):
        parser.error("--temperature, --top-k and --top-p apply only with --sample")
    if cfg.beam == 1 and cfg.length_penalty != 1.0:
        parser.error("--length-penalty applies only with --beam > 1")
    if cfg.sentences and cfg.input:
        parser.error("give sentences as arguments or --input, not both")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but torch sees no CUDA GPU (use --device cpu)")
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
