"""Translate with a trained run folder.

    python generate.py --checkpoint runs/toy "The man sees the dog."
    python generate.py --checkpoint runs/toy --input sentences.en --output sentences.de --beam 4
    echo "Today the woman reads a book." | python generate.py --checkpoint runs/toy --sample --top-p 0.9

Exactly one output line per input line (an empty line gives an empty line); with --nbest K the
K translations share that line, separated by " ||| ". --attention PNG draws the cross-attention
of the first sentence (needs matplotlib).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from minibert.checkpoint import CheckpointError, atomic_write, load_translator
from minibert.data import DataError, decode_lines, read_lines
from minibert.decoding import translate

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
    attention: str | None


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    p = argparse.ArgumentParser(description="Translate sentences with a minibert run folder.")
    p.add_argument("sentences", nargs="*", help="sentences to translate (else --input, else standard input)")
    p.add_argument("--checkpoint", required=True, help="run folder written by train.py")
    p.add_argument("--input", help="file with one sentence a line")
    p.add_argument("--output", help="write translations here (default: standard output)")
    p.add_argument("--beam", type=int, default=1, help="beam size; 1 = greedy")
    p.add_argument("--nbest", type=int, default=1, help="translations per sentence (at most --beam)")
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--attention", metavar="PNG", help="save the first sentence's cross-attention heatmap")
    cfg = GenerateConfig(**vars(p.parse_args(argv)))
    if cfg.beam < 1 or not 1 <= cfg.nbest <= cfg.beam:
        p.error("--beam must be >= 1 and --nbest between 1 and --beam")
    if cfg.sample and cfg.beam > 1:
        p.error("--sample and --beam > 1 exclude each other")
    if cfg.sentences and cfg.input:
        p.error("give sentences as arguments or --input, not both")
    return cfg


# -----------------------------------------------------------------------------
# the attention picture


def save_attention(path: str, model, src_tok, tgt_tok, sentence: str, translation: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("--attention needs matplotlib: pip install matplotlib") from None
    device = next(model.parameters()).device
    src = src_tok.encode(sentence)
    tgt_ids = [tgt_tok.token_to_id("[BOS]")] + tgt_tok.encode(translation).ids
    with torch.no_grad():
        probs = model.cross_attention(torch.tensor([src.ids], device=device), torch.tensor([tgt_ids], device=device))
    # Average the heads of the last layer: (1, H, T, S) -> (T, S).
    grid = probs[-1][0].mean(0).cpu()
    targets = [tgt_tok.id_to_token(i) for i in tgt_ids[1:]] + ["[EOS]"]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(src.tokens), 1 + 0.4 * len(targets)))
    ax.imshow(grid, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(src.tokens)), src.tokens, rotation=90)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlabel("source WordPiece tokens (read through H')")
    ax.set_ylabel("generated target tokens")
    ax.set_title("decoder cross-attention, last layer, mean over heads", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# -----------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    model, src_tok, tgt_tok, _ = load_translator(cfg.checkpoint, device=device)

    if cfg.sentences:
        lines = cfg.sentences
    elif cfg.input:
        lines = read_lines(cfg.input)
    else:
        lines = decode_lines(sys.stdin.buffer.read(), "<stdin>")
    limit = src_tok.truncation["max_length"]
    too_long = sum(len(e.overflowing) > 0 for e in src_tok.encode_batch(lines))
    if too_long:
        print(f"warning: {too_long} input lines are longer than BERT's {limit} positions and were truncated",
              file=sys.stderr)

    sampling = {}
    if cfg.sample:
        sampling = dict(sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        generator=torch.Generator(device).manual_seed(cfg.seed))
    results = translate(model, src_tok, tgt_tok, lines, beam=cfg.beam, max_len=cfg.max_len,
                        batch_size=cfg.batch_size, nbest=cfg.nbest, length_penalty=cfg.length_penalty, **sampling)
    text = "".join(" ||| ".join(r) + "\n" for r in results)
    if cfg.output:
        atomic_write(Path(cfg.output), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    else:
        sys.stdout.write(text)
    if cfg.attention and lines:
        save_attention(cfg.attention, model, src_tok, tgt_tok, lines[0], results[0][0])


if __name__ == "__main__":
    try:
        main()
    except (DataError, CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
