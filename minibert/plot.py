"""Pictures: training curves from metrics.jsonl, and the decoder's cross-attention over the source.

    python -m minibert.plot runs/toy --out curves.png
    python -m minibert.plot runs/a runs/b --labels frozen fine-tuned --out compare.png

Curves: training loss (a line every --log-every steps) and validation loss (dots) on the left,
validation BLEU on the right, against optimiser steps. The cross-attention heatmap is drawn by
`generate.py --attention PNG`. Pictures are written atomically. Needs matplotlib.
Plumbing, no textbook section. Left out: live dashboards (the metrics file is plain JSON lines).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from minibert.files import DataError, atomic_write


def pyplot():
    """matplotlib's pyplot, drawing to files only (no screen needed)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out: Path, dpi: int = 110) -> None:
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


# -----------------------------------------------------------------------------
# training curves


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of run_dir/metrics.jsonl, each a dict with "split": "train" or "valid"."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (is {run_dir} a train.py run folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a metrics.jsonl file ({e})") from None


def plot_curves(runs: list[tuple[str, list[dict]]], out: str | Path, title: str = "",
                styles: list[dict] | None = None, x: str = "step") -> None:
    """Draw (label, metrics) runs into one PNG. styles: matplotlib keywords for each run's lines;
    x: "step" (optimiser steps) or "minutes" (of training) on the horizontal axes."""
    plt = pyplot()
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (label, metrics) in enumerate(runs):
        style = {"color": f"C{i}", **(styles[i] if styles else {})}
        train = [m for m in metrics if m.get("split") == "train"]
        valid = [m for m in metrics if m.get("split") == "valid"]
        ax_loss.plot([m[x] for m in train], [m["loss"] for m in train], label=label, lw=1.2, **style)
        ax_loss.plot([m[x] for m in valid], [m["loss"] for m in valid], "o", ms=4, color=style["color"])
        ax_bleu.plot([m[x] for m in valid], [m["bleu"] for m in valid], marker="o", ms=4, label=label, **style)
    xlabel = {"step": "optimiser step", "minutes": "minutes of training"}[x]
    ax_loss.set(xlabel=xlabel, ylabel="cross-entropy (label-smoothed when training)",
                title="training loss (lines), validation loss (dots)")
    ax_bleu.set(xlabel=xlabel, ylabel="sacreBLEU", title="validation BLEU")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
    ax_bleu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the plot, not on it
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


# -----------------------------------------------------------------------------
# cross-attention


def target_pieces(tgt_tok, ids: list[int]) -> list[str]:
    """Target BPE pieces as readable labels: "▁" marks a word start and is dropped; a piece that
    continues a word gets BERT's "##", like the source axis."""
    pieces = [tgt_tok.id_to_token(i) for i in ids]
    return [p[1:] if p.startswith("▁") else p if p.startswith("[") else "##" + p for p in pieces]


def plot_attention(model, src_tok, tgt_tok, sentence: str, translation: str, out: Path) -> None:
    """Heatmap of the last decoder layer's cross-attention (mean over heads) while the model reads
    its own translation of `sentence`: a row per target token, a column per source token."""
    plt = pyplot()
    device = next(model.parameters()).device
    src = src_tok.encode(sentence)
    tgt_ids = [tgt_tok.token_to_id("[BOS]")] + tgt_tok.encode(translation).ids
    with torch.no_grad():
        probs = model.cross_attention(torch.tensor([src.ids], device=device), torch.tensor([tgt_ids], device=device))
    grid = probs[-1][0].mean(0).float().cpu()  # (1, H, T, S) -> (T, S)
    targets = target_pieces(tgt_tok, tgt_ids[1:]) + ["[EOS]"]  # row t predicts token t
    fig, ax = plt.subplots(figsize=(2 + 0.45 * len(src.tokens), 1 + 0.4 * len(targets)))
    image = ax.imshow(grid, cmap="Blues", aspect="auto", vmin=0)
    fig.colorbar(image, ax=ax, label="attention weight", fraction=0.05)
    ax.set_xticks(range(len(src.tokens)), src.tokens, rotation=90)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlabel("source WordPiece tokens (read through H')")
    ax.set_ylabel("generated target pieces (## = continues a word)")
    ax.set_title("decoder cross-attention, last layer, mean over heads", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="training curves from metrics.jsonl")
    parser.add_argument("runs", nargs="+", help="train.py run folders")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder names)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True, metavar="PNG")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    plot_curves([(label, read_metrics(r)) for label, r in zip(labels, args.runs)], args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (DataError, ImportError, OSError) as e:
        sys.exit(f"error: {e}")
